"""A benchmark's evaluation data: its test-manifest rows, raw records and the evaluated images."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from instructcv_core.benchmarks import Benchmark, benchmark
from instructcv_core.data.records import ImageRecord, read_records


@dataclass
class BenchmarkData:
    """Everything evaluation needs about one benchmark (test rows, raw records, categories)."""

    spec: Benchmark  # its entry of the benchmark table
    frame: pd.DataFrame  # test-manifest rows of the evaluated images
    records: dict[str, ImageRecord]  # image_id -> raw record
    root: Path  # the raw dataset root (label files)
    categories: list[str]  # the dataset's category list, in its native order
    image_ids: list[str]  # evaluated images, in evaluation order
    manifest_path: Path

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def task(self) -> str:
        return self.spec.task

    @property
    def dataset(self) -> str:
        return self.spec.dataset


def select_images(image_ids, limit: int | None, seed: int, benchmark: str) -> list[str]:
    """A deterministic subset of ``limit`` images (all when None), ordered by a seeded hash of the id."""
    ids = sorted(set(image_ids))
    ranked = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}|{benchmark}|{i}".encode()).hexdigest())
    return ranked if limit is None else ranked[: max(0, int(limit))]


def load_benchmark(name: str, datasets_dir: Path, raw_dir: Path, limit: int | None, seed: int) -> BenchmarkData:
    """Read a benchmark's test manifest and its dataset's raw records; pick the evaluated images."""
    spec = benchmark(name)
    manifest_path = Path(datasets_dir) / "test" / f"{spec.test_manifest}.parquet"
    if not manifest_path.exists():
        raise FileNotFoundError(f"{manifest_path}: missing test manifest; materialise test_manifests first")
    frame = pd.read_parquet(manifest_path)
    records_path = Path(raw_dir) / spec.dataset / "records.parquet"
    if not records_path.exists():
        raise FileNotFoundError(f"{records_path}: missing raw records; materialise raw_{spec.dataset} first")
    records, root, categories = read_records(records_path)
    image_ids = select_images(frame["image_id"], limit, seed, name)
    by_id = {r.image_id: r for r in records if r.split == spec.split}
    missing = [i for i in image_ids if i not in by_id]
    if missing:
        raise ValueError(f"{manifest_path}: images {missing[:5]} have no raw record in {records_path}")
    frame = frame[frame["image_id"].isin(image_ids)].reset_index(drop=True)
    return BenchmarkData(spec, frame, {i: by_id[i] for i in image_ids}, root, [c.name for c in categories], image_ids,
                         manifest_path)


__all__ = ["BenchmarkData", "load_benchmark", "select_images"]
