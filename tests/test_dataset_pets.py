"""Oxford-IIIT Pet: the mini archives in the real format, read back by the real-format reader."""

from __future__ import annotations

import shutil
import tarfile
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from instructcv_core.data.datasets import pets
from instructcv_core.data.datasets.base import DatasetLayoutError
from instructcv_core.data.labels import load_class_masks
from instructcv_core.data.mini import pets as mini
from instructcv_core.data.records import Box, Category

SEED = 7
SIZES = {"trainval": 24, "test": 10}


def _extract(archive_dir: Path, dest: Path) -> Path:
    for name in mini.ARCHIVES:
        with tarfile.open(archive_dir / name, "r:") as tar:  # plain tar: "r:" refuses gzip
            tar.extractall(dest, filter="data")
    return dest


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("pets_archives")
    paths = mini.write_archives(out, SEED, SIZES)
    root = _extract(out, tmp_path_factory.mktemp("pets_root"))
    return out, paths, root


@pytest.fixture(scope="module")
def result(built):
    return pets.read(built[2])


@pytest.fixture(scope="module")
def planned():
    return {item.name: item for item in mini.plan(SEED, SIZES)}


def test_archives_are_uncompressed_tar_named_tar_gz(built):
    out, paths, _ = built
    assert [p.name for p in paths] == ["images.tar.gz", "annotations.tar.gz"] == list(mini.ARCHIVES)
    for p in paths:
        head = p.read_bytes()[:2]
        assert head != b"\x1f\x8b", f"{p.name} must be a plain tar despite its name"
        with tarfile.open(p, "r:") as tar:
            names = tar.getnames()
        top = {n.split("/")[0] for n in names}
        assert top == {p.name.split(".")[0]}  # images/... and annotations/...
    with tarfile.open(out / "annotations.tar.gz", "r:") as tar:
        names = set(tar.getnames())
    assert {"annotations/list.txt", "annotations/trainval.txt", "annotations/test.txt"} <= names


def test_list_txt_header_and_coverage(built, planned):
    root = built[2]
    lines = (root / "annotations/list.txt").read_text().splitlines()
    assert all(line.startswith("#") for line in lines[:6])
    assert not lines[6].startswith("#")
    assert lines[0] == "#Image CLASS-ID SPECIES BREED ID"
    body = [line.split() for line in lines[6:]]
    assert {row[0] for row in body} == set(planned)  # list.txt covers both splits
    split_rows = []
    for split in ("trainval", "test"):
        text = (root / f"annotations/{split}.txt").read_text()
        assert not text.startswith("#")
        split_rows += [line.split() for line in text.splitlines()]
    assert sorted(split_rows) == sorted(body)
    # real CLASS-IDs, SPECIES and BREED-IDs of the mini breeds
    ids = {row[0].rsplit("_", 1)[0]: tuple(map(int, row[1:])) for row in body}
    assert ids == {
        "Abyssinian": (1, 1, 1), "beagle": (5, 2, 4), "Bengal": (6, 1, 2), "boxer": (9, 2, 5),
        "Persian": (24, 1, 8), "pug": (26, 2, 18), "samoyed": (30, 2, 20), "Siamese": (33, 1, 11),
    }


def test_category_table_uses_native_class_ids(result):
    assert result.categories == [
        Category(1, "Abyssinian", "cat"), Category(5, "beagle", "dog"), Category(6, "Bengal", "cat"),
        Category(9, "boxer", "dog"), Category(24, "Persian", "cat"), Category(26, "pug", "dog"),
        Category(30, "samoyed", "dog"), Category(33, "Siamese", "cat"),
    ]
    assert len(pets.BREEDS) == 37
    assert sum(b[0].isupper() for b in pets.BREEDS) == 12


def test_records_split_label_species(result, planned):
    counts = Counter(r.split for r in result.records)
    assert counts == {"trainval": 24, "test": 10}
    assert result.quarantine == []
    for r in result.records:
        item = planned[r.image_id]
        assert r.split == item.split
        assert r.label_name == item.breed == r.image_id.rsplit("_", 1)[0]
        assert r.label == pets.BREEDS.index(item.breed)  # CLASS-ID - 1
        assert r.species == ("cat" if item.breed[0].isupper() else "dog")
        assert r.categories == [r.species]
        assert (r.width, r.height) == (item.width, item.height)
        assert r.image_path == f"images/{r.image_id}.jpg"
        assert r.mask_format == "pets_trimap"
    assert {r.label for r in result.records} == {0, 4, 5, 8, 23, 25, 29, 32}  # not contiguous
    assert {r.label for r in result.records if r.label_name == "Siamese"} == {32}  # CLASS-ID 33


def test_trimap_values_and_class_masks(built, result, planned):
    root = built[2]
    kernel = np.ones((3, 3), np.uint8)
    for r in result.records[:6]:
        scene, _, _ = mini.render_pet(SEED, planned[r.image_id])
        rendered = scene.objects[0].mask
        trimap = np.asarray(Image.open(root / r.mask_path))
        assert trimap.dtype == np.uint8 and set(np.unique(trimap)) == {1, 2, 3}
        masks, void = load_class_masks(r, root)
        assert list(masks) == [r.species]
        inner = cv2.erode(rendered.astype(np.uint8), kernel) > 0
        band = (cv2.dilate(rendered.astype(np.uint8), kernel) > 0) & ~inner
        np.testing.assert_array_equal(masks[r.species], inner)
        np.testing.assert_array_equal(void, band)
        assert not (rendered & ~(masks[r.species] | void)).any()  # every pet pixel is pet or void
        assert (trimap == 2).sum() == (~(inner | band)).sum()


def test_head_boxes_from_voc_xml(built, result, planned):
    root = built[2]
    with_box = [r for r in result.records if r.boxes]
    assert with_box and all(r.split == "trainval" for r in with_box)
    assert all(not r.boxes for r in result.records if r.split == "test")
    no_xml = [r for r in result.records if r.split == "trainval" and not planned[r.image_id].has_xml]
    assert all(not r.boxes for r in no_xml)
    for r in with_box[:5]:
        scene, _, head = mini.render_pet(SEED, planned[r.image_id])
        species_id = 1 if r.species == "cat" else 2
        assert r.boxes == [Box(r.species, species_id, *map(float, head))]
        # VOC corners are 1-based inclusive: xmin = x + 1, xmax = x + w
        bb = ET.parse(root / f"annotations/xmls/{r.image_id}.xml").getroot().find("object/bndbox")
        assert int(bb.findtext("xmin")) == head[0] + 1 and int(bb.findtext("xmax")) == head[0] + head[2]
        ox, oy, ow, oh = scene.objects[0].box
        b = r.boxes[0]
        assert ox <= b.x and b.x + b.w <= ox + ow and b.y == oy and b.h < oh


def test_corrupt_image_is_quarantined(built, tmp_path):
    root = shutil.copytree(built[2], tmp_path / "root")
    victim = sorted((root / "images").iterdir())[3]
    victim.write_bytes(b"this is not a jpeg")
    res = pets.read(root)
    assert len(res.records) == 33
    assert [q.path for q in res.quarantine] == [f"images/{victim.name}"]
    assert "undecodable" in res.quarantine[0].reason


def test_missing_list_file_raises(built, tmp_path):
    root = shutil.copytree(built[2], tmp_path / "root")
    (root / "annotations/trainval.txt").unlink()
    with pytest.raises(DatasetLayoutError, match="trainval.txt"):
        pets.read(root)
    (root / "annotations/list.txt").unlink()
    with pytest.raises(DatasetLayoutError, match="list.txt"):
        pets.read(root)


def test_deterministic(built, tmp_path):
    out, paths, _ = built
    again = mini.write_archives(tmp_path / "a", SEED, SIZES)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths]
    other = mini.write_archives(tmp_path / "b", SEED + 1, SIZES)
    assert other[0].read_bytes() != paths[0].read_bytes()
