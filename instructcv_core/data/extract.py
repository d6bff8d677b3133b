"""Unpack one downloaded archive into its own folder: safely, atomically, once.

`safe_extract(archive, dest)` guarantees:

- Nothing is written outside ``dest``. Every member is checked before the first one is extracted,
  and an archive holding an absolute path, a ``..`` component, a link (symbolic or hard, even one
  pointing inside) or a device/FIFO is refused whole with `UnsafeArchiveError`. Tar extraction
  also runs with tarfile's ``"data"`` filter as a second line of defence.
- ``dest`` is never half-extracted: members go to a hidden sibling folder that is renamed to
  ``dest`` only once complete, so ``dest`` is absent, the previous extraction, or the new one.
- An unchanged archive is not extracted twice: ``dest/.extracted.json`` records the archive's
  name, size and mtime, and a matching marker makes the call return at once.
- Nothing unbounded or ambiguous is extracted (`ArchiveContentError`, nothing written): the
  declared sizes of the members must fit `ExtractionLimits` (total bytes, and a ratio to the
  archive's own size once past a floor) and the free disk space, and a refusal names the member
  that breaks the budget (the one at which the count or the total passes the limit; for the ratio
  of a zip, the member that expands most over its own compressed size); no two members may name the
  same path; an archive must hold at least one file; a tar must end with its end-of-archive
  marker (a tar cut at a member boundary, or with a corrupt header midway, otherwise reads as a
  shorter valid one). While extracting, no member can write past its declared size (tarfile copies
  exactly that many bytes; zipfile stops there and fails the CRC check), and the bytes actually
  written must equal the declared total.
- Modes are normalised (no setuid/setgid/sticky bits, no group/other write; tarfile's ``"data"``
  filter for tar, default permissions for zip) and every member whose mode changed is *reported*:
  logged, and listed under ``normalised_modes`` in the marker.

The format is detected by content, not by name (Oxford-IIIT Pet's ``images.tar.gz`` is an
uncompressed tar): zip, or tar uncompressed or compressed with gzip, bzip2 or xz.

Each archive gets its own ``dest`` (e.g. ``extracted/train2017.zip/``, ``extracted/val2017.zip/``):
the caller picks it, and a re-extraction replaces only that archive's folder.
"""

from __future__ import annotations

import gzip
import json
import logging
import lzma
import os
import posixpath
import re
import secrets
import shutil
import stat
import tarfile
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

logger = logging.getLogger(__name__)

MARKER_NAME = ".extracted.json"
PROGRESS_INTERVAL_S = 0.5  # least time between two calls of the progress callback

# What the decompressors and archive readers raise for a damaged or truncated file.
_DAMAGED_ARCHIVE_ERRORS = (
    tarfile.TarError,
    zipfile.BadZipFile,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    gzip.BadGzipFile,
)
_WINDOWS_DRIVE = re.compile(r"[A-Za-z]:")


@dataclass(frozen=True)
class ExtractionLimits:
    """The budget of one archive, checked on the members' declared sizes before extraction.

    ``max_bytes``: total bytes the members may expand to (the largest published archive, COCO's
    train2017.zip, holds 19 GB of images). ``max_ratio``: expanded bytes per archive byte, once
    the total exceeds ``ratio_floor_bytes`` (small archives of text compress far better than any
    image dataset, and cannot do harm). ``max_members``: entries (COCO train2017 has 118k).
    """

    max_bytes: int = 64 << 30
    max_ratio: float = 100.0
    ratio_floor_bytes: int = 64 << 20
    max_members: int = 1_000_000


DEFAULT_LIMITS = ExtractionLimits()
_DISK_HEADROOM_BYTES = 64 << 20  # left free after extraction, for the marker and everything else


class ArchiveContentError(ValueError):
    """An archive that is safe to read but not extracted: over budget, ambiguous, empty or truncated."""

    def __init__(self, archive: Path, reason: str) -> None:
        self.archive, self.reason = archive, reason
        super().__init__(f"{archive}: {reason}")


class UnsafeArchiveError(ValueError):
    """A member that could write outside the destination, or is not a plain file or folder."""

    def __init__(self, archive: Path, member: str, reason: str) -> None:
        self.archive, self.member, self.reason = archive, member, reason
        super().__init__(f"{archive}: refusing member '{member}': {reason}")


def safe_extract(
    archive: Path,
    dest: Path,
    *,
    progress: Callable[[int, int], None] | None = None,
    show_bar: bool = True,
    limits: ExtractionLimits = DEFAULT_LIMITS,
) -> Path:
    """Extract ``archive`` (zip or tar) so that ``dest`` holds exactly its members; return ``dest``.

    ``progress(done_members, total_members)`` is called at most every 0.5 s and once at the end;
    ``show_bar`` also draws a tqdm bar on stderr (it stays off without a TTY).
    A ``dest`` that exists without a marker matching ``archive`` is replaced, whatever it holds.

    Raises `UnsafeArchiveError` (nothing extracted) for a dangerous member, `ArchiveContentError`
    (nothing extracted) for an archive over ``limits``, with duplicate members, without files, or
    truncated; ValueError for a file that is not a zip or tar archive or is damaged;
    FileNotFoundError for a missing archive. Members whose mode was normalised are logged and
    listed in the marker (`read_marker`).
    """
    archive, dest = Path(archive), Path(dest)
    identity = _archive_identity(archive)
    if _marker_matches(dest, identity):
        logger.info("%s: already extracted into %s", archive.name, dest)
        return dest
    try:
        with _open_archive(archive) as source:
            source.check()  # before anything touches the disk
            declared = _check_content(source, limits, dest)
            _extract_atomically(source, dest, identity, declared, progress=progress, show_bar=show_bar)
    except tarfile.FilterError as exc:  # the "data" filter caught what check() should have
        raise UnsafeArchiveError(archive, exc.tarinfo.name, str(exc)) from exc
    except _DAMAGED_ARCHIVE_ERRORS as exc:
        raise ValueError(
            f"{archive}: damaged or truncated archive ({type(exc).__name__}: {exc}); "
            "delete it so that it is downloaded again"
        ) from exc
    logger.info("%s: extracted %d members into %s", archive.name, len(source.members), dest)
    return dest


# --- the marker --------------------------------------------------------------------------------


def _archive_identity(archive: Path) -> dict[str, object]:
    """What tells one version of an archive from another, without reading it all."""
    st = archive.stat()
    return {"archive": archive.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def read_marker(dest: Path) -> dict:
    """What `safe_extract` recorded about the extraction in ``dest``: the archive's identity,
    ``members``, ``bytes`` written and ``normalised_modes`` (member, mode in the archive, mode
    written; octal strings)."""
    return json.loads((Path(dest) / MARKER_NAME).read_text())


def _marker_matches(dest: Path, identity: dict[str, object]) -> bool:
    try:
        marker = json.loads((dest / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and all(marker.get(k) == v for k, v in identity.items())


# --- reading archives --------------------------------------------------------------------------


class _TarSource:
    """A tar archive (any compression) opened for reading."""

    def __init__(self, archive: Path, tar: tarfile.TarFile) -> None:
        self.archive, self._tar = archive, tar
        # Reads the whole index up front; for a compressed tar this costs one extra decompression
        # pass, the price of refusing a bad member before extracting any.
        self.members = tar.getmembers()
        self._check_end_marker()

    def _check_end_marker(self) -> None:
        """tarfile stops quietly at a missing or corrupt header after the first: look at what
        stopped it (`_HeaderRecordingTarInfo`). A complete archive ends with a zero block."""
        stop = getattr(self._tar, "stopped_by", None)
        if isinstance(stop, tarfile.EOFHeaderError):
            return
        if isinstance(stop, (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError)):
            raise ArchiveContentError(
                self.archive, f"truncated: no end-of-archive marker after {len(self.members)} members "
                f"(the data ends near byte {self._tar.offset}); delete it so that it is downloaded again"
            )
        raise ArchiveContentError(
            self.archive, f"corrupt member header at byte {self._tar.offset} after {len(self.members)} "
            f"members ({stop}); delete it so that it is downloaded again"
        )

    def check(self) -> None:
        for member in self.members:
            reason = _name_problem(member.name) or _tar_type_problem(member)
            if reason:
                raise UnsafeArchiveError(self.archive, member.name, reason)

    def entries(self) -> list[tuple[str, bool, int, int | None]]:
        """(name, is a folder, declared size, compressed size) of every member; a tar's members
        share one compressed stream, so theirs is None."""
        return [(m.name, m.isdir(), m.size if m.isreg() else 0, None) for m in self.members]

    def normalised_modes(self, into: Path) -> list[dict[str, str]]:
        """Members whose mode the ``"data"`` filter changes (setuid, group/other write, ...)."""
        changed = []
        for member in self.members:
            if not member.isreg():
                continue  # folders get default modes, which is what the filter does to them too
            written = tarfile.data_filter(member, str(into)).mode
            if written is not None and written != member.mode:
                changed.append({"member": member.name, "archive_mode": oct(member.mode), "written_mode": oct(written)})
        return changed

    def extract(self, into: Path, on_member: Callable[[], None]) -> None:
        # extractall rather than one extract() per member: it sets directory times and modes
        # only after filling the directories. tarfile copies exactly ``member.size`` bytes (a
        # short read is an error), so a tar member cannot write more than it declares.
        members = _counting(self.members, on_member)
        self._tar.extractall(into, members=members, filter="data")

    def close(self) -> None:
        self._tar.close()

    def __enter__(self) -> _TarSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _HeaderRecordingTarInfo(tarfile.TarInfo):
    """Records on the archive which header error ended the member list (``stopped_by``):
    tarfile treats a zero block (the end-of-archive marker), no data and a corrupt header alike."""

    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tarfile_)
        except tarfile.HeaderError as exc:
            tarfile_.stopped_by = exc
            raise


class _ZipSource:
    """A zip archive opened for reading."""

    def __init__(self, archive: Path, zf: zipfile.ZipFile) -> None:
        self.archive, self._zip = archive, zf
        self.members = zf.infolist()

    def check(self) -> None:
        for info in self.members:
            reason = _name_problem(info.filename) or _zip_type_problem(info)
            if reason:
                raise UnsafeArchiveError(self.archive, info.filename, reason)

    def entries(self) -> list[tuple[str, bool, int, int | None]]:
        return [(i.filename, i.is_dir(), i.file_size, i.compress_size) for i in self.members]

    def normalised_modes(self, into: Path) -> list[dict[str, str]]:
        """Members whose recorded Unix mode is not honoured (files are written with default modes)."""
        changed = []
        for info in self.members:
            mode = info.external_attr >> 16
            if not info.is_dir() and stat.S_IMODE(mode) & _DROPPED_MODE_BITS:
                written = stat.S_IMODE(mode) & ~_DROPPED_MODE_BITS
                changed.append({"member": info.filename, "archive_mode": oct(stat.S_IMODE(mode)), "written_mode": oct(written)})
        return changed

    def extract(self, into: Path, on_member: Callable[[], None]) -> None:
        # zipfile stops inflating a member at its declared size (and then fails its CRC check),
        # so a member cannot write more than the central directory says.
        for info in _counting(self.members, on_member):
            self._zip.extract(info, into)

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> _ZipSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _open_archive(archive: Path) -> _TarSource | _ZipSource:
    """Open by content: a zip, else a tar in any compression tarfile recognises."""
    if zipfile.is_zipfile(archive):
        return _ZipSource(archive, zipfile.ZipFile(archive))
    try:
        tar = tarfile.open(archive, mode="r:*", tarinfo=_HeaderRecordingTarInfo)
    except tarfile.ReadError as exc:
        raise ValueError(
            f"{archive}: not a zip or tar archive (tar may be uncompressed, gzip, bzip2 or xz), "
            f"or a damaged one ({exc}); check the file, or delete it so that it is downloaded again"
        ) from exc
    try:
        return _TarSource(archive, tar)
    except BaseException:
        tar.close()
        raise


# Mode bits extraction never writes: setuid, setgid, sticky, and write for group and others.
_DROPPED_MODE_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | stat.S_IWGRP | stat.S_IWOTH


def _check_content(source: _TarSource | _ZipSource, limits: ExtractionLimits, dest: Path) -> int:
    """Refuse an empty, ambiguous or over-budget archive; return the declared bytes of its files."""
    entries = source.entries()
    archive = source.archive
    if not any(not is_dir for _, is_dir, _, _ in entries):
        raise ArchiveContentError(archive, "holds no files (an empty archive is never a dataset)")
    if len(entries) > limits.max_members:
        raise ArchiveContentError(
            archive, f"{len(entries):,} members exceed the limit of {limits.max_members:,}: member "
            f"'{entries[limits.max_members][0]}' is number {limits.max_members + 1:,}"
        )
    seen: dict[str, tuple[str, bool]] = {}
    for name, is_dir, _, _ in entries:
        path = posixpath.normpath(name)
        if path == "." and is_dir:
            continue
        if path in seen and not (is_dir and seen[path][1]):  # a folder listed twice is harmless
            raise ArchiveContentError(
                archive, f"members '{seen[path][0]}' and '{name}' name the same path (one would silently replace the other)"
            )
        seen[path] = (name, is_dir)
    files = [(name, size, compressed) for name, is_dir, size, compressed in entries if not is_dir]
    declared = sum(size for _, size, _ in files)
    size = archive.stat().st_size
    if declared > limits.max_bytes:
        raise ArchiveContentError(
            archive, f"members declare {declared:,} bytes, over the limit of {limits.max_bytes:,}: "
            f"{_passing_member(files, limits.max_bytes)}"
        )
    if declared > limits.ratio_floor_bytes and declared > limits.max_ratio * size:
        raise ArchiveContentError(
            archive, f"members declare {declared:,} bytes from {size:,} archive bytes, a ratio of "
            f"{declared / size:,.0f} over the limit of {limits.max_ratio:g}: "
            f"{_most_expanding_member(files) or _passing_member(files, limits.max_ratio * size)}"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(dest.parent).free
    if declared + _DISK_HEADROOM_BYTES > free:
        largest, largest_size, _ = max(files, key=lambda file: file[1])
        raise ArchiveContentError(
            archive, f"needs {declared:,} bytes but {dest.parent} has {free:,} free (the largest member is "
            f"'{largest}', {largest_size:,} bytes); free some space or extract elsewhere"
        )
    return declared


def _passing_member(files: list[tuple[str, int, int | None]], budget: float) -> str:
    """The member at which the running total of declared bytes passes ``budget``, described."""
    total = 0
    for name, size, _ in files:
        total += size
        if total > budget:
            return f"the total passes it at member '{name}' ({size:,} bytes, {total:,} bytes so far)"
    raise AssertionError("the total does not pass the budget")  # the caller checked that it does


def _most_expanding_member(files: list[tuple[str, int, int | None]]) -> str | None:
    """The member with the largest expansion over its own compressed size, described; None when the
    members' compressed sizes are unknown (a tar: one stream for all) or none expands."""
    known = [(size / compressed, name, size, compressed) for name, size, compressed in files if compressed]
    if not known or max(known)[0] <= 1:
        return None
    ratio, name, size, compressed = max(known)
    return f"member '{name}' expands to {size:,} bytes from {compressed:,} compressed (a ratio of {ratio:,.0f})"


def _written_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _name_problem(name: str) -> str | None:
    """Why a member name could land outside the destination folder, or None if it cannot."""
    if not name:
        return "empty name"
    if name.startswith(("/", "\\")):
        return "absolute path"
    if _WINDOWS_DRIVE.match(name):
        return "absolute path (Windows drive letter)"
    # Backslash too: archives made on Windows may use it as the separator.
    if ".." in re.split(r"[/\\]", name):
        return "'..' component leads outside the destination"
    return None


def _tar_type_problem(member: tarfile.TarInfo) -> str | None:
    # Every link is refused, even one pointing inside: a later member written "through" a link
    # is the classic way out of the destination, and the datasets ship none.
    if member.issym():
        return f"symbolic link (to '{member.linkname}')"
    if member.islnk():
        return f"hard link (to '{member.linkname}')"
    if member.ischr() or member.isblk():
        return "device file"
    if member.isfifo():
        return "FIFO"
    if not (member.isreg() or member.isdir()):
        return f"unsupported member type {member.type!r}"
    return None


def _zip_type_problem(info: zipfile.ZipInfo) -> str | None:
    # Unix archivers put st_mode in the high 16 bits of external_attr; zero when none was recorded.
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
        return "special file (device, FIFO or socket)"
    if info.flag_bits & 0x1:
        return "encrypted (password-protected members are not supported)"
    return None


# --- writing the destination -------------------------------------------------------------------


def _extract_atomically(
    source: _TarSource | _ZipSource,
    dest: Path,
    identity: dict[str, object],
    declared: int,
    *,
    progress: Callable[[int, int], None] | None,
    show_bar: bool,
) -> None:
    """Extract into a hidden sibling of ``dest``, add the marker, then swap it in as ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    # A sibling, so that the final rename stays on one file system and is atomic.
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        with _MemberProgress(source.archive.name, len(source.members), progress, show_bar) as meter:
            source.extract(staging, meter.advance)
            meter.finish()
        written = _written_bytes(staging)
        if written != declared:
            raise ArchiveContentError(
                source.archive, f"wrote {written:,} bytes where its members declare {declared:,}; "
                "delete it so that it is downloaded again"
            )
        normalised = source.normalised_modes(staging)
        for change in normalised:
            logger.warning("%s: member '%s' has mode %s; written as %s", source.archive.name,
                           change["member"], change["archive_mode"], change["written_mode"])
        marker = {**identity, "members": len(source.members), "bytes": written, "normalised_modes": normalised}
        (staging / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n")
        _swap_into_place(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _swap_into_place(new: Path, dest: Path) -> None:
    """Rename the complete folder ``new`` to ``dest``, replacing whatever ``dest`` was."""
    if not dest.exists() and not dest.is_symlink():
        os.rename(new, dest)
        return
    old = dest.with_name(f".{dest.name}.old-{secrets.token_hex(4)}")
    os.rename(dest, old)
    try:
        os.rename(new, dest)
    except BaseException:
        os.rename(old, dest)  # keep the previous extraction rather than none
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    else:
        old.unlink()


def _counting(items: Iterable, on_item: Callable[[], None]) -> Iterator:
    """Yield ``items``, calling ``on_item`` once the consumer is done with each."""
    for item in items:
        yield item
        on_item()


class _MemberProgress:
    """Members extracted so far: a tqdm bar plus a throttled callback."""

    def __init__(
        self, name: str, total: int, callback: Callable[[int, int], None] | None, show_bar: bool
    ) -> None:
        self.done, self.total = 0, total
        self._callback = callback
        # disable=None: tqdm turns itself off when stderr is not a terminal (logs, CI).
        self._bar = tqdm(desc=name, total=total, unit="file", disable=None if show_bar else True)
        self._last_report = float("-inf")

    def __enter__(self) -> _MemberProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._bar.close()

    def advance(self) -> None:
        self.done += 1
        self._bar.update(1)
        now = time.monotonic()
        if self._callback is not None and now - self._last_report >= PROGRESS_INTERVAL_S:
            self._last_report = now
            self._callback(self.done, self.total)

    def finish(self) -> None:
        if self._callback is not None:
            self._callback(self.done, self.total)
