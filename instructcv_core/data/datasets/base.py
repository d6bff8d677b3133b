"""What every source dataset module declares: where its files come from and how to read them.

Each module in `instructcv_core.data.datasets` has the same shape:
- ``SPEC``: a `DatasetSpec` (published URLs with mirrors and checksums, licence, the marker path
  that identifies the dataset root once extracted);
- ``read(root, **options) -> ReadResult``: parse the real on-disk format into `ImageRecord`s.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from instructcv_core.data.images import ImageRefused, image_size_and_mode, is_sixteen_bit
from instructcv_core.data.records import Category, ImageRecord, QuarantineEntry, ReadWarning
from instructcv_core.data.structure import StructurePin

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 10.0  # seconds between two progress lines of check_images


@dataclass(frozen=True)
class RemoteFile:
    """One published file: its name on disk, URLs (primary first, then mirrors) and checksum.

    ``checksum`` is ``"<algo>:<hexdigest>"`` with algo md5, sha1 or sha256, or None where the
    host publishes none; ``size`` the byte length. Without a checksum the download checks the
    pinned size and sniffs the content; without either, the published ``structure``
    (`StructurePin`: member, line or array counts) and the content; without any pin, only the
    content (recorded as verification ``"content"``, never as verified; see
    `instructcv_core.data.download`).
    ``extract``: whether the file is an archive to unpack into the dataset folder.
    ``required=False``: the dataset is usable without it; ``required_in`` names the profiles in
    which it is required all the same, and ``missing_effect`` says what is lost without it (the
    stage's error in those profiles, its loud status elsewhere).
    """

    filename: str
    urls: tuple[str, ...]
    checksum: str | None = None
    size: int | None = None
    extract: bool = True
    required: bool = True
    structure: tuple[StructurePin, ...] = ()
    required_in: tuple[str, ...] = ()
    missing_effect: str = ""


@dataclass(frozen=True)
class DatasetSpec:
    """A source dataset as published."""

    name: str
    title: str
    licence: str
    citation: str
    homepage: str
    files: tuple[RemoteFile, ...]
    # Path (relative to the extraction folder) of the folder the reader takes as its root,
    # and a file inside that root whose presence says the layout is right.
    root_subdir: str
    marker: str
    registration_only: bool = False


@dataclass
class ReadResult:
    """Everything a reader found: records, the category table, files (or annotations) it could not
    use, and what it changed in usable input to keep it (`ReadWarning`: clipped boxes, masked depth
    pixels, 16-bit photographs read as 8-bit RGB)."""

    records: list[ImageRecord]
    categories: list[Category]
    quarantine: list[QuarantineEntry] = field(default_factory=list)
    warnings: list[ReadWarning] = field(default_factory=list)


class DatasetLayoutError(FileNotFoundError):
    """The folder given to a reader is not the dataset's on-disk layout (a file is missing)."""


def require(path: Path, what: str) -> Path:
    """Return ``path`` or raise a `DatasetLayoutError` naming the missing file and what it is."""
    if not path.exists():
        raise DatasetLayoutError(f"{path}: missing {what}")
    return path


def read_path_pairs(path: Path, expected: str) -> list[tuple[str, str]]:
    """The first two whitespace-separated fields of every non-blank line of a list file.

    Used for `<rgb> <depth> [...]` pair lists (BTS/MDET). A line with fewer than two fields is a
    ValueError naming the file, the line number and ``expected`` (the line's documented shape).
    """
    pairs = []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2:
            raise ValueError(f"{path}:{lineno}: expected `{expected}`, got {line!r}")
        pairs.append((parts[0], parts[1]))
    return pairs


class ImageSize(tuple):
    """(width, height) of a usable photograph, compared and indexed as that tuple; ``mode`` is the
    Pillow mode it is stored in (`sixteen_bit_warnings` reports the 16-bit ones)."""

    mode: str

    def __new__(cls, width: int, height: int, mode: str = "RGB") -> "ImageSize":
        size = super().__new__(cls, (width, height))
        size.mode = mode
        return size


def check_image(path: Path) -> ImageSize | str:
    """Return the `ImageSize` of a usable photograph, or the reason it is unusable.

    Decodes the whole image (``verify`` alone misses truncated JPEG data) through
    `instructcv_core.data.images`, so the pixel cap and the mode policy apply here as everywhere.
    """
    try:
        (width, height), mode = image_size_and_mode(path)
    except ImageRefused as exc:
        return exc.reason
    return ImageSize(width, height, mode)


def sixteen_bit_warnings(root: Path, paths: Sequence[Path], sizes: Sequence[ImageSize | str]) -> list[ReadWarning]:
    """A ``sixteen_bit_to_rgb`` warning per checked photograph stored as 16-bit grey.

    `read_rgb` scales such an image to 8 bits (``round(v * 255 / 65535)``): usable, but not the
    pixels as stored, so it is reported. ``paths`` and ``sizes`` are `check_images`' input and output.
    """
    return [
        ReadWarning("sixteen_bit_to_rgb", Path(path).relative_to(root).as_posix(),
                    f"16-bit grey photograph (mode {size.mode}) read as 8-bit RGB (value * 255 / 65535)")
        for path, size in zip(paths, sizes)
        if isinstance(size, ImageSize) and is_sixteen_bit(size.mode)
    ]


def check_images(paths: Sequence[Path], workers: int | None = None) -> list[ImageSize | str]:
    """`check_image` of every path, in input order, decoded by a pool of ``workers`` threads.

    Threads, not processes: Pillow releases the GIL while its decoders run (JPEG, PNG/zlib, ...),
    so the full decodes overlap and the speed-up is close to linear in the number of cores, with
    none of the pickling or start-up cost of a process pool. ``workers`` defaults to
    ``min(8, os.cpu_count())``. Paths are handed to the threads in chunks, so a list of 100k+
    images does not become 100k+ futures. Progress goes to this module's logger every
    ``PROGRESS_EVERY_S`` seconds (Dagster shows it in the run log: see dagster.yaml python_logs).
    """
    if workers is None:
        workers = min(8, os.cpu_count() or 1)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    paths = list(paths)
    if not paths:
        return []
    # Small enough to keep every thread busy on short lists, large enough to amortise the futures.
    size = max(1, min(64, len(paths) // (workers * 4)))
    chunks = [paths[i : i + size] for i in range(0, len(paths), size)]
    results: list[ImageSize | str] = []
    last = time.monotonic()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="check_image") as pool:
        for chunk in pool.map(_check_chunk, chunks):
            results.extend(chunk)
            if time.monotonic() - last >= PROGRESS_EVERY_S:
                last = time.monotonic()
                log.info("checked %d of %d images (%.0f%%)", len(results), len(paths), 100 * len(results) / len(paths))
    return results


def _check_chunk(paths: list[Path]) -> list[ImageSize | str]:
    return [check_image(path) for path in paths]
