"""`safe_extract`: formats by content, refusal of dangerous members, atomicity, idempotence."""

from __future__ import annotations

import io
import json
import os
import random
import stat
import tarfile
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from instructcv_core.data.extract import MARKER_NAME, UnsafeArchiveError, safe_extract

FILES = {
    "pets/images/Abyssinian_1.jpg": b"\xff\xd8 not really a jpeg",
    "pets/annotations/list.txt": b"Abyssinian_1 1 1 1\n",
    "README": b"readme\n",
}


def add_tar_member(tar: tarfile.TarFile, name: str, data: bytes = b"", **attrs) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in attrs.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data) if info.isreg() else None)


def make_tar(path: Path, mode: str = "w", files: dict[str, bytes] = FILES) -> Path:
    with tarfile.open(path, mode) as tar:
        add_tar_member(tar, "pets", type=tarfile.DIRTYPE, mode=0o755)
        for name, data in files.items():
            add_tar_member(tar, name, data)
    return path


def make_zip(path: Path, files: dict[str, bytes] = FILES) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` but the marker, as {relative POSIX path: content}."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and p.name != MARKER_NAME
    }


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """The folder that receives extraction folders; tests check it holds nothing stray."""
    folder = tmp_path / "extracted"
    folder.mkdir()
    return folder


# --- happy paths -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "name"),
    [
        ("w", "images.tar.gz"),  # Oxford-IIIT Pet: named .tar.gz, really an uncompressed tar
        ("w", "plain.tar"),
        ("w:gz", "archive.tgz"),
        ("w:bz2", "archive.tar.bz2"),
        ("w:xz", "archive.tar.xz"),
        ("w:gz", "misnamed.zip"),  # not a zip at all: detected as a gzip tar
    ],
)
def test_tar_is_detected_by_content(tmp_path, out, mode, name):
    archive = make_tar(tmp_path / name, mode)
    dest = safe_extract(archive, out / name)

    assert dest == out / name
    assert tree(dest) == FILES
    assert sorted(p.name for p in out.iterdir()) == [name]  # no staging folder left


def test_zip_extracts_identical_content(tmp_path, out):
    calls: list[tuple[int, int]] = []
    archive = make_zip(tmp_path / "val2017.zip")
    dest = safe_extract(archive, out / "val2017.zip", progress=lambda *a: calls.append(a))

    assert tree(dest) == FILES
    assert calls[-1] == (len(FILES), len(FILES))
    marker = json.loads((dest / MARKER_NAME).read_text())
    st = archive.stat()
    assert marker == {
        "archive": "val2017.zip",
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "members": len(FILES),
        "bytes": sum(len(data) for data in FILES.values()),
        "normalised_modes": [],
    }


def test_archives_get_separate_folders(tmp_path, out):
    train = safe_extract(make_zip(tmp_path / "train.zip", {"train/a.jpg": b"a"}), out / "train.zip")
    val = safe_extract(make_zip(tmp_path / "val.zip", {"val/b.jpg": b"b"}), out / "val.zip")
    assert tree(train) == {"train/a.jpg": b"a"}
    assert tree(val) == {"val/b.jpg": b"b"}


def test_not_an_archive_is_refused(tmp_path, out):
    archive = tmp_path / "notes.tar.gz"
    archive.write_text("not an archive")
    with pytest.raises(ValueError, match="not a zip or tar archive") as excinfo:
        safe_extract(archive, out / "notes")
    assert str(archive) in str(excinfo.value)
    assert list(out.iterdir()) == []


# --- refusals ----------------------------------------------------------------------------------


def assert_refused(archive: Path, out: Path, member: str, reason: str) -> None:
    """safe_extract refuses ``member`` before extracting anything, and leaves nothing behind."""
    calls: list[tuple[int, int]] = []
    dest = out / archive.name
    with pytest.raises(UnsafeArchiveError) as excinfo:
        safe_extract(archive, dest, progress=lambda *a: calls.append(a))
    message = str(excinfo.value)
    assert message.startswith(f"{archive}: refusing member '{member}': ")
    assert reason in message
    assert calls == []  # refused during the scan: extraction never started
    assert not dest.exists()
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "attrs", "reason"),
    [
        ("/etc/evil", {}, "absolute path"),
        ("\\evil", {}, "absolute path"),
        ("C:/evil", {}, "Windows drive letter"),
        ("../evil", {}, "'..'"),
        ("pets/../../evil", {}, "'..'"),
        ("pets\\..\\..\\evil", {}, "'..'"),
        ("pets/link", {"type": tarfile.SYMTYPE, "linkname": "../README"}, "symbolic link"),
        ("pets/inner", {"type": tarfile.SYMTYPE, "linkname": "images"}, "symbolic link"),
        ("pets/hard", {"type": tarfile.LNKTYPE, "linkname": "README"}, "hard link"),
        ("pets/tty", {"type": tarfile.CHRTYPE, "devmajor": 5, "devminor": 0}, "device file"),
        ("pets/sda", {"type": tarfile.BLKTYPE, "devmajor": 8, "devminor": 0}, "device file"),
        ("pets/pipe", {"type": tarfile.FIFOTYPE}, "FIFO"),
    ],
)
def test_dangerous_tar_member_is_refused(tmp_path, out, name, attrs, reason):
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        for good_name, data in FILES.items():  # good members first: nothing may be extracted
            add_tar_member(tar, good_name, data)
        add_tar_member(tar, name, b"payload", **attrs)
    with tarfile.open(archive) as tar:
        assert name in tar.getnames()  # precondition: tarfile wrote the name unchanged
    assert_refused(archive, out, name, reason)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../evil", "'..'"),
        ("pets/../../evil", "'..'"),
        ("/abs/evil", "absolute path"),
        ("C:/evil", "Windows drive letter"),
    ],
)
def test_zip_slip_is_refused(tmp_path, out, name, reason):
    archive = make_zip(tmp_path / "evil.zip", {**FILES, name: b"payload"})
    with zipfile.ZipFile(archive) as zf:
        assert name in zf.namelist()  # precondition: zipfile wrote the name unchanged
    assert_refused(archive, out, name, reason)


@pytest.mark.parametrize(
    ("file_type", "reason"),
    [(stat.S_IFLNK, "symbolic link"), (stat.S_IFIFO, "special file")],
    ids=["symlink", "fifo"],
)
def test_zip_special_entries_are_refused(tmp_path, out, file_type, reason):
    archive = make_zip(tmp_path / "evil.zip")
    with zipfile.ZipFile(archive, "a") as zf:
        info = zipfile.ZipInfo("pets/link")
        info.create_system = 3  # Unix: external_attr carries st_mode
        info.external_attr = (file_type | 0o777) << 16
        zf.writestr(info, "../../etc/passwd")
    assert_refused(archive, out, "pets/link", reason)


def test_refused_archive_keeps_previous_extraction(tmp_path, out):
    archive = make_zip(tmp_path / "data.zip")
    dest = safe_extract(archive, out / "data.zip")
    make_zip(archive, {**FILES, "../evil": b"payload"})
    os.utime(archive, ns=(1, 1))  # unmistakably another version

    with pytest.raises(UnsafeArchiveError):
        safe_extract(archive, dest)
    assert tree(dest) == FILES
    assert sorted(p.name for p in out.iterdir()) == ["data.zip"]


# --- damaged archives --------------------------------------------------------------------------


def test_truncated_tar_gz_leaves_nothing(tmp_path, out):
    noise = {f"img/{i}.bin": random.Random(i).randbytes(50_000) for i in range(4)}
    archive = make_tar(tmp_path / "big.tar.gz", "w:gz", noise)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])

    with pytest.raises(ValueError, match="damaged or truncated") as excinfo:
        safe_extract(archive, out / "big")
    assert str(archive) in str(excinfo.value)
    assert list(out.iterdir()) == []


def test_corrupt_member_mid_extraction_leaves_nothing(tmp_path, out):
    # Stored (uncompressed) members, so that a byte of the second file's data can be flipped:
    # the scan (central directory) passes, extraction fails on the CRC after the first file.
    archive = tmp_path / "crc.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("a.txt", b"first file")
        zf.writestr("b.txt", b"second file")
    data = bytearray(archive.read_bytes())
    data[data.index(b"second file")] ^= 0xFF
    archive.write_bytes(bytes(data))

    with pytest.raises(ValueError, match="damaged or truncated"):
        safe_extract(archive, out / "crc")
    assert list(out.iterdir()) == []


# --- idempotence -------------------------------------------------------------------------------


def test_unchanged_archive_is_not_extracted_again(tmp_path, out):
    archive = make_tar(tmp_path / "images.tar.gz")
    dest = safe_extract(archive, out / "images")
    (dest / "sentinel").write_text("added after extraction")
    marker_mtime = (dest / MARKER_NAME).stat().st_mtime_ns
    calls: list[tuple[int, int]] = []

    assert safe_extract(archive, dest, progress=lambda *a: calls.append(a)) == dest
    assert (dest / "sentinel").exists()  # a re-extraction would have replaced the folder
    assert (dest / MARKER_NAME).stat().st_mtime_ns == marker_mtime
    assert calls == []


def test_changed_archive_is_extracted_again(tmp_path, out):
    archive = make_zip(tmp_path / "data.zip")
    dest = safe_extract(archive, out / "data.zip")
    (dest / "sentinel").write_text("from the old extraction")
    new_files = {"pets/images/Bengal_1.jpg": b"new image"}
    make_zip(archive, new_files)
    mtime = archive.stat().st_mtime_ns + 10**9
    os.utime(archive, ns=(mtime, mtime))

    safe_extract(archive, dest)
    assert tree(dest) == new_files
    assert json.loads((dest / MARKER_NAME).read_text())["mtime_ns"] == mtime
    assert sorted(p.name for p in out.iterdir()) == ["data.zip"]  # old copy and staging gone


def test_folder_without_marker_is_replaced(tmp_path, out):
    dest = out / "images"
    (dest / "pets").mkdir(parents=True)
    (dest / "pets" / "half-written.jpg").write_bytes(b"from an interrupted extraction")

    safe_extract(make_tar(tmp_path / "images.tar"), dest)
    assert tree(dest) == FILES
    assert sorted(p.name for p in out.iterdir()) == ["images"]


# --- budgets, duplicates, truncation, empty archives, mode report ----------------------------------

from instructcv_core.data.extract import ArchiveContentError, ExtractionLimits, read_marker  # noqa: E402


def test_zip_bomb_is_refused_by_ratio_before_writing(tmp_path, out):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bin", b"\0" * (8 << 20))  # 8 MiB of zeros deflate to ~8 KB
    limits = ExtractionLimits(ratio_floor_bytes=1 << 20, max_ratio=100)
    with pytest.raises(ArchiveContentError, match=r"ratio of [\d,]+ over the limit of 100"):
        safe_extract(archive, out / "bomb", limits=limits)
    assert list(out.iterdir()) == []


def test_declared_bytes_over_budget_are_refused(tmp_path, out):
    archive = make_tar(tmp_path / "big.tar")  # 46 bytes of files
    with pytest.raises(ArchiveContentError, match="declare 46 bytes, over the limit of 45"):
        safe_extract(archive, out / "big", limits=ExtractionLimits(max_bytes=45))
    assert safe_extract(archive, out / "big", limits=ExtractionLimits(max_bytes=46)) == out / "big"


def test_zip_bomb_refusal_names_the_member_that_expands_most(tmp_path, out):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("README", b"a dataset\n")
        zf.writestr("data/zeros.bin", b"\0" * (8 << 20))
        zf.writestr("data/noise.bin", random.Random(0).randbytes(4096))  # incompressible: ratio ~1
    compressed = zipfile.ZipFile(archive).getinfo("data/zeros.bin").compress_size
    with pytest.raises(ArchiveContentError, match=(
            rf"over the limit of 100: member 'data/zeros\.bin' expands to 8,388,608 bytes from {compressed:,} "
            rf"compressed \(a ratio of {(8 << 20) / compressed:,.0f}\)$")):
        safe_extract(archive, out / "bomb", limits=ExtractionLimits(ratio_floor_bytes=1 << 20, max_ratio=100))
    assert list(out.iterdir()) == []


def test_tar_bomb_refusal_names_the_member_at_which_the_ratio_is_passed(tmp_path, out):
    archive = make_tar(tmp_path / "bomb.tar.gz", "w:gz", {"README": b"a dataset\n", "data/zeros.bin": b"\0" * (8 << 20),
                                                        "data/after.txt": b"x"})
    with pytest.raises(ArchiveContentError, match=(
            r"over the limit of 100: the total passes it at member 'data/zeros\.bin' \(8,388,608 bytes, "
            r"8,388,618 bytes so far\)$")):
        safe_extract(archive, out / "bomb", limits=ExtractionLimits(ratio_floor_bytes=1 << 20, max_ratio=100))
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_byte_budget_refusal_names_the_member_at_which_the_total_passes_it(tmp_path, out, kind):
    files = {"a.bin": b"a" * 10, "b.bin": b"b" * 30, "c.bin": b"c" * 5}  # 10, 40, 45 bytes so far
    archive = make_tar(tmp_path / "x.tar", files=files) if kind == "tar" else make_zip(tmp_path / "x.zip", files)
    with pytest.raises(ArchiveContentError, match=(
            r"declare 45 bytes, over the limit of 39: the total passes it at member 'b\.bin' \(30 bytes, 40 bytes so far\)$")):
        safe_extract(archive, out / "x", limits=ExtractionLimits(max_bytes=39))
    with pytest.raises(ArchiveContentError, match=r"the total passes it at member 'c\.bin' \(5 bytes, 45 bytes so far\)$"):
        safe_extract(archive, out / "x", limits=ExtractionLimits(max_bytes=44))
    assert list(out.iterdir()) == []


def test_member_count_refusal_names_the_first_member_past_the_limit(tmp_path, out):
    archive = make_zip(tmp_path / "many.zip", {f"f{i}.txt": b"x" for i in range(5)})
    with pytest.raises(ArchiveContentError, match=r"5 members exceed the limit of 3: member 'f3\.txt' is number 4$"):
        safe_extract(archive, out / "many", limits=ExtractionLimits(max_members=3))
    assert safe_extract(archive, out / "many", limits=ExtractionLimits(max_members=5)) == out / "many"


def test_disk_space_refusal_names_the_largest_member(tmp_path, out, monkeypatch):
    import instructcv_core.data.extract as extract

    archive = make_zip(tmp_path / "x.zip", {"small.txt": b"x", "large.bin": b"y" * 100})
    monkeypatch.setattr(extract.shutil, "disk_usage", lambda path: SimpleNamespace(total=1000, used=0, free=1000))
    with pytest.raises(ArchiveContentError, match=r"needs 101 bytes but .* has 1,000 free \(the largest member is "
                                                  r"'large\.bin', 100 bytes\)"):
        safe_extract(archive, out / "x")
    assert list(out.iterdir()) == []


def test_zip_member_inflating_past_its_declared_size_stops_there(tmp_path, out):
    archive = make_zip(tmp_path / "liar.zip", {"a.txt": b"x" * 1000})
    data = bytearray(archive.read_bytes())
    # Patch the declared (uncompressed) size in the central directory: 1000 -> 10.
    central = data.rindex(b"PK\x01\x02")
    assert int.from_bytes(data[central + 24 : central + 28], "little") == 1000
    data[central + 24 : central + 28] = (10).to_bytes(4, "little")
    archive.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged or truncated archive .BadZipFile: Bad CRC-32 for file 'a.txt'"):
        safe_extract(archive, out / "liar")
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("names", [("a/b.txt", "a/b.txt"), ("a/b.txt", "./a/b.txt"), ("a/b.txt", "a//b.txt")])
def test_duplicate_tar_members_are_refused(tmp_path, out, names):
    archive = tmp_path / "dup.tar"
    with tarfile.open(archive, "w") as tar:
        add_tar_member(tar, names[0], b"first")
        add_tar_member(tar, names[1], b"second")
    with pytest.raises(ArchiveContentError, match="name the same path"):
        safe_extract(archive, out / "dup")
    assert list(out.iterdir()) == []


def test_duplicate_zip_members_are_refused(tmp_path, out):
    archive = tmp_path / "dup.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.txt", b"first")
        with pytest.warns(UserWarning, match="Duplicate name"):
            zf.writestr("a.txt", b"second")
    with pytest.raises(ArchiveContentError, match="members 'a.txt' and 'a.txt' name the same path"):
        safe_extract(archive, out / "dup")


def test_folder_listed_twice_is_accepted(tmp_path, out):
    archive = tmp_path / "dirs.tar"
    with tarfile.open(archive, "w") as tar:
        add_tar_member(tar, "a", type=tarfile.DIRTYPE, mode=0o755)
        add_tar_member(tar, "a/", type=tarfile.DIRTYPE, mode=0o755)
        add_tar_member(tar, "a/b.txt", b"b")
    assert tree(safe_extract(archive, out / "dirs")) == {"a/b.txt": b"b"}


@pytest.mark.parametrize("kind", ["tar", "zip", "folders only"])
def test_archive_without_files_is_refused_naming_it(tmp_path, out, kind):
    archive = tmp_path / f"empty.{kind.split()[0]}"
    if kind == "zip":
        zipfile.ZipFile(archive, "w").close()
    else:
        with tarfile.open(archive, "w") as tar:
            if kind == "folders only":
                add_tar_member(tar, "a", type=tarfile.DIRTYPE, mode=0o755)
    with pytest.raises(ArchiveContentError, match=rf"{archive.name}: holds no files"):
        safe_extract(archive, out / "empty")


def test_tar_cut_at_a_member_boundary_is_truncated(tmp_path, out):
    archive = make_tar(tmp_path / "cut.tar")
    data = archive.read_bytes()
    with tarfile.open(archive) as tar:
        boundary = tar.getmembers()[-1].offset  # the last member's header starts here
    archive.write_bytes(data[:boundary])
    with pytest.raises(ArchiveContentError, match=r"truncated: no end-of-archive marker after 3 members"):
        safe_extract(archive, out / "cut")
    assert list(out.iterdir()) == []


def test_tar_with_corrupt_header_midway_is_refused(tmp_path, out):
    archive = make_tar(tmp_path / "corrupt.tar")
    with tarfile.open(archive) as tar:
        offset = tar.getmembers()[2].offset
    data = bytearray(archive.read_bytes())
    data[offset + 148 : offset + 156] = b"garbage!"  # the header checksum field
    archive.write_bytes(bytes(data))
    with pytest.raises(ArchiveContentError, match=rf"corrupt member header at byte {offset} after 2 members"):
        safe_extract(archive, out / "corrupt")


def test_compressed_tar_cut_at_a_member_boundary_is_truncated(tmp_path, out):
    plain = make_tar(tmp_path / "plain.tar")
    with tarfile.open(plain) as tar:
        boundary = tar.getmembers()[-1].offset
    archive = tmp_path / "cut.tar.gz"
    import gzip

    archive.write_bytes(gzip.compress(plain.read_bytes()[:boundary]))
    with pytest.raises(ArchiveContentError, match="truncated"):
        safe_extract(archive, out / "cut")


def test_normalised_tar_modes_are_reported(tmp_path, out, caplog):
    archive = tmp_path / "modes.tar"
    with tarfile.open(archive, "w") as tar:
        add_tar_member(tar, "run.sh", b"#!/bin/sh\n", mode=0o4777)
        add_tar_member(tar, "plain.txt", b"ok", mode=0o644)
    dest = safe_extract(archive, out / "modes")
    assert read_marker(dest)["normalised_modes"] == [
        {"member": "run.sh", "archive_mode": "0o4777", "written_mode": "0o755"}
    ]
    assert stat.S_IMODE((dest / "run.sh").stat().st_mode) == 0o755
    assert "member 'run.sh' has mode 0o4777; written as 0o755" in caplog.text


def test_normalised_zip_modes_are_reported(tmp_path, out):
    archive = tmp_path / "modes.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("tool")
        info.external_attr = (stat.S_IFREG | 0o6775) << 16
        zf.writestr(info, b"x")
        zf.writestr("plain.txt", b"ok")
    dest = safe_extract(archive, out / "modes")
    assert read_marker(dest)["normalised_modes"] == [
        {"member": "tool", "archive_mode": "0o6775", "written_mode": "0o755"}
    ]
    assert not (dest / "tool").stat().st_mode & (stat.S_ISUID | stat.S_ISGID)


def test_marker_records_the_bytes_written(tmp_path, out):
    dest = safe_extract(make_tar(tmp_path / "images.tar"), out / "images")
    assert read_marker(dest)["bytes"] == sum(len(v) for v in FILES.values())
