"""Raw-stage cost per dataset on the mini-benchmark: build archives, fetch, extract, read records.

    python benchmarks/raw_stage.py [--scale 1.0] [--dataset coco ...]

``--scale`` multiplies every default mini size (2.0 = twice as many images).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from instructcv_core.data.datasets import DATASETS
from instructcv_core.data.mini.build import resolved_sizes
from instructcv_core.data.raw_stage import build_raw_dataset, resolve_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--dataset", action="append", choices=DATASETS)
    args = parser.parse_args()
    print(f"{'dataset':14s} {'images':>7s} {'build s':>8s} {'fetch+extract+read s':>21s} {'records/s':>11s}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in args.dataset or DATASETS:
            sizes = {k: max(1, round(v * args.scale)) for k, v in resolved_sizes(name, None).items()}
            start = time.perf_counter()
            spec = resolve_spec(name, "mini", mirror_dir=tmp / "mirror", mini_sizes=sizes, info=lambda _: None)
            build = time.perf_counter() - start
            read_times: list[float] = []

            def info(message: str, _marks=read_times) -> None:
                if message.startswith(f"{name}: reading"):
                    _marks.append(time.perf_counter())

            start = time.perf_counter()
            result = build_raw_dataset(name, spec, tmp / name, info=info, show_bar=False)
            total = time.perf_counter() - start
            read = time.perf_counter() - read_times[0] if read_times else float("nan")
            print(f"{name:14s} {result.n_records:7d} {build:8.2f} {total:21.2f} {result.n_records / read:11.0f}")


if __name__ == "__main__":
    main()
