"""PASCAL VOC 2012 reader against the mini archive (real devkit layout, rendered content)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from instructcv_core.data.datasets import voc
from instructcv_core.data.datasets.base import DatasetLayoutError
from instructcv_core.data.mini import voc as mini

SEED = 31
SIZES = {"train": 12, "val": 20}


def _extract(archives: list[Path], dest: Path) -> Path:
    for archive in archives:
        with tarfile.open(archive) as tf:
            tf.extractall(dest, filter="data")
    return dest / voc.SPEC.root_subdir


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    base = tmp_path_factory.mktemp("voc")
    archives = mini.write_archives(base / "archives", SEED, SIZES)
    root = _extract(archives, base / "extracted")
    return archives, root, voc.read(root)


def test_archive_layout_and_lists(built):
    archives, root, _ = built
    assert [a.name for a in archives] == list(mini.ARCHIVES)
    with tarfile.open(archives[0]) as tf:
        names = set(tf.getnames())
    assert "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt" in names
    assert (root / voc.SPEC.marker).is_file()
    planned = mini.plan(SEED, SIZES)
    main_val = (root / "ImageSets/Main/val.txt").read_text().split()
    seg_val = (root / "ImageSets/Segmentation/val.txt").read_text().split()
    assert main_val == sorted(main_val) and len(main_val) == 20
    assert set(seg_val) < set(main_val)  # a few Main-only images
    assert set(main_val) - set(seg_val) == {p.image_id for p in planned if p.split == "val" and not p.segmented}
    trainval = (root / "ImageSets/Main/trainval.txt").read_text().split()
    assert trainval == sorted(p.image_id for p in planned)
    # per-class lists: "<id> -1|0|1"
    first = (root / "ImageSets/Main/sheep_trainval.txt").read_text().splitlines()[0]
    assert first.split()[0] == trainval[0] and first.split()[1] in ("-1", "0", "1")


def test_counts_categories_and_conventions(built):
    _, _, result = built
    assert result.quarantine == []
    assert [(c.id, c.name) for c in result.categories][:3] == [(1, "aeroplane"), (2, "bicycle"), (3, "bird")]
    assert [c.name for c in result.categories] == list(voc.CLASSES) and result.categories[-1].id == 20
    assert sum(r.split == "train" for r in result.records) == 12
    assert sum(r.split == "val" for r in result.records) == 20
    assert all(r.boxes for r in result.records)  # every image is in Main in the mini
    unsegmented = [r for r in result.records if r.mask_path is None]
    assert unsegmented and all(r.mask_format is None for r in unsegmented)


def test_boxes_convert_from_one_based_inclusive(built):
    _, root, result = built
    plan = {p.image_id: p for p in mini.plan(SEED, SIZES)}
    seen_difficult = seen_novel = 0
    for rec in result.records:
        item = plan[rec.image_id]
        truth = mini.render_voc_image(SEED, item.index)
        assert rec.split == item.split
        assert (rec.width, rec.height) == truth.scene.image.shape[1::-1]
        got = [(b.category, b.category_id, b.x, b.y, b.w, b.h, b.difficult) for b in rec.boxes]
        expected = [
            (o.name, voc.CLASSES.index(o.name) + 1, *map(float, o.box), o.difficult) for o in truth.objects
        ]
        assert got == expected
        assert rec.categories == sorted({o.name for o in truth.objects})
        seen_difficult += any(o.difficult for o in truth.objects)
        seen_novel += any(o.name in ("sheep", "boat", "horse") for o in truth.objects)
    assert seen_difficult and seen_novel
    # one XML by hand: 1-based inclusive corners
    rec = result.records[0]
    text = (root / f"Annotations/{rec.image_id}.xml").read_text()
    box = rec.boxes[0]
    assert f"<xmin>{int(box.x) + 1}</xmin>" in text and f"<xmax>{int(box.x + box.w)}</xmax>" in text
    assert f"<ymin>{int(box.y) + 1}</ymin>" in text and f"<ymax>{int(box.y + box.h)}</ymax>" in text


def test_segmentation_palette_void_band_and_class_masks(built):
    _, root, result = built
    plan = {p.image_id: p for p in mini.plan(SEED, SIZES)}
    kernel = np.ones((3, 3), np.uint8)
    for rec in [r for r in result.records if r.mask_path][:15]:
        truth = mini.render_voc_image(SEED, plan[rec.image_id].index)
        with Image.open(root / rec.mask_path) as im:
            assert im.mode == "P"
            assert im.getpalette()[255 * 3 : 255 * 3 + 3] == [224, 224, 192]
            assert im.getpalette()[15 * 3 : 15 * 3 + 3] == [192, 128, 128]  # person
            label = np.asarray(im)
        union = np.logical_or.reduce([o.mask for o in truth.objects])
        grown = cv2.dilate(union.astype(np.uint8), kernel) > 0
        assert (label[~grown] == 0).all()  # background away from objects
        masks, void = voc.class_masks(rec, root)
        for obj in truth.objects:
            m = obj.mask.astype(np.uint8)
            band = (cv2.dilate(m, kernel) > 0) & ~(cv2.erode(m, kernel) > 0)
            assert (label[band] == 255).all() and void[band].all()
            inner = cv2.erode(m, kernel) > 0
            if obj.difficult:
                assert (label[obj.mask] == 255).all()
            else:
                assert (label[inner] == voc.CLASSES.index(obj.name) + 1).all()
                assert masks[obj.name][inner].all()
        present = {o.name for o in truth.objects if not o.difficult and (cv2.erode(o.mask.astype(np.uint8), kernel) > 0).any()}
        assert set(masks) == present
        assert rec.categories == sorted({o.name for o in truth.objects})
        assert not any(m[void].any() for m in masks.values())
        obj_label = np.asarray(Image.open(root / f"SegmentationObject/{rec.image_id}.png"))
        assert set(np.unique(obj_label)) <= set(range(len(truth.objects) + 1)) | {255}


def test_corrupt_image_is_quarantined(tmp_path):
    sizes = {"train": 3, "val": 4}
    root = _extract(mini.write_archives(tmp_path / "a", 2, sizes), tmp_path / "x")
    victim = mini.plan(2, sizes)[2].image_id
    (root / f"JPEGImages/{victim}.jpg").write_bytes(b"GIF89a nonsense")
    result = voc.read(root)
    assert [q.path for q in result.quarantine] == [f"JPEGImages/{victim}.jpg"]
    assert "undecodable" in result.quarantine[0].reason
    assert len(result.records) == 6 and victim not in {r.image_id for r in result.records}


def test_missing_list_file_names_it(tmp_path):
    root = _extract(mini.write_archives(tmp_path / "a", 2, {"train": 2, "val": 2}), tmp_path / "x")
    (root / "ImageSets/Segmentation/train.txt").unlink()
    with pytest.raises(DatasetLayoutError, match=r"Segmentation/train\.txt"):
        voc.read(root)


def test_archives_are_deterministic(tmp_path):
    sizes = {"train": 2, "val": 3}
    first = mini.write_archives(tmp_path / "a", 3, sizes)[0].read_bytes()
    assert mini.write_archives(tmp_path / "b", 3, sizes)[0].read_bytes() == first
    assert mini.write_archives(tmp_path / "c", 4, sizes)[0].read_bytes() != first
