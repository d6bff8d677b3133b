"""Byte-deterministic tar and zip packing, so the same seed always yields the same checksums."""

from __future__ import annotations

import gzip
import io
import tarfile
import zipfile
from pathlib import Path

from instructcv_core.data.records import atomic_write

# 2016-01-01 00:00 UTC: a fixed timestamp for every archive member.
FIXED_MTIME = 1451606400
_ZIP_DATE = (2016, 1, 1, 0, 0, 0)


def _members(src_dir: Path) -> list[Path]:
    return sorted(p for p in src_dir.rglob("*") if p.is_file() or p.is_dir())


def pack_tar(src_dir: Path, archive: Path, *, gzip_compress: bool = False) -> Path:
    """Pack the *contents* of ``src_dir`` (member names relative to it) into a tar archive.

    ``gzip_compress`` False writes a plain tar even if the name ends in ``.tar.gz`` (as the
    Oxford-IIIT Pet archives really are).
    """
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path in _members(src_dir):
            info = tar.gettarinfo(str(path), arcname=path.relative_to(src_dir).as_posix())
            info.mtime, info.uid, info.gid, info.uname, info.gname = FIXED_MTIME, 0, 0, "", ""
            if path.is_dir():
                info.mode = 0o755
                tar.addfile(info)
            else:
                info.mode = 0o644
                with open(path, "rb") as fh:
                    tar.addfile(info, fh)
    data = buf.getvalue()
    if gzip_compress:
        data = gzip.compress(data, compresslevel=6, mtime=0)
    atomic_write(archive, lambda tmp: Path(tmp).write_bytes(data))
    return archive


def pack_zip(src_dir: Path, archive: Path) -> Path:
    """Pack the contents of ``src_dir`` into a deflated zip with fixed timestamps."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in _members(src_dir):
            name = path.relative_to(src_dir).as_posix() + ("/" if path.is_dir() else "")
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.external_attr = ((0o40755 if path.is_dir() else 0o100644) << 16)
            info.compress_type = zipfile.ZIP_STORED if path.is_dir() else zipfile.ZIP_DEFLATED
            zf.writestr(info, b"" if path.is_dir() else path.read_bytes())
    atomic_write(archive, lambda tmp: Path(tmp).write_bytes(buf.getvalue()))
    return archive
