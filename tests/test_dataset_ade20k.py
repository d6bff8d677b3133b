"""ADE20K SceneParse150 reader against the mini archive (real layout, rendered content)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instructcv_core.data.datasets import ade20k
from instructcv_core.data.datasets.base import DatasetLayoutError
from instructcv_core.data.mini import ade20k as mini

SEED = 21
SIZES = {"training": 16, "validation": 6}


def _extract(archives: list[Path], dest: Path) -> Path:
    for archive in archives:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(dest)
    return dest / ade20k.SPEC.root_subdir


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    base = tmp_path_factory.mktemp("ade")
    archives = mini.write_archives(base / "archives", SEED, SIZES)
    root = _extract(archives, base / "extracted")
    return archives, root, ade20k.read(root)


def test_archive_layout(built):
    archives, root, _ = built
    assert [a.name for a in archives] == list(mini.ARCHIVES)
    with zipfile.ZipFile(archives[0]) as zf:
        names = set(zf.namelist())
    assert "ADEChallengeData2016/objectInfo150.txt" in names
    assert "ADEChallengeData2016/images/training/ADE_train_00000001.jpg" in names
    assert "ADEChallengeData2016/annotations/validation/ADE_val_00000006.png" in names
    assert (root / ade20k.SPEC.marker).is_file()
    scenes = (root / "sceneCategories.txt").read_text().splitlines()
    assert scenes[0].split(" ")[0] == "ADE_train_00000001" and len(scenes) == 22


def test_category_table_is_the_real_objectinfo150(built):
    _, root, result = built
    table = {c.id: c.name for c in result.categories}
    assert sorted(table) == list(range(1, 151))
    assert table[1] == "wall" and table[2] == "building" and table[4] == "floor"
    assert table[8] == "bed"  # the real file writes "bed " with a trailing space
    assert table[9] == "windowpane" and table[13] == "person" and table[45] == "chest of drawers"
    assert table[90] == "television"  # first synonym of "television, television receiver, ..."
    assert table[127] == "animal" and table[150] == "flag"
    lines = (root / "objectInfo150.txt").read_text().splitlines()
    assert lines[0] == "Idx\tRatio\tTrain\tVal\tName"
    assert lines[22].startswith("22 \t")  # the real file's stray space after some indices
    assert lines[13].endswith("\tperson, individual, someone, somebody, mortal, soul")


def test_records_match_the_rendered_scenes(built):
    _, root, result = built
    assert result.quarantine == []
    assert [r.split for r in result.records] == ["train"] * 16 + ["val"] * 6
    names = {c.id: c.name for c in result.categories}
    outdoor = 0
    for rec in result.records:
        folder = "training" if rec.split == "train" else "validation"
        index = int(rec.image_id.rsplit("_", 1)[1]) - 1
        scene, label, _ = mini.render_ade20k_image(SEED, folder, index)
        assert rec.image_path == f"images/{folder}/{rec.image_id}.jpg"
        assert rec.mask_path == f"annotations/{folder}/{rec.image_id}.png"
        assert rec.mask_format == "ade20k_index"
        assert (rec.height, rec.width) == label.shape
        on_disk = np.asarray(Image.open(root / rec.mask_path))
        assert np.array_equal(on_disk, label)
        # the label values follow the scene: objects, stuff, poster = 0
        for obj in scene.objects:
            assert (on_disk[obj.mask] == mini.OBJECT_IDS[obj.kind.name]).all()
        assert (on_disk[scene.stuff["poster"]] == 0).all()
        expected = {mini.OBJECT_IDS[o.kind.name] for o in scene.objects}
        expected |= {1, 4} if "sky" not in scene.stuff else {2, 3, 7}
        assert rec.categories == sorted(names[v] for v in expected)
        outdoor += "sky" in scene.stuff
    assert 0 < outdoor < len(result.records)  # mostly indoor, some outdoor scenes with sky


def test_class_masks_merge_animals_and_report_other_as_void(built):
    _, root, result = built
    seen_animal = False
    for rec in result.records[:12]:
        folder = "training" if rec.split == "train" else "validation"
        scene, _, _ = mini.render_ade20k_image(SEED, folder, int(rec.image_id[-8:]) - 1)
        masks, void = ade20k.class_masks(rec, root)
        assert np.array_equal(void, scene.stuff["poster"])
        assert set(masks) == set(rec.categories)
        animals = [o.mask for o in scene.objects if o.kind.name in ("cat", "dog", "bird")]
        if animals:
            seen_animal = True
            assert np.array_equal(masks["animal"], np.logical_or.reduce(animals))
        if "sky" in scene.stuff:
            assert np.array_equal(masks["sky"], scene.stuff["sky"])
        else:
            assert np.array_equal(masks["wall"], scene.stuff["wall"])
            assert np.array_equal(masks["floor"], scene.stuff["floor"])
        assert "cat" not in masks and "dog" not in masks
    assert seen_animal


def test_corrupt_image_is_quarantined(tmp_path):
    root = _extract(mini.write_archives(tmp_path / "a", 2, {"training": 4, "validation": 2}), tmp_path / "x")
    (root / "images/training/ADE_train_00000002.jpg").write_bytes(b"\x00garbage")
    (root / "annotations/validation/ADE_val_00000001.png").unlink()
    result = ade20k.read(root)
    assert {q.path for q in result.quarantine} == {
        "images/training/ADE_train_00000002.jpg",
        "annotations/validation/ADE_val_00000001.png",
    }
    assert all(q.reason for q in result.quarantine)
    assert [r.image_id for r in result.records] == [
        "ADE_train_00000001", "ADE_train_00000003", "ADE_train_00000004", "ADE_val_00000002",
    ]


def test_missing_class_list_names_it(tmp_path):
    root = _extract(mini.write_archives(tmp_path / "a", 2, {"training": 1, "validation": 1}), tmp_path / "x")
    (root / "objectInfo150.txt").unlink()
    with pytest.raises(DatasetLayoutError, match="objectInfo150.txt"):
        ade20k.read(root)


def test_archives_are_deterministic(tmp_path):
    sizes = {"training": 3, "validation": 2}
    first = mini.write_archives(tmp_path / "a", 3, sizes)[0].read_bytes()
    assert mini.write_archives(tmp_path / "b", 3, sizes)[0].read_bytes() == first
    assert mini.write_archives(tmp_path / "c", 4, sizes)[0].read_bytes() != first
