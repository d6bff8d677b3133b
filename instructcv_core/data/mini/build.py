"""Build the `instructcv-mini` benchmark: archives in each real dataset's on-disk format + an index.

Each dataset has a writer module `instructcv_core.data.mini.<name>` exposing
``ARCHIVES`` (file names, identical to the real dataset's published files it stands in for),
``DEFAULT_SIZES`` (image counts per split) and ``write_archives(out_dir, seed, sizes) -> list[Path]``.
The index (``index.json``) lists every archive with its sha256 and size: it plays the part of the
checksums a real dataset host publishes, and the same download code verifies against it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

from instructcv_core.data.records import atomic_write_text

INDEX_NAME = "index.json"
FORMAT_VERSION = 1  # bump when any writer's output changes, so cached mirrors are rebuilt


@dataclass(frozen=True)
class MiniArchive:
    dataset: str
    filename: str
    sha256: str
    size: int


def writer(name: str):
    return importlib.import_module(f"instructcv_core.data.mini.{name}")


def dataset_seed(seed: int, name: str) -> int:
    """An independent, stable seed per dataset (adding a dataset never changes the others)."""
    return int(zlib.crc32(name.encode())) ^ (seed * 1_000_003)


def resolved_sizes(name: str, sizes: dict[str, int] | None) -> dict[str, int]:
    """The writer's defaults overridden by ``sizes``; unknown keys are an error naming them."""
    defaults = dict(writer(name).DEFAULT_SIZES)
    for key, value in (sizes or {}).items():
        if key not in defaults:
            raise ValueError(
                f"mini sizes for {name!r}: unknown key {key!r} (known: {', '.join(defaults)})"
            )
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"mini sizes for {name!r}: {key} must be a non-negative integer, got {value!r}")
        defaults[key] = value
    return defaults


def build_dataset(name: str, out_dir: Path, seed: int = 0, sizes: dict[str, int] | None = None) -> list[MiniArchive]:
    """Write ``name``'s mini archives into ``out_dir`` (idempotent for the same seed and sizes)."""
    out_dir = Path(out_dir)
    full_sizes = resolved_sizes(name, sizes)
    stamp = {"format": FORMAT_VERSION, "seed": seed, "sizes": full_sizes}
    stamp_path = out_dir / f".{name}.build.json"
    module = writer(name)
    if stamp_path.exists() and json.loads(stamp_path.read_text()).get("stamp") == stamp:
        cached = json.loads(stamp_path.read_text())["archives"]
        if all((out_dir / a["filename"]).exists() for a in cached):
            return [MiniArchive(**a) for a in cached]
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = module.write_archives(out_dir, dataset_seed(seed, name), full_sizes)
    archives = [
        MiniArchive(name, p.name, hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_size)
        for p in paths
    ]
    atomic_write_text(
        stamp_path, json.dumps({"stamp": stamp, "archives": [a.__dict__ for a in archives]}, indent=1)
    )
    return archives


def build_mirror(
    out_dir: Path, seed: int = 0, sizes: dict[str, dict[str, int]] | None = None, datasets: list[str] | None = None
) -> dict:
    """Build every dataset's archives into ``out_dir`` and write ``index.json``; returns the index."""
    from instructcv_core.data.datasets import DATASETS

    index = {"format": FORMAT_VERSION, "seed": seed, "files": {}}
    for name in datasets or DATASETS:
        archives = build_dataset(name, out_dir, seed, (sizes or {}).get(name))
        index["files"][name] = [{"filename": a.filename, "sha256": a.sha256, "size": a.size} for a in archives]
    atomic_write_text(Path(out_dir) / INDEX_NAME, json.dumps(index, indent=1, sort_keys=True))
    return index


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Build the instructcv-mini benchmark archives.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataset", action="append", help="only these datasets (repeatable)")
    args = parser.parse_args()
    index = build_mirror(args.out_dir, args.seed, datasets=args.dataset)
    for name, files in index["files"].items():
        for f in files:
            print(f"{name:14s} {f['filename']:40s} {f['size']:>12,d}  sha256:{f['sha256']}")


if __name__ == "__main__":
    main()
