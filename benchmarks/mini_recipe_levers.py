"""A lever of the mini fine-tune recipe, measured the way the job's checks measure it.

    # once: the mini data and the base, as the job builds them
    INSTRUCTCV_DATA_ROOT=/tmp/levers .venv/bin/dagster job execute -m pipelines.definitions \\
        -j full_reproduction --op-selection "raw_ade20k,raw_coco,raw_nyuv2,raw_pets,raw_voc,raw_fss1000,\\
    raw_sunrgbd,raw_imagenet_sub,raw_catalog,paraphrase_bank,heldout_instructions,encoded_pairs,\\
    fp_manifest,rp_manifest,test_manifests,base_model"
    # then one run per lever (TrainConfig overrides on top of the mini `train` preset)
    .venv/bin/python benchmarks/mini_recipe_levers.py --data /tmp/levers/mini --name steps1080 \\
        --override '{"max_steps": 1080}' [--benchmarks ade20k coco pets nyuv2]

Trains the FP checkpoint with the training code (`instructcv_core.training.train`, in process) from
the job's base (`<data>/model/base`) on the job's FP manifest, with the mini `train` preset plus the
overrides (a fixed step count: never a wall-clock budget), then evaluates it with the mini sampler
preset on the in-domain test splits exactly as `evaluate_fp` does: the metrics of the standard
protocol with their image counts and 95 % bootstrap intervals (`evaluate_benchmark`) and the
instruction-following probes with the check's bar (`check_instruction_following`: 18 of 20 category
swaps and task switches). Training seconds are this machine's wall clock (a figure, not a budget).
Results also go to ``<out>/<name>/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

IN_DOMAIN = ("ade20k", "coco", "pets", "nyuv2")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the profile folder of a job's data root (<data_root>/mini)")
    parser.add_argument("--name", required=True, help="name of this lever's run (a folder under --out)")
    parser.add_argument("--override", default="{}", help="TrainConfig overrides as JSON, on the mini train preset")
    parser.add_argument("--benchmarks", nargs="+", default=list(IN_DOMAIN))
    parser.add_argument("--out", type=Path, default=Path("/tmp/mini-recipe-levers"))
    args = parser.parse_args(argv)

    import pandas as pd

    from instructcv_core.data.imagestore import ImageStore
    from instructcv_core.data.records import atomic_write_text
    from instructcv_core.evaluation.config import EvalConfig
    from instructcv_core.evaluation.data import load_benchmark
    from instructcv_core.evaluation.instruction_following import check_instruction_following
    from instructcv_core.evaluation.run import evaluate_benchmark
    from instructcv_core.inference.config import SamplerConfig
    from instructcv_core.inference.sampler import InstructCVSampler
    from instructcv_core.presets import resolve
    from instructcv_core.training.config import TrainConfig
    from instructcv_core.training.loop import train

    overrides = json.loads(args.override)
    out = args.out / args.name
    datasets = args.data / "datasets"
    config = resolve(TrainConfig, "mini", "train", {"checkpointing_steps": 100_000, **overrides},
                     base_model=str(args.data / "model" / "base"), manifest=str(datasets / "fp_manifest.parquet"),
                     image_store=str(datasets / "images"), output_dir=str(out / "train"), resolution=64, seed=0)
    start = time.monotonic()
    result = train(config)
    seconds = time.monotonic() - start
    print(f"{args.name}: {result.steps} steps of {config.train_batch_size}, final loss {result.final_loss:.4f}, "
          f"{seconds:.0f} s ({result.samples_per_second:.1f} samples/s)", flush=True)

    sampler_config = resolve(SamplerConfig, "mini", "sampler", {"resolution": 64})
    core = resolve(EvalConfig, "mini", "eval", {}, sampler=sampler_config, seed=0).for_checkpoint("fp")
    cached: dict = {}

    def sampler_factory():
        if "sampler" not in cached:
            cached["sampler"] = InstructCVSampler.from_pretrained(result.pipeline_dir, sampler_config)
        return cached["sampler"]

    outputs = ImageStore(out / "outputs")
    rows = []
    for name in args.benchmarks:
        evaluate_benchmark(name, sampler_factory, args.name, core, datasets, args.data / "raw", out / "eval" / name,
                           outputs, log=lambda *_: None)
        metrics = pd.read_parquet(out / "eval" / name / "metrics.parquet")
        metrics = metrics[metrics["protocol"] == "standard"]
        bench = load_benchmark(name, datasets, args.data / "raw", None, core.seed)
        following = check_instruction_following(bench, sampler_factory, args.name, core, ImageStore(datasets / "images"),
                                                outputs, out / "eval" / name, log=lambda *_: None)
        row = {"benchmark": name,
               "metrics": [{k: getattr(m, k) for k in ("metric", "value", "n", "ci_low", "ci_high")} for m in metrics.itertuples()],
               "swaps": [following["pairs_followed"], following["pairs"]],
               "switches": [following["switch_matched"], following["switch_outputs"]], "follows": following["passed"]}
        rows.append(row)
        shown = "; ".join(f"{m['metric']} {m['value']:.3g} [{m['ci_low']:.3g}, {m['ci_high']:.3g}] n={m['n']}"
                          for m in row["metrics"][:2])
        print(f"  {name}: {shown} | swaps {row['swaps'][0]}/{row['swaps'][1]}, "
              f"task switches {row['switches'][0]}/{row['switches'][1]}", flush=True)
    summary = {"name": args.name, "overrides": overrides, "steps": result.steps, "batch": config.train_batch_size,
               "train_seconds": round(seconds, 1), "final_loss": result.final_loss, "benchmarks": rows}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, default=str))
    return summary


if __name__ == "__main__":
    main()
