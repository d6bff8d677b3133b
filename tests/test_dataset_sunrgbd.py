"""SUN RGB-D: the mini SUNRGBD.zip read back; bit-rotated depth, the 8 m cap, the NYU exclusion."""

from __future__ import annotations

import shutil
import zipfile
from collections import Counter

import cv2
import numpy as np
import pytest

from instructcv_core.data.datasets import sunrgbd
from instructcv_core.data.datasets.base import DatasetLayoutError
from instructcv_core.data.labels import decode_sunrgbd_depth, load_depth_m
from instructcv_core.data.mini import sunrgbd as mini

SEED = 5
SIZES = {"test": 12, "nyu": 3}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("sun_archives")
    paths = mini.write_archives(out, SEED, SIZES)
    dest = tmp_path_factory.mktemp("sun_extracted")
    with zipfile.ZipFile(paths[0]) as zf:
        zf.extractall(dest)
    return paths, dest / sunrgbd.SPEC.root_subdir


@pytest.fixture(scope="module")
def root(built):
    return built[1]


@pytest.fixture(scope="module")
def planned():
    return {e.image_id: e for e in mini.plan(SEED, SIZES)}


def test_archive_layout(built, root):
    paths, _ = built
    assert [p.name for p in paths] == list(mini.ARCHIVES) == ["SUNRGBD.zip"]
    with zipfile.ZipFile(paths[0]) as zf:
        assert {n.split("/")[0] for n in zf.namelist()} == {"SUNRGBD"}
    assert (root / sunrgbd.SPEC.marker).exists()
    scene = root / "xtion/sun3ddata"
    nested = [p for p in scene.rglob("image") if p.is_dir()]
    assert nested and all(len(p.relative_to(scene).parts) == 4 for p in nested)  # building/seq/frame/image
    first = sorted((root / "kv1/b3dodata").iterdir())[0]
    k = np.loadtxt(first / "intrinsics.txt")
    assert k.shape == (3, 3) and k[2].tolist() == [0, 0, 1] and k[0, 0] == k[1, 1] > 0


def test_bit_rotation_round_trip():
    depth = np.array([[0.0, 0.001, 1.234, 8.191], [8.192, 8.5, 9.999, 65.535]], np.float32)
    encoded = mini.encode_sunrgbd_depth(depth)
    mm = np.rint(depth * 1000).astype(np.uint32)
    assert encoded.dtype == np.uint16
    np.testing.assert_array_equal(encoded, ((mm << 3) | (mm >> 13)) & 0xFFFF)
    assert encoded[0, 2] == 1234 * 8  # below 8.192 m the rotation is a plain x8
    assert encoded[1, 1] == (8500 * 8) % 65536 + 1  # above it the top bit wraps round
    rotated_back = (encoded >> np.uint16(3)) | (encoded << np.uint16(13))
    np.testing.assert_array_equal(rotated_back, mm)


def test_records_and_nyu_exclusion(root, planned):
    res = sunrgbd.read(root)
    assert len(res.records) == 12 and res.quarantine == []
    assert not any(r.image_id.startswith("kv1/NYUdata/") for r in res.records)
    assert Counter(r.image_id.split("/")[1] for r in res.records) == {
        "b3dodata": 3, "kinect2data": 3, "lg": 3, "sun3ddata": 3
    }
    for r in res.records:
        entry = planned[r.image_id]
        assert r.split == "test" and r.depth_format == "sunrgbd_png"
        assert r.image_path == f"{r.image_id}/image/{entry.stem}.jpg"
        assert r.depth_path == f"{r.image_id}/depth/{entry.stem}.png"
        assert r.depth_dense_path == f"{r.image_id}/depth_bfx/{entry.stem}.png"
        assert (r.width, r.height) == mini.SENSOR_SIZE[entry.sensor]
        assert r.label_name == entry.scene_type
    with_nyu = sunrgbd.read(root, exclude_nyu=False)
    nyu = sorted(r.image_id for r in with_nyu.records if r.image_id.startswith("kv1/NYUdata/"))
    assert nyu == ["kv1/NYUdata/NYU0001", "kv1/NYUdata/NYU0002", "kv1/NYUdata/NYU0003"]
    assert len(with_nyu.records) == 15


def test_depth_values_and_8m_cap(root, planned):
    res = sunrgbd.read(root)
    windows = 0
    for r in res.records:
        truth = mini.render_sun_scene(SEED, planned[r.image_id])
        raw = load_depth_m(r, root)
        dense = load_depth_m(r, root, dense=True)
        expected = np.minimum(truth.depth_m, 8.0)
        assert np.abs(dense - expected).max() <= 0.0005 + 1e-6
        holes = truth.raw_m == 0
        assert holes.any() and (raw[holes] == 0).all()
        assert np.abs(raw[~holes] - expected[~holes]).max() <= 0.0005 + 1e-6
        if truth.window.any():
            windows += 1
            assert (dense[truth.window] == 8.0).all()  # 8.3-9.8 m decodes, then caps at 8 m
            stored = cv2.imread(str(root / r.depth_dense_path), cv2.IMREAD_UNCHANGED)
            assert stored.dtype == np.uint16
            # the stored value is not millimetres x 8 beyond 8.192 m: only the rotation recovers it
            mm = np.rint(truth.depth_m[truth.window] * 1000).astype(np.int64)
            assert (stored[truth.window] != (mm * 8) % 65536).all()
            assert (decode_sunrgbd_depth(root / r.depth_dense_path)[truth.window] == 8.0).all()
        assert truth.depth_m[~truth.window].max() <= 6.0 + 1e-6  # the small rooms themselves
    assert windows >= 1


def test_depth_bfx_variant_and_split_file(root, tmp_path):
    bfx = sunrgbd.read(root, depth_variant="depth_bfx")
    assert all("/depth_bfx/" in r.depth_path and r.depth_dense_path is None for r in bfx.records)
    with pytest.raises(ValueError, match="depth_variant"):
        sunrgbd.read(root, depth_variant="fullres")
    chosen = sorted(sunrgbd.find_scenes(root))[:5]  # includes NYU scenes (kv1/NYUdata sorts first)
    lines = []
    for scene in chosen:
        image = next((root / scene / "image").iterdir()).name
        depth = next((root / scene / "depth").iterdir()).name
        lines.append(f"SUNRGBD/{scene}/image/{image} SUNRGBD/{scene}/depth/{depth}\n")
    split = tmp_path / "SUNRGBD_val_splits.txt"
    split.write_text("".join(lines))
    res = sunrgbd.read(root, split_file=split)
    assert sorted(r.image_id for r in res.records) == sorted(s for s in chosen if not s.startswith("kv1/NYUdata/"))
    res_all = sunrgbd.read(root, split_file=split, exclude_nyu=False)
    assert sorted(r.image_id for r in res_all.records) == chosen
    with pytest.raises(DatasetLayoutError, match="missing_splits.txt"):
        sunrgbd.read(root, split_file=tmp_path / "missing_splits.txt")


def test_mdet_test_split_reads_the_downloaded_list_and_fails_loudly_without_it(root, tmp_path):
    # the paper profile's SUN RGB-D is the standard test split (5,050 lines in MDET's
    # SUNRGBD_val_splits.txt) minus its NYU part (4,396), not every scene folder
    work = tmp_path / "extracted"
    shutil.copytree(root, work / "SUNRGBD")
    with pytest.raises(DatasetLayoutError, match=sunrgbd.MDET_SPLIT_NAME):
        sunrgbd.read(work / "SUNRGBD", split="mdet_test")
    chosen = sorted(sunrgbd.find_scenes(root))[::2]
    lines = []
    for scene in chosen:
        image = next((root / scene / "image").iterdir()).name
        depth = next((root / scene / "depth").iterdir()).name
        lines.append(f"SUNRGBD/{scene}/image/{image} SUNRGBD/{scene}/depth/{depth}\n")
    (work / sunrgbd.MDET_SPLIT_NAME).write_text("".join(lines))
    res = sunrgbd.read(work / "SUNRGBD", split="mdet_test")
    assert sorted(r.image_id for r in res.records) == sorted(s for s in chosen if not s.startswith("kv1/NYUdata/"))
    assert len(res.records) < len(sunrgbd.read(work / "SUNRGBD").records)
    with pytest.raises(ValueError, match="split"):
        sunrgbd.read(work / "SUNRGBD", split="val")
    assert sunrgbd.MDET_SPLIT_NAME in {f.filename for f in sunrgbd.SPEC.files}


def test_paper_config_reads_the_standard_sunrgbd_test_split():
    import yaml
    from pathlib import Path

    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "paper.yaml").read_text())
    options = config["ops"]["raw_sunrgbd"]["config"]["reader_options"]
    assert options == {"split": "mdet_test", "exclude_nyu": True}


def test_corrupt_image_and_missing_depth_are_quarantined(root, tmp_path):
    copy = shutil.copytree(root, tmp_path / "SUNRGBD")
    scenes = [s for s in sunrgbd.find_scenes(copy) if not s.startswith("kv1/NYUdata")]
    image = next((copy / scenes[0] / "image").iterdir())
    image.write_bytes(b"not a jpeg at all")
    shutil.rmtree(copy / scenes[1] / "depth")
    res = sunrgbd.read(copy)
    assert len(res.records) == 10
    reasons = {q.path: q.reason for q in res.quarantine}
    assert "undecodable" in reasons[image.relative_to(copy).as_posix()]
    assert f"{scenes[1]}/depth" in reasons


def test_missing_layout_raises(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="sensor folders"):
        sunrgbd.read(tmp_path / "empty")


def test_deterministic(built, tmp_path):
    paths, _ = built
    again = mini.write_archives(tmp_path / "a", SEED, SIZES)
    assert again[0].read_bytes() == paths[0].read_bytes()
    other = mini.write_archives(tmp_path / "b", SEED + 1, SIZES)
    assert other[0].read_bytes() != paths[0].read_bytes()
