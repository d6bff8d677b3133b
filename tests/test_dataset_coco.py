"""COCO 2017 reader against the mini archives (real layout, rendered content)."""

from __future__ import annotations

import contextlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instructcv_core.data.datasets import coco
from instructcv_core.data.datasets.base import DatasetLayoutError
from instructcv_core.data.mini import coco as mini

# pycocotools 2.0.x on numpy 2 warns about the __array__ copy keyword when decoding masks
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SEED = 11
SIZES = {"train": 30, "val": 10}


def _extract(archives: list[Path], dest: Path) -> Path:
    for archive in archives:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(dest)
    return dest


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    base = tmp_path_factory.mktemp("coco")
    archives = mini.write_archives(base / "archives", SEED, SIZES)
    root = _extract(archives, base / "extracted") / coco.SPEC.root_subdir
    return archives, root, coco.read(root)


def test_archives_have_the_published_names_and_layout(built):
    archives, root, _ = built
    assert [a.name for a in archives] == list(mini.ARCHIVES)
    with zipfile.ZipFile(archives[2]) as zf:
        assert {"annotations/instances_train2017.json", "annotations/instances_val2017.json"} <= set(zf.namelist())
    ids = mini.image_ids(SEED, SIZES)
    with zipfile.ZipFile(archives[1]) as zf:
        assert f"val2017/{ids['val'][0]:012d}.jpg" in zf.namelist()
    assert (root / coco.SPEC.marker).is_file()


def test_counts_and_category_table(built):
    _, _, result = built
    assert result.quarantine == []
    assert sum(r.split == "train" for r in result.records) == 30
    assert sum(r.split == "val" for r in result.records) == 10
    table = [(c.id, c.name, c.supercategory) for c in result.categories]
    assert table == [
        (1, "person", "person"), (3, "car", "vehicle"), (6, "bus", "vehicle"), (16, "bird", "animal"),
        (17, "cat", "animal"), (18, "dog", "animal"), (44, "bottle", "kitchen"), (62, "chair", "furniture"),
        (72, "tv", "electronic"),
    ]
    ids = mini.image_ids(SEED, SIZES)
    assert not set(ids["train"]) & set(ids["val"])


def test_records_match_the_rendered_scenes(built):
    _, root, result = built
    ids = mini.image_ids(SEED, SIZES)
    by_key = {(r.split, r.image_id): r for r in result.records}
    cat_id = {c.name: c.id for c in result.categories}
    for split in ("train", "val"):
        for index, image_id in enumerate(ids[split]):
            rec = by_key[(split, str(image_id))]
            truth = mini.render_coco_image(SEED, split, index)
            h, w = truth.scene.image.shape[:2]
            assert rec.image_path == f"{split}2017/{image_id:012d}.jpg"
            assert (rec.width, rec.height) == (w, h)
            assert rec.mask_path == f"annotations/instances_{split}2017.json"
            assert rec.mask_format == "coco_instances"
            expected = sorted(
                (a.category, cat_id[a.category], *map(float, a.bbox), a.iscrowd) for a in truth.annotations
            )
            got = sorted((b.category, b.category_id, b.x, b.y, b.w, b.h, b.iscrowd) for b in rec.boxes)
            assert got == expected
            assert rec.categories == sorted({a.category for a in truth.annotations})
    # the boxes are the visible objects' boxes, unchanged (COCO already stores xywh)
    first = mini.render_coco_image(SEED, "train", 0)
    rec = by_key[("train", str(ids["train"][0]))]
    solo = [o for o in first.scene.objects if sum(p.kind.name == o.kind.name for p in first.scene.objects) == 1]
    for obj in solo:
        (box,) = [b for b in rec.boxes if b.category == obj.kind.name]
        assert (box.x, box.y, box.w, box.h) == tuple(float(v) for v in obj.box)
    pixels = np.asarray(Image.open(root / rec.image_path), np.float32)
    assert np.abs(pixels - first.scene.image).mean() < 10  # the JPEG is the rendered image (lossy)


def test_images_without_annotations_are_records(built):
    _, _, result = built
    ids = mini.image_ids(SEED, SIZES)
    empty = next(r for r in result.records if r.split == "train" and r.image_id == str(ids["train"][12]))
    assert empty.boxes == [] and empty.categories == []


def test_pycocotools_loads_the_json_and_masks_match_visible_objects(built):
    _, root, result = built
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        api = COCO(str(root / "annotations/instances_train2017.json"))
    assert len(api.getImgIds()) == 30
    assert sorted(api.getCatIds()) == [1, 3, 6, 16, 17, 18, 44, 62, 72]
    ids = mini.image_ids(SEED, SIZES)
    crowds = 0
    for index, image_id in enumerate(ids["train"]):
        truth = mini.render_coco_image(SEED, "train", index)
        rec = next(r for r in result.records if r.split == "train" and r.image_id == str(image_id))
        masks, void = coco.class_masks(rec, root)
        assert void.shape == truth.scene.image.shape[:2]
        crowd = [a for a in truth.annotations if a.iscrowd]
        expected_void = crowd[0].mask if crowd else np.zeros_like(void)
        assert np.array_equal(void, expected_void)
        crowds += bool(crowd)
        assert set(masks) == {a.category for a in truth.annotations if not a.iscrowd}
        for obj in truth.scene.objects:
            if crowd and obj.kind.name == crowd[0].category:
                assert not masks.get(obj.kind.name, np.zeros_like(void))[obj.mask].any()
                continue
            got = masks[obj.kind.name] & obj.mask
            assert got.sum() / obj.mask.sum() > 0.9
        for name, mask in masks.items():
            union = np.logical_or.reduce([a.mask for a in truth.annotations if a.category == name and not a.iscrowd])
            assert (mask & union).sum() / (mask | union).sum() > 0.9
        # per annotation, through pycocotools directly
        for ann in api.imgToAnns[image_id]:
            decoded = api.annToMask(ann).astype(bool)
            same = [a for a in truth.annotations if mini.CATEGORIES[a.category][0] == ann["category_id"]
                    and a.iscrowd == bool(ann["iscrowd"]) and [float(v) for v in a.bbox] == ann["bbox"]]
            assert len(same) == 1
            iou = (decoded & same[0].mask).sum() / (decoded | same[0].mask).sum()
            assert iou > 0.9
    assert crowds >= 1


def test_crowd_annotations_are_column_major_rle(built):
    _, root, _ = built
    data = json.loads((root / "annotations/instances_train2017.json").read_text())
    crowd = [a for a in data["annotations"] if a["iscrowd"]]
    assert crowd, "the mini should have at least one crowd region"
    image = {i["id"]: i for i in data["images"]}
    for ann in crowd:
        seg = ann["segmentation"]
        h, w = seg["size"]
        assert (h, w) == (image[ann["image_id"]]["height"], image[ann["image_id"]]["width"])
        assert sum(seg["counts"]) == h * w
        flat = np.repeat(np.arange(len(seg["counts"])) % 2, seg["counts"]).astype(bool)
        mask = flat.reshape((w, h)).T  # column-major
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == [float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1), float(np.ptp(ys) + 1)]
        assert ann["area"] == float(mask.sum())
    polys = [a for a in data["annotations"] if not a["iscrowd"]]
    assert all(isinstance(a["segmentation"], list) and len(a["segmentation"][0]) >= 6 for a in polys)
    assert [lic["id"] for lic in data["licenses"]] == list(range(1, 9))


def test_corrupt_image_is_quarantined(tmp_path):
    sizes = {"train": 6, "val": 3}
    archives = mini.write_archives(tmp_path / "a", 5, sizes)
    root = _extract(archives, tmp_path / "x")
    bad_id = mini.image_ids(5, sizes)["val"][1]
    bad = root / f"val2017/{bad_id:012d}.jpg"
    bad.write_bytes(b"this is not a jpeg")
    result = coco.read(root)
    assert [q.path for q in result.quarantine] == [f"val2017/{bad_id:012d}.jpg"]
    assert "undecodable" in result.quarantine[0].reason
    assert len(result.records) == 8
    assert str(bad_id) not in {r.image_id for r in result.records}


def test_missing_annotation_file_names_it(tmp_path):
    archives = mini.write_archives(tmp_path / "a", 5, {"train": 2, "val": 2})
    root = _extract(archives, tmp_path / "x")
    (root / "annotations/instances_val2017.json").unlink()
    with pytest.raises(DatasetLayoutError, match="instances_val2017.json"):
        coco.read(root)


def test_archives_are_deterministic(tmp_path):
    sizes = {"train": 4, "val": 2}
    first = [p.read_bytes() for p in mini.write_archives(tmp_path / "a", 3, sizes)]
    again = [p.read_bytes() for p in mini.write_archives(tmp_path / "b", 3, sizes)]
    other = [p.read_bytes() for p in mini.write_archives(tmp_path / "c", 4, sizes)]
    assert first == again
    assert all(a != b for a, b in zip(first, other))
