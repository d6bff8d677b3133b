"""Files published without checksum or size are checked against their published structure."""

import importlib
import io
import json
import pkgutil
import tarfile
import zipfile

import numpy as np
import pytest
from scipy.io import savemat

import instructcv_core.data.datasets as datasets
from instructcv_core.data.datasets.base import RemoteFile
from instructcv_core.data.download import DownloadError, fetch, verification_level
from instructcv_core.data.raw_stage import SourceUnavailableError, _verify_local
from instructcv_core.data.structure import StructurePin, members, structure_problem


def _zip(path, names):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(zipfile.ZipInfo("sync/"), b"")  # a folder entry: never counted
        for name in names:
            zf.writestr(name, b"x")
    return path


def _tar(path, names):
    with tarfile.open(path, "w:gz") as tar:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    return path


def test_member_pins_count_files_matching_the_glob(tmp_path):
    archive = _zip(tmp_path / "sync.zip", [f"sync/kitchen/rgb_{i:05d}.jpg" for i in range(3)]
                   + [f"sync/kitchen/sync_depth_{i:05d}.png" for i in range(2)])
    assert members(archive) == [f"sync/kitchen/rgb_{i:05d}.jpg" for i in range(3)] + [
        f"sync/kitchen/sync_depth_{i:05d}.png" for i in range(2)]
    rgb = StructurePin("members", 3, "*rgb_*.jpg", at_least=True, source="the list")
    depth = StructurePin("members", 3, "*sync_depth_*.png", at_least=True, source="the list")
    assert structure_problem(archive, (rgb,)) is None
    assert structure_problem(archive, (rgb, depth)) == (
        "found 2, expected at least 3 archive members matching '*sync_depth_*.png' (the list)")


def test_exact_and_lower_bound_pins(tmp_path):
    archive = _tar(tmp_path / "a.tar.gz", ["ann/training/1.png", "ann/training/2.png", "ann/validation/1.png"])
    assert structure_problem(archive, (StructurePin("members", 2, "*training/*.png"),)) is None
    assert structure_problem(archive, (StructurePin("members", 1, "*training/*.png", at_least=True),)) is None
    assert structure_problem(archive, (StructurePin("members", 1, "*training/*.png"),)) == (
        "found 2, expected 1 archive members matching '*training/*.png'")


def test_truncated_tar_is_reported_not_counted(tmp_path):
    archive = _tar(tmp_path / "a.tar.gz", [f"ann/training/{i}.png" for i in range(50)])
    archive.write_bytes(archive.read_bytes()[:60])
    problem = structure_problem(archive, (StructurePin("members", 50, "*.png"),))
    assert problem.startswith("cannot read its structure") and "expected 50 archive members" in problem


def test_line_and_mat_array_pins(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("/a/rgb_1.jpg /a/sync_depth_1.png 518.8579\n\n/a/rgb_2.jpg /a/sync_depth_2.png 518.8579\n")
    assert structure_problem(listing, (StructurePin("lines", 2),)) is None
    assert structure_problem(listing, (StructurePin("lines", 3, source="BTS"),)) == (
        "found 2, expected 3 non-empty lines (BTS)")
    splits = tmp_path / "splits.mat"
    savemat(splits, {"trainNdxs": np.arange(1, 796)[:, None], "testNdxs": np.arange(796, 1449)[:, None]})
    pins = (StructurePin("mat_array", 795, "trainNdxs"), StructurePin("mat_array", 654, "testNdxs"))
    assert structure_problem(splits, pins) == "found 653, expected 654 elements in array 'testNdxs'"
    assert structure_problem(splits, (StructurePin("mat_array", 1, "valNdxs"),)) == (
        "no array 'valNdxs' (expected 1 elements in array 'valNdxs')")


def test_fetch_refuses_a_partial_archive_and_keeps_nothing(tmp_path):
    mirror, dest = tmp_path / "mirror", tmp_path / "dest"
    mirror.mkdir()
    _zip(mirror / "sync.zip", ["sync/a/rgb_00001.jpg", "sync/a/sync_depth_00001.png"])
    pins = (StructurePin("members", 2, "*rgb_*.jpg", at_least=True, source="the BTS pair list"),)
    spec = RemoteFile("sync.zip", ((mirror / "sync.zip").as_uri(),), structure=pins)
    with pytest.raises(DownloadError, match=r"sync.zip: the copy from .* does not have its published structure: "
                                            r"found 1, expected at least 2 archive members matching '\*rgb_\*.jpg' "
                                            r"\(the BTS pair list\)"):
        fetch(spec, dest)
    assert list(dest.iterdir()) == []
    # The complete archive passes and is recorded at its level; a local copy is checked the same way.
    _zip(mirror / "sync.zip", ["sync/a/rgb_00001.jpg", "sync/a/rgb_00002.jpg"])
    result = fetch(spec, dest)
    assert result.verification == "structure+content"
    assert json.loads((dest / ".sync.zip.verified.json").read_text())["verification"] == "structure+content"
    assert _verify_local(mirror / "sync.zip", spec) == "structure+content"
    _zip(mirror / "sync.zip", ["sync/a/rgb_00001.jpg"])
    with pytest.raises(SourceUnavailableError, match="not its published structure: found 1, expected at least 2"):
        _verify_local(mirror / "sync.zip", spec)


def test_verification_level_order():
    pin = (StructurePin("lines", 1),)
    assert verification_level(RemoteFile("a", ("u",), "md5:" + "0" * 32, structure=pin)) == "checksum"
    assert verification_level(RemoteFile("a", ("u",), size=3, structure=pin)) == "size+content"
    assert verification_level(RemoteFile("a", ("u",), structure=pin)) == "structure+content"
    assert verification_level(RemoteFile("a", ("u",))) == "content"


def test_pin_validation():
    with pytest.raises(ValueError, match="kind must be one of"):
        StructurePin("bytes", 1)
    with pytest.raises(ValueError, match="count must be >= 1"):
        StructurePin("lines", 0)
    with pytest.raises(ValueError, match="needs `what`"):
        StructurePin("members", 1)


def test_every_published_file_pins_something():
    """No file of a dataset spec is left at level "content" (the sniff only)."""
    unpinned = []
    for module in pkgutil.iter_modules(datasets.__path__):
        spec = getattr(importlib.import_module(f"{datasets.__name__}.{module.name}"), "SPEC", None)
        for remote in spec.files if spec else ():
            if verification_level(remote) == "content":
                unpinned.append(f"{spec.name}/{remote.filename}")
    assert unpinned == []
