"""How many outputs evaluating one checkpoint generates, per benchmark, on a built data folder.

    python benchmarks/eval_queries.py [--data data] [--profile mini] [--max-images 0] [--heldout-images 50]

Needs the raw records and test manifests (materialise up to ``test_manifests`` first). Prints each
benchmark's test images, evaluated images and planned queries (both protocols; each output is shared),
and the instruction-following probes of the FP/RP checks.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from instructcv_core.benchmarks import BENCHMARKS
from instructcv_core.evaluation.config import EvalConfig
from instructcv_core.evaluation.data import load_benchmark
from instructcv_core.evaluation.instruction_following import plan_probes
from instructcv_core.evaluation.planning import plan_queries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--profile", default="mini")
    parser.add_argument("--max-images", type=int, default=0, help="0: every test image (the mini preset)")
    parser.add_argument("--heldout-images", type=int, default=50)
    args = parser.parse_args()
    root = args.data / args.profile
    config = EvalConfig(max_images=args.max_images, heldout_images=args.heldout_images)
    frame = pd.read_parquet(root / "instructions" / "heldout.parquet")
    heldout = list(frame[frame["source"] == "paper_table3"]["text"])
    totals = {"trained": 0, "untrained": 0, "probes": 0}
    print(f"{'benchmark':15s} {'test images':>11s} {'evaluated':>9s} {'queries':>8s} {'paper':>6s} {'standard':>8s} {'probes':>6s}")
    for name, spec in BENCHMARKS.items():
        bench = load_benchmark(name, root / "datasets", root / "raw", config.image_limit(spec.image_limit), config.seed)
        queries = plan_queries(bench, config, heldout)
        probes = len(plan_probes(bench, config)) if spec.untrained_reference else 0
        images = pd.read_parquet(bench.manifest_path, columns=["image_id"])["image_id"].nunique()
        print(f"{name:15s} {images:11d} {len(bench.image_ids):9d} {len(queries):8d} {int(queries['paper'].sum()):6d} "
              f"{int(queries['standard'].sum()):8d} {probes:6d}")
        totals["trained"] += len(queries)
        totals["untrained"] += len(queries) if spec.untrained_reference else 0
        totals["probes"] += probes
    print(f"outputs per trained checkpoint: {totals['trained']} + {totals['probes']} probes; "
          f"untrained base: {totals['untrained']}; whole job: {2 * (totals['trained'] + totals['probes']) + totals['untrained']}")


if __name__ == "__main__":
    main()
