"""FSS-1000 reader against the mini archive (real folder layout, rendered content)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instructcv_core.data.datasets import fss1000
from instructcv_core.data.datasets.base import DatasetLayoutError
from instructcv_core.data.mini import fss1000 as mini
from instructcv_core.data.mini.scenes import KINDS

SEED = 41
SIZES = {"classes": 4, "per_class": 3}
TRAINING_KINDS = {"person", "car", "cat", "dog", "chair", "bottle", "bird", "tv", "bus"}


def _extract(archives: list[Path], dest: Path) -> Path:
    for archive in archives:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(dest)
    return dest / fss1000.SPEC.root_subdir


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    base = tmp_path_factory.mktemp("fss")
    archives = mini.write_archives(base / "archives", SEED, SIZES)
    root = _extract(archives, base / "extracted")
    return archives, root, fss1000.read(root)


def test_archive_layout(built):
    archives, root, _ = built
    assert [a.name for a in archives] == list(mini.ARCHIVES)
    with zipfile.ZipFile(archives[0]) as zf:
        names = set(zf.namelist())
    assert {"fewshot_data/abacus/1.jpg", "fewshot_data/abacus/1.png", "fewshot_data/hexnut/3.png"} <= names
    assert (root / fss1000.SPEC.marker).is_file()


def test_records_categories_and_default_split(built):
    _, _, result = built
    assert result.quarantine == []
    assert [(c.id, c.name) for c in result.categories] == [
        (1, "abacus"), (2, "arrowhead"), (3, "hexnut"), (4, "starfish"),
    ]
    assert not {c.name for c in result.categories} & TRAINING_KINDS  # novel categories only
    assert len(result.records) == 12 and {r.split for r in result.records} == {"test"}
    rec = result.records[0]
    assert (rec.image_id, rec.image_path, rec.mask_path) == ("abacus/1", "abacus/1.jpg", "abacus/1.png")
    assert rec.mask_format == "binary_l" and rec.categories == ["abacus"]
    assert (rec.width, rec.height) == mini.IMAGE_SIZE


def test_masks_threshold_at_128(built):
    _, root, result = built
    names = mini.class_names(SIZES["classes"])
    soft_seen = False
    for rec in result.records:
        name, number = rec.image_id.split("/")
        scene, png = mini.render_fss_image(SEED, names.index(name), int(number))
        on_disk = np.asarray(Image.open(root / rec.mask_path))
        assert np.array_equal(on_disk, png)
        soft_seen |= bool(((on_disk > 0) & (on_disk < 255)).any())
        masks, void = fss1000.class_masks(rec, root)
        assert void is None and list(masks) == [name]
        assert np.array_equal(masks[name], scene.objects[0].mask)
        assert not np.array_equal(on_disk > 0, scene.objects[0].mask)  # a wrong threshold would fail
    assert soft_seen


def test_rendered_kinds_use_the_renderer_shapes():
    assert mini.FSS_KINDS[1] is KINDS["starfish"] and mini.FSS_KINDS[2] is KINDS["arrowhead"]
    assert len({k.name for k in mini.FSS_KINDS}) == len(mini.FSS_KINDS)
    with pytest.raises(ValueError, match="at most"):
        mini.class_names(len(mini.FSS_KINDS) + 1)


def test_split_file_and_split_folder(built, tmp_path):
    _, root, _ = built
    trn = tmp_path / "trn.txt"
    trn.write_text("starfish\nabacus\n")
    result = fss1000.read(root, split_file=trn)
    assert sorted({r.image_id.split("/")[0] for r in result.records}) == ["abacus", "starfish"]
    assert {r.split for r in result.records} == {"trn"}
    assert len(result.categories) == 4  # the table is still every class folder
    folder = tmp_path / "splits"
    folder.mkdir()
    (folder / "trn.txt").write_text("abacus\narrowhead\n")
    (folder / "val.txt").write_text("hexnut\n")
    (folder / "test.txt").write_text("starfish\nbus\n")  # "bus" has no folder in the mini
    result = fss1000.read(root, split_file=folder)
    splits = {r.image_id.split("/")[0]: r.split for r in result.records}
    assert splits == {"abacus": "trn", "arrowhead": "trn", "hexnut": "val", "starfish": "test"}
    assert [q.path for q in result.quarantine] == ["bus/"]
    with pytest.raises(DatasetLayoutError, match="nothere.txt"):
        fss1000.read(root, split_file=tmp_path / "nothere.txt")


def test_hsnet_test_split_reads_the_downloaded_class_list(built, tmp_path):
    # the standard FSS-1000 test set is HSNet's 240 test classes (520/240/240 class split), not all 1,000
    import shutil

    _, root, _ = built
    work = tmp_path / "extracted"
    shutil.copytree(root, work / fss1000.SPEC.root_subdir)
    with pytest.raises(DatasetLayoutError, match=fss1000.HSNET_TEST_NAME):
        fss1000.read(work / fss1000.SPEC.root_subdir, split="hsnet_test")
    (work / fss1000.HSNET_TEST_NAME).write_text("starfish\nhexnut\n")
    result = fss1000.read(work / fss1000.SPEC.root_subdir, split="hsnet_test")
    assert {r.image_id.split("/")[0]: r.split for r in result.records} == {"hexnut": "test", "starfish": "test"}
    assert fss1000.HSNET_TEST_NAME in {f.filename for f in fss1000.SPEC.files}
    with pytest.raises(ValueError, match="split"):
        fss1000.read(root, split="val")


def test_paper_config_reads_the_standard_fss_test_classes():
    import yaml

    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "paper.yaml").read_text())
    assert config["ops"]["raw_fss1000"]["config"]["reader_options"] == {"split": "hsnet_test"}


def test_corrupt_image_and_missing_mask_are_quarantined(tmp_path):
    root = _extract(mini.write_archives(tmp_path / "a", 1, {"classes": 2, "per_class": 3}), tmp_path / "x")
    (root / "starfish/2.jpg").write_bytes(b"not an image at all")
    (root / "abacus/3.png").unlink()
    result = fss1000.read(root)
    assert {q.path for q in result.quarantine} == {"starfish/2.jpg", "abacus/3.jpg"}
    assert all(q.reason for q in result.quarantine)
    assert [r.image_id for r in result.records] == ["abacus/1", "abacus/2", "starfish/1", "starfish/3"]


def test_missing_root_names_it(tmp_path):
    with pytest.raises(DatasetLayoutError, match="fewshot_data"):
        fss1000.read(tmp_path / "fewshot_data")


def test_archives_are_deterministic(tmp_path):
    sizes = {"classes": 2, "per_class": 2}
    first = mini.write_archives(tmp_path / "a", 3, sizes)[0].read_bytes()
    assert mini.write_archives(tmp_path / "b", 3, sizes)[0].read_bytes() == first
    assert mini.write_archives(tmp_path / "c", 4, sizes)[0].read_bytes() != first
