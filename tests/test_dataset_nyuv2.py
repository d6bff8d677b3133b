"""NYU Depth v2: mini MATLAB v7.3 labeled set + v5 split file + BTS sync set, read back and exported."""

from __future__ import annotations

import shutil
import zipfile
from collections import Counter
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import scipy.io

from instructcv_core.data.datasets import nyuv2
from instructcv_core.data.datasets.base import DatasetLayoutError
from instructcv_core.data.labels import load_depth_m
from instructcv_core.data.mini import nyuv2 as mini

SEED = 11
SIZES = {"train": 6, "test": 4, "sync": 12}


def _install(archive_dir: Path, root: Path) -> Path:
    """What the download asset does: extract the zip, place the non-archive files beside it."""
    root.mkdir(parents=True, exist_ok=True)
    for name in (nyuv2.MAT_NAME, nyuv2.SPLITS_NAME, nyuv2.SYNC_LIST_NAME):
        shutil.copy(archive_dir / name, root / name)
    with zipfile.ZipFile(archive_dir / "sync.zip") as zf:
        zf.extractall(root)
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("nyu_archives")
    paths = mini.write_archives(out, SEED, SIZES)
    return out, paths


@pytest.fixture(scope="module")
def root(built, tmp_path_factory):
    return _install(built[0], tmp_path_factory.mktemp("nyu") / "root")


@pytest.fixture(scope="module")
def result(root):
    return nyuv2.read(root)


def test_file_formats(built):
    out, paths = built
    assert [p.name for p in paths] == list(mini.ARCHIVES)
    mat = out / nyuv2.MAT_NAME
    assert mat.read_bytes()[:19] == b"MATLAB 7.3 MAT-file"
    with h5py.File(mat, "r") as f:
        assert f.userblock_size == 512
        assert f["images"].shape == (10, 3, 160, 120) and f["images"].dtype == np.uint8
        assert f["depths"].shape == f["rawDepths"].shape == (10, 160, 120)
        assert f["depths"].dtype == np.float32
        assert f["sceneTypes"].shape == (1, 10)
        chars = f[f["sceneTypes"][0, 0]]
        assert chars.dtype == np.uint16 and chars.shape[1] == 1  # MATLAB 1xL char, reversed
    with pytest.raises(OSError):
        h5py.File(out / nyuv2.SPLITS_NAME, "r")  # v5, not HDF5: needs scipy
    m = scipy.io.loadmat(out / nyuv2.SPLITS_NAME)
    assert m["trainNdxs"].shape == (6, 1) and m["testNdxs"].shape == (4, 1)
    both = np.concatenate([m["trainNdxs"].ravel(), m["testNdxs"].ravel()])
    assert sorted(both.astype(int).tolist()) == list(range(1, 11))  # 1-based, a partition


def test_records_use_one_based_indices(result, built):
    m = scipy.io.loadmat(built[0] / nyuv2.SPLITS_NAME)
    expected = {f"{int(i):05d}": "train" for i in m["trainNdxs"].ravel()}
    expected |= {f"{int(i):05d}": "test" for i in m["testNdxs"].ravel()}
    labeled = {r.image_id: r for r in result.records if r.split in ("train", "test")}
    assert {k: r.split for k, r in labeled.items()} == expected
    assert "00001" in labeled and "00000" not in labeled
    assert Counter(r.split for r in result.records) == {"train": 6, "test": 4, "train_sync": 12}
    r = labeled["00001"]
    assert r.image_path == f"export/{r.split}/rgb_00001.png"
    assert r.depth_path == f"export/{r.split}/depth_raw_00001.png"
    assert r.depth_dense_path == f"export/{r.split}/depth_00001.png"
    assert r.depth_format == "png_uint16_mm" and (r.width, r.height) == (160, 120)
    assert result.quarantine == [] and result.categories == []


def test_export_matches_rendered_samples(result, root):
    labeled = [r for r in result.records if r.split in ("train", "test")]
    for r in labeled:
        truth = mini.render_labeled_sample(SEED, int(r.image_id) - 1)  # "00001" is the mat's first sample
        rgb = cv2.cvtColor(cv2.imread(str(root / r.image_path)), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(rgb, truth.image)  # exact: lossless and correctly transposed
        dense = load_depth_m(r, root, dense=True)
        assert np.abs(dense - truth.depth_m).max() <= 0.0005 + 1e-6  # whole millimetres
        raw = load_depth_m(r, root)
        holes = truth.raw_m == 0
        assert holes.any() and (raw[holes] == 0).all() and (raw[~holes] > 0).all()
        assert np.abs(raw - truth.raw_m).max() <= 0.0005 + 1e-6
        # raw is the dense depth seen through Kinect disparity quantisation
        step = truth.depth_m[~holes] ** 2 / mini.KINECT_K
        assert (np.abs(raw[~holes] - truth.depth_m[~holes]) <= step / 2 + 0.0011).all()
        assert r.label_name == truth.scene_type


def test_sync_records(result, root):
    sync = [r for r in result.records if r.split == "train_sync"]
    listed = (root / nyuv2.SYNC_LIST_NAME).read_text().splitlines()
    assert len(sync) == len(listed) == 12
    for r in sync:
        scene, frame = r.image_id.split("/")
        assert r.image_path == f"sync/{scene}/rgb_{frame}.jpg"
        assert r.depth_path == f"sync/{scene}/sync_depth_{frame}.png"
        assert r.depth_dense_path is None
        truth = mini.render_sync_frame(SEED, mini.SYNC_SCENES.index(scene), int(frame))
        assert r.label_name == nyuv2.scene_type_of(scene) == scene.rsplit("_", 1)[0]
        depth = load_depth_m(r, root)
        assert np.abs(depth - truth.raw_m).max() <= 0.0005 + 1e-6 and (depth[truth.raw_m == 0] == 0).all()
        rgb = cv2.cvtColor(cv2.imread(str(root / r.image_path)), cv2.COLOR_BGR2RGB)
        assert np.abs(rgb.astype(int) - truth.image).mean() < 8  # JPEG
    assert nyuv2.scene_type_of("living_room_0047b") == "living_room"
    assert nyuv2.scene_type_of("nyu_office_0") == "nyu_office"


def test_export_is_idempotent(result, root):
    files = sorted((root / "export").rglob("*.png"))
    assert len(files) == 30
    before = {p: p.stat().st_mtime_ns for p in files}
    files[0].unlink()
    again = nyuv2.read(root, include_sync=False)
    assert {p: p.stat().st_mtime_ns for p in files[1:]} == {p: before[p] for p in files[1:]}
    assert files[0].exists()  # only the missing file was written again
    assert len(again.records) == 10 and all(r.split != "train_sync" for r in again.records)


def test_corrupt_images_are_quarantined(built, tmp_path):
    root = _install(built[0], tmp_path / "root")
    nyuv2.read(root)
    victim = sorted((root / "export/test").glob("rgb_*.png"))[0]
    victim.write_bytes(b"garbage")
    jpg = sorted((root / "sync").rglob("rgb_*.jpg"))[0]
    jpg.write_bytes(b"\xff\xd8 truncated")
    res = nyuv2.read(root)
    assert sorted(q.path for q in res.quarantine) == sorted(
        [victim.relative_to(root).as_posix(), jpg.relative_to(root).as_posix()]
    )
    assert all("undecodable" in q.reason for q in res.quarantine)
    assert len(res.records) == 20


def test_missing_files_raise(built, tmp_path):
    root = _install(built[0], tmp_path / "root")
    (root / nyuv2.SYNC_LIST_NAME).unlink()
    with pytest.raises(DatasetLayoutError, match=nyuv2.SYNC_LIST_NAME):
        nyuv2.read(root)
    assert len(nyuv2.read(root, include_sync=False).records) == 10
    (root / nyuv2.SPLITS_NAME).unlink()
    with pytest.raises(DatasetLayoutError, match="splits.mat"):
        nyuv2.read(root)
    (root / nyuv2.MAT_NAME).unlink()
    with pytest.raises(DatasetLayoutError, match="nyu_depth_v2_labeled.mat"):
        nyuv2.read(root)


def test_changed_split_file_redoes_the_export(built, tmp_path):
    root = _install(built[0], tmp_path / "root")
    nyuv2.read(root, include_sync=False)
    swapped = {"train": np.arange(1, 5), "test": np.arange(5, 11)}
    mini.write_splits(root / nyuv2.SPLITS_NAME, swapped)
    res = nyuv2.read(root, include_sync=False)
    assert sorted(r.image_id for r in res.records if r.split == "train") == ["00001", "00002", "00003", "00004"]
    assert sorted(p.name for p in (root / "export/train").glob("rgb_*.png")) == [
        f"rgb_{i:05d}.png" for i in range(1, 5)
    ]


def test_deterministic(built, tmp_path):
    _, paths = built
    again = mini.write_archives(tmp_path / "a", SEED, SIZES)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths]
    other = mini.write_archives(tmp_path / "b", SEED + 1, SIZES)
    assert other[0].read_bytes() != paths[0].read_bytes()
