"""Choosing the mini one-step fine-tuning recipe: an InstructPix2Pix checkpoint vs its one-step fine-tunes.

    python benchmarks/onestep_recipe.py --data data/mini \\
        --checkpoint data/mini/train/fp/<run>/pipeline --out /tmp/onestep-recipe \\
        --recipes base latent:40:1e-4 pixel_l1:40:1e-4 [--benchmarks ade20k nyuv2 coco pets] [--threads 2]

A recipe is ``base`` (the checkpoint itself) or ``LOSS:STEPS:LR[:KEY=VALUE...]``: the ``mini``
``train_onestep`` preset with that one-step loss, step count and learning rate (and further TrainConfig
overrides, e.g. ``conditioning_dropout=0.05,0.05,0.05``), trained from the checkpoint on the FP
manifest of ``--data`` by the training code (`instructcv_core.training.train`, in process). Every model
is evaluated with the ``one`` sampler (one deterministic DDIM step at t = 999, unguided, 64 px) under
the standard protocol on the in-domain benchmarks (`evaluate_benchmark`); every metric is printed with
its image count and 95 % bootstrap interval. Training seconds are the wall clock of this machine (a
figure, not a budget: the steps are fixed). Results also go to ``<out>/results.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

ONE = dict(steps=1, scheduler="ddim", timestep_spacing="trailing", text_guidance=1.0, image_guidance=1.0,
           resolution=64, batch_size=64)


def parse_recipe(text: str) -> tuple[str, dict]:
    """``base`` -> ("base", {}); ``latent:40:1e-4:use_ema=true`` -> (name, TrainConfig overrides)."""
    if text == "base":
        return "base", {}
    loss, steps, lr, *extra = text.split(":")
    overrides = {"onestep_loss": loss, "max_steps": int(steps), "learning_rate": float(lr)}
    for item in extra:
        key, value = item.split("=", 1)
        overrides[key] = json.loads(f"[{value}]") if "," in value else json.loads(value)
    return text.replace(":", "_").replace("=", "-").replace(",", "-"), overrides


def fine_tune(checkpoint: Path, data: Path, out: Path, overrides: dict) -> tuple[str, dict]:
    from instructcv_core.presets import resolve
    from instructcv_core.training import TrainConfig
    from instructcv_core.training.loop import train

    datasets = data / "datasets"
    config = resolve(TrainConfig, "mini", "train_onestep", overrides, base_model=str(checkpoint),
                     manifest=str(datasets / "fp_manifest.parquet"), image_store=str(datasets / "images"),
                     output_dir=str(out), resolution=64, seed=0)
    start = time.monotonic()
    result = train(config)
    return result.pipeline_dir, {"train_seconds": round(time.monotonic() - start, 1), "final_loss": result.final_loss,
                                 "steps": result.steps, "samples_per_second": round(result.samples_per_second, 1)}


def evaluate(pipeline_dir: str, data: Path, out: Path, benchmarks: list[str]) -> list[dict]:
    from instructcv_core.data.imagestore import ImageStore
    from instructcv_core.evaluation.config import EvalConfig
    from instructcv_core.evaluation.run import evaluate_benchmark
    from instructcv_core.inference.config import SamplerConfig
    from instructcv_core.inference.sampler import InstructCVSampler

    config = EvalConfig(sampler=SamplerConfig(**ONE), protocols=("standard",), max_images=None).for_checkpoint("fp")
    cached = {}

    def factory():
        if "sampler" not in cached:
            cached["sampler"] = InstructCVSampler.from_pretrained(pipeline_dir, config.sampler)
        return cached["sampler"]

    rows = []
    for name in benchmarks:
        result = evaluate_benchmark(name, factory, pipeline_dir, config, data / "datasets", data / "raw", out / name,
                                    ImageStore(out / "outputs"), log=lambda _: None)
        for metric, value in result.metrics["standard"].items():
            interval = result.intervals.get("standard", {}).get(metric)
            rows.append({"benchmark": name, "metric": metric, "value": value,
                         "n": interval.n if interval else None, "ci_low": interval.low if interval else math.nan,
                         "ci_high": interval.high if interval else math.nan,
                         "generation_seconds": result.counts["generation_seconds"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a built mini profile folder (datasets/, raw/)")
    parser.add_argument("--checkpoint", type=Path, required=True, help="the InstructPix2Pix FP pipeline folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--recipes", nargs="+", default=["base", "latent:40:1e-4", "pixel_l1:40:1e-4"])
    parser.add_argument("--benchmarks", nargs="+", default=["ade20k", "nyuv2", "coco", "pets"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for text in args.recipes:
        name, overrides = parse_recipe(text)
        if name in results:
            continue  # measured earlier (the same recipe, data and checkpoint: delete --out to remeasure)
        pipeline_dir, training = (str(args.checkpoint), {}) if name == "base" else \
            fine_tune(args.checkpoint, args.data, args.out / name / "train", overrides)
        rows = evaluate(pipeline_dir, args.data, args.out / name / "eval", args.benchmarks)
        results[name] = {"recipe": text, "training": training, "metrics": rows}
        args.out.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(results, indent=1))
        print(f"## {text} {json.dumps(training)}", flush=True)
        for row in rows:
            print(f"{name:32s} {row['benchmark']:8s} {row['metric']:24s} {row['value']:.4f} "
                  f"[{row['ci_low']:.4f}, {row['ci_high']:.4f}] n={row['n']}", flush=True)


if __name__ == "__main__":
    main()
