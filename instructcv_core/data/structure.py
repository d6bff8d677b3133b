"""Pinned structure of published files that come with neither a checksum nor a size.

Some hosts publish a file but no digest and no byte count (NYUv2's ``splits.mat``, BTS's ``sync.zip``
and its pair list, ``SUNRGBD.zip``, FSS-1000's ``fewshot_data.zip``, ADE20K's instance annotations).
What *is* published about them is their structure: how many images an archive holds, how many
lines a list has, how long the arrays of a split file are. A `StructurePin` states one such fact
with its source; `structure_problem` checks a downloaded file against its pins, so a truncated,
partial or wrong file is refused by name instead of being recorded as verified
(`instructcv_core.data.download.verification_level` calls this level ``"structure+content"``).

Counts that are known exactly (split sizes, list lengths) are pinned exactly; image counts of
archives whose full member list is not published are pinned as lower bounds (``at_least``): a
complete archive can hold extra files (thumbnails, full-resolution copies), a truncated one cannot
hold every image.
"""

from __future__ import annotations

import fnmatch
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

#: What a pin counts: archive members whose path matches a glob, non-empty lines of a text file,
#: or the number of elements of a named array in a MATLAB file.
KINDS = ("members", "lines", "mat_array")


@dataclass(frozen=True)
class StructurePin:
    """One published fact about a file's structure.

    ``kind`` is ``"members"`` (``what`` is an ``fnmatch`` glob over the archive's file members, folders
    excluded), ``"lines"`` (non-empty lines; ``what`` is unused) or ``"mat_array"`` (``what`` is the
    variable name; its element count). ``at_least``: the count is a lower bound. ``source`` says where
    the number is published.
    """

    kind: str
    count: int
    what: str = ""
    at_least: bool = False
    source: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"StructurePin.kind must be one of {KINDS}, got {self.kind!r}")
        if self.count < 1:
            raise ValueError(f"StructurePin.count must be >= 1, got {self.count}")
        if self.kind in ("members", "mat_array") and not self.what:
            raise ValueError(f"a {self.kind!r} pin needs `what` (a member glob or an array name)")

    def describe(self) -> str:
        bound = "at least " if self.at_least else ""
        subject = {"members": f"archive members matching {self.what!r}", "lines": "non-empty lines",
                   "mat_array": f"elements in array {self.what!r}"}[self.kind]
        return f"{bound}{self.count:,} {subject} ({self.source})" if self.source else f"{bound}{self.count:,} {subject}"


def members(path: Path) -> list[str]:
    """Names of the file members (not folders) of a zip or tar archive (any tar compression).

    A zip's names come from its central directory (no decompression); a tar is read to its end,
    which also detects a truncated tar (``tarfile.ReadError``).
    """
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return [info.filename for info in archive.infolist() if not info.is_dir()]
    with tarfile.open(path, mode="r:*") as archive:
        return [member.name for member in archive if member.isfile()]


def _count(path: Path, pin: StructurePin, cache: dict) -> int:
    if pin.kind == "members":
        if "members" not in cache:
            cache["members"] = members(path)
        return sum(1 for name in cache["members"] if fnmatch.fnmatchcase(name, pin.what))
    if pin.kind == "lines":
        with open(path, encoding="utf-8") as fh:
            return sum(1 for line in fh if line.strip())
    if "mat" not in cache:
        cache["mat"] = _load_mat(path)
    if pin.what not in cache["mat"]:
        raise KeyError(pin.what)
    return int(cache["mat"][pin.what].size)


def _load_mat(path: Path) -> dict:
    """A MATLAB file's variables: v4-v7.2 through scipy, v7.3 (HDF5) through h5py."""
    import numpy as np

    try:
        from scipy.io import loadmat

        return {k: np.asarray(v) for k, v in loadmat(path).items() if not k.startswith("__")}
    except NotImplementedError:  # v7.3: an HDF5 file
        import h5py

        with h5py.File(path, "r") as fh:
            return {k: np.asarray(fh[k]) for k in fh.keys() if isinstance(fh[k], h5py.Dataset)}


def structure_problem(path: Path, pins: tuple[StructurePin, ...]) -> str | None:
    """Why ``path`` does not have the pinned structure (every failed pin, expected vs found); None if it has."""
    cache: dict = {}
    problems = []
    for pin in pins:
        try:
            found = _count(path, pin, cache)
        except KeyError:
            problems.append(f"no array {pin.what!r} (expected {pin.describe()})")
            continue
        except (OSError, ValueError, EOFError, UnicodeDecodeError, tarfile.TarError, zipfile.BadZipFile) as exc:
            return f"cannot read its structure ({type(exc).__name__}: {exc}); expected {pin.describe()}"
        if found < pin.count or (not pin.at_least and found != pin.count):
            problems.append(f"found {found:,}, expected {pin.describe()}")
    return "; ".join(problems) or None


__all__ = ["KINDS", "StructurePin", "members", "structure_problem"]
