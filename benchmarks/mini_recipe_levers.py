"""A lever of the mini fine-tune recipe, measured the way the job's checks measure it.

    # once: the mini data and the base, as the job builds them
    INSTRUCTCV_DATA_ROOT=/tmp/levers .venv/bin/dagster job execute -m pipelines.definitions \\
        -j full_reproduction --op-selection "raw_ade20k,raw_coco,raw_nyuv2,raw_pets,raw_voc,raw_fss1000,\\
    raw_sunrgbd,raw_imagenet_sub,raw_catalog,paraphrase_bank,heldout_instructions,encoded_pairs,\\
    fp_manifest,rp_manifest,test_manifests,base_model"
    # then one run per lever (TrainConfig overrides on top of the mini `train` preset)
    .venv/bin/python benchmarks/mini_recipe_levers.py --data /tmp/levers/mini --name steps1080 \\
        --override '{"max_steps": 1080}' [--benchmarks ade20k coco pets nyuv2] [--experiment zeros-input]

Four levers are not knobs of the project and exist here only, as experiments (``--experiment``,
repeatable; the first three patch training and sampling alike, the fourth changes the manifest):

* ``zeros-input``: the latent the UNet sees at t = 999 is zeros instead of Gaussian noise, in training
  and in the one-step sampler (Garcia et al., WACV 2025, use zeros): a deterministic
  regression of the target from the image and the instruction.
* ``skip-top-self-attention``: the self-attention of the UNet's top (16x16) level returns 0 (its
  residual branch is skipped), the pretrained weights otherwise unchanged; the cross-attention there
  runs through diffusers' classic ``AttnProcessor`` (faster than torch's CPU flash kernel on 4-dim
  heads). A training step of batch 32 in the loop takes 0.38 s instead of 0.62 s here
  (docs/benchmarks.md); the experiment asks what the fine-tune loses without the layer.
* ``image-as-sample`` (``--feature-timestep``; needs ``"objective": "onestep", "onestep_loss":
  "latent"`` in ``--override``): the image latent enters through the pretrained input channels as the
  UNet's sample at that timestep (the noise channels start at zero), and the x0 the base would denoise
  it to is regressed onto the target, in training and in the one-step sampler: the base reads a clean
  image with its denoising features (as Lotus and GenPercept do).
* ``absent-categories``: the FP manifest plus, per segmentation and detection image, one seeded
  category of the same benchmark absent from it, with its empty target (a black mask, written to the
  job's image store; the input without boxes), as the standard protocol's test queries ask.

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
#: Experiments that patch the training step, the sampler or the UNet class (`apply_experiment`).
PATCH_EXPERIMENTS = ("zeros-input", "skip-top-self-attention", "image-as-sample")
#: Every experiment: the patches and the manifest change (`absent_category_manifest`).
EXPERIMENTS = (*PATCH_EXPERIMENTS, "absent-categories")


def apply_experiment(name: str, feature_timestep: int = 400) -> None:
    """Patch the training step and the sampler (or the UNet class) for the experiment ``name``
    (``feature_timestep``: the timestep of ``image-as-sample``)."""
    import types

    import torch

    if name == "zeros-input":
        from instructcv_core.inference import sampler
        from instructcv_core.training import step

        class ZerosForRandn(types.ModuleType):
            """``torch`` as the two modules see it, except that ``randn`` gives zeros: the noisy input at
            t = 999 (and, in training, the posterior draw: the target is then the posterior mean)."""

            def __getattr__(self, attr):
                return getattr(torch, attr)

            @staticmethod
            def randn(*args, generator=None, **kwargs):
                return torch.zeros(*args, **kwargs)

        step.torch = sampler.torch = ZerosForRandn("torch")
    elif name == "skip-top-self-attention":
        from diffusers import UNet2DConditionModel
        from diffusers.models.attention_processor import AttnProcessor

        class Skip:
            def __call__(self, attn, hidden_states, *args, **kwargs):
                return torch.zeros_like(hidden_states)

        forward = UNet2DConditionModel.forward

        def patched(self, *args, **kwargs):
            if not getattr(self, "_top_self_attention_skipped", False):
                for blocks in (self.down_blocks[0].attentions, self.up_blocks[-1].attentions):
                    for transformer in blocks:
                        for block in transformer.transformer_blocks:
                            block.attn1.set_processor(Skip())
                            block.attn2.set_processor(AttnProcessor())
                self._top_self_attention_skipped = True
            return forward(self, *args, **kwargs)

        UNet2DConditionModel.forward = patched
    elif name == "image-as-sample":
        import torch.nn.functional as F

        from instructcv_core.inference.sampler import InstructCVSampler
        from instructcv_core.model import conv_in
        from instructcv_core.training.step import DiffusionObjective, predicted_x0

        zeros_widen = conv_in.widen_conv_in

        def widen(unet, in_channels=8, init="zeros"):
            """The image channels (4-7) read through the pretrained input layer; the noise channels start at 0."""
            pretrained = unet.conv_in.weight.detach().clone()
            zeros_widen(unet, in_channels, "zeros")
            with torch.no_grad():
                unet.conv_in.weight.zero_()
                unet.conv_in.weight[:, pretrained.shape[1]:].copy_(pretrained)
            return unet

        conv_in.widen_conv_in = widen

        def x0_from_image(unet, scheduler, image_latents, text, scaling):
            """x0 the base would denoise to, were the (scaled) image latent its sample at the feature timestep."""
            z = image_latents.float() * scaling
            t = torch.full((len(z),), feature_timestep, dtype=torch.long, device=z.device)
            pred = unet(torch.cat([torch.zeros_like(z), z], dim=1).to(unet.dtype), t, encoder_hidden_states=text).sample
            return predicted_x0(scheduler, pred, z, t)

        def onestep_loss(self, batch, flip, image_latents, target_mean, generator):
            x0 = x0_from_image(self.unet, self.noise_scheduler, image_latents, self.texts(batch["instruction"]),
                               self.scaling_factor)
            return F.mse_loss(x0, target_mean.float() * self.scaling_factor, reduction="mean")

        DiffusionObjective._onestep_loss = onestep_loss

        @torch.no_grad()
        def denoise(self, requests, images):
            scheduler = self._scheduler_cls.from_config(self._scheduler_config)
            image_latents = self.image_latents([r.image_key for r in requests], images)
            text = self.text_embeddings([r.instruction for r in requests])
            return x0_from_image(self.unet, scheduler, image_latents, text, self.vae.config.scaling_factor).to(self.dtype)

        InstructCVSampler.denoise = denoise
    else:
        raise ValueError(f"unknown patch experiment {name!r}; choose from {', '.join(PATCH_EXPERIMENTS)}")


def absent_category_manifest(manifest: Path, store: Path, out: Path, seed: int = 0) -> Path:
    """``manifest`` plus one absent category per segmentation/detection image, written to ``out``."""
    import hashlib

    import numpy as np
    import pandas as pd

    from instructcv_core.construction.manifest import write_table_frame
    from instructcv_core.data.imagestore import ImageStore
    from instructcv_core.instructions.templates import FP_TEMPLATES, render
    from instructcv_core.tasks.category_names import prompt_name

    frame, images, rows = pd.read_parquet(manifest), ImageStore(store), []
    for task in ("segmentation", "detection"):
        pairs = frame[frame["task"] == task]
        names = sorted(pairs["category"].unique())
        for image_id, asked in pairs.groupby("image_id", sort=True):
            absent = [c for c in names if c not in set(asked["category"])]
            if not absent:
                continue
            rng = np.random.default_rng([seed, int(hashlib.sha256(f"{task}|{image_id}".encode()).hexdigest()[:8], 16)])
            category, first = absent[int(rng.integers(len(absent)))], asked.iloc[0]
            if task == "segmentation":
                target = images.put(np.zeros_like(images.get(first["target_digest"])))
            else:
                target = first["input_digest"]
            text = prompt_name(first["dataset"], category)
            rows.append({**first.to_dict(), "pair_id": f"absent-{task}-{image_id}", "category": category,
                         "category_text": text, "instruction": render(FP_TEMPLATES[task], category=text),
                         "target_digest": target, "boxes": []})
    return write_table_frame(pd.concat([frame, pd.DataFrame(rows)], ignore_index=True), out)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the profile folder of a job's data root (<data_root>/mini)")
    parser.add_argument("--name", required=True, help="name of this lever's run (a folder under --out)")
    parser.add_argument("--override", default="{}", help="TrainConfig overrides as JSON, on the mini train preset")
    parser.add_argument("--base", type=Path, default=None,
                        help="an assembled base folder to fine-tune (default: the job's, <data>/model/base); e.g. a "
                             "`pretrain_mini build --out X` folder put through `pretrain_mini.assemble_base`")
    parser.add_argument("--benchmarks", nargs="+", default=list(IN_DOMAIN))
    parser.add_argument("--out", type=Path, default=Path("/tmp/mini-recipe-levers"))
    parser.add_argument("--experiment", choices=EXPERIMENTS, action="append", default=[],
                        help="a lever that is not a project knob (see the module docstring); repeatable")
    parser.add_argument("--feature-timestep", type=int, default=400,
                        help="image-as-sample: the timestep at which the image latent is the UNet's sample")
    args = parser.parse_args(argv)
    for name in args.experiment:
        if name in PATCH_EXPERIMENTS:
            apply_experiment(name, args.feature_timestep)

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
    manifest = datasets / "fp_manifest.parquet"
    if "absent-categories" in args.experiment:
        manifest = absent_category_manifest(manifest, datasets / "images", out / "fp_manifest_absent.parquet")
    config = resolve(TrainConfig, "mini", "train", {"checkpointing_steps": 100_000, **overrides},
                     base_model=str(args.base or args.data / "model" / "base"), manifest=str(manifest),
                     image_store=str(datasets / "images"), output_dir=str(out / "train"), resolution=64, seed=0)
    if "image-as-sample" in args.experiment and (config.objective, config.onestep_loss) != ("onestep", "latent"):
        parser.error("--experiment image-as-sample trains the one-step latent loss: add "
                     '"objective": "onestep", "onestep_loss": "latent" to --override')
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
    summary = {"name": args.name, "overrides": overrides, "experiments": args.experiment, "steps": result.steps,
               "batch": config.train_batch_size,
               "train_seconds": round(seconds, 1), "final_loss": result.final_loss, "benchmarks": rows}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, default=str))
    return summary


if __name__ == "__main__":
    main()
