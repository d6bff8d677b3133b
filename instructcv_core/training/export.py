"""What a run hands on: the fine-tuned pipeline (EMA weights) and preview grids during training.

The output is the stock ``StableDiffusionInstructPix2PixPipeline``, saved with ``save_pretrained``
(safetensors) to ``output_dir/pipeline``: with EulerAncestral sampling, the official sampler, or, for
a one-step model, DDIM with trailing spacing and ``set_alpha_to_one`` (:func:`onestep_scheduler`), so
the stock pipeline with ``num_inference_steps=1`` runs the single step at t = T - 1 it was trained at
and returns the x0 it predicts.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import torch

from instructcv_core.training.checkpoint import CHECKPOINT_PREFIX


def onestep_scheduler(noise_scheduler):
    """DDIM with the training noise schedule, trailing spacing (1 step: t = T - 1), ``set_alpha_to_one``
    (the step's output is then exactly the predicted x0) and no clipping: the one-step objective's sampler."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(noise_scheduler.config, timestep_spacing="trailing", set_alpha_to_one=True,
                                     clip_sample=False, thresholding=False)


def build_pipeline(unet, vae, text_encoder, tokenizer, noise_scheduler, objective: str = "diffusion"):
    """The stock InstructPix2Pix pipeline around the trained UNet (no safety checker): EulerAncestral
    sampling, or the one-step DDIM scheduler for ``objective="onestep"``."""
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

    if objective == "onestep":
        scheduler = onestep_scheduler(noise_scheduler)
    else:
        scheduler = EulerAncestralDiscreteScheduler.from_config(noise_scheduler.config)
    return StableDiffusionInstructPix2PixPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def save_pipeline(unet, ema, vae, text_encoder, tokenizer, noise_scheduler, pipeline_dir: Path,
                  objective: str = "diffusion") -> None:
    """Save the pipeline with the EMA weights copied into the UNet (then restore the raw weights), atomically."""
    tmp = pipeline_dir.parent / f".tmp-{pipeline_dir.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    if ema is not None:
        ema.store(unet.parameters())
        ema.copy_to(unet.parameters())
    try:
        build_pipeline(unet, vae, text_encoder, tokenizer, noise_scheduler, objective).save_pretrained(
            tmp, safe_serialization=True)
    finally:
        if ema is not None:
            ema.restore(unet.parameters())
    old = pipeline_dir.parent / f".old-{pipeline_dir.name}"
    shutil.rmtree(old, ignore_errors=True)
    if pipeline_dir.exists():
        os.replace(pipeline_dir, old)
    os.replace(tmp, pipeline_dir)
    shutil.rmtree(old, ignore_errors=True)


@torch.no_grad()
def sample_grid(accelerator, unet, ema, vae, text_encoder, tokenizer, noise_scheduler, frame, store, config, step,
                metrics=None) -> Path | None:
    """A preview on fixed rows with the EMA weights: rows input / target / prediction, one column per row.

    Written (rank 0 only) to ``output_dir/samples/step-XXXXXX.png`` and logged to ``metrics`` when given.
    """
    if not accelerator.is_main_process:
        return None
    from PIL import Image

    raw = accelerator.unwrap_model(unet)
    rows = frame.iloc[: config.sample_rows]
    inputs = [Image.fromarray(_rgb(store.get(d))).resize((config.resolution,) * 2) for d in rows["input_digest"]]
    targets = [np.asarray(Image.fromarray(_rgb(store.get(d))).resize((config.resolution,) * 2)) for d in rows["target_digest"]]
    if ema is not None:
        ema.store(raw.parameters())
        ema.copy_to(raw.parameters())
    raw.eval()
    try:
        pipe = build_pipeline(raw, vae, text_encoder, tokenizer, noise_scheduler, config.objective)
        pipe.set_progress_bar_config(disable=True)
        one_step = config.objective == "onestep"  # one unguided step, as trained
        with accelerator.autocast():
            images = pipe(list(rows["instruction"]), image=inputs, num_inference_steps=1 if one_step else config.sample_steps,
                          guidance_scale=1.0 if one_step else 7.5, image_guidance_scale=1.0 if one_step else 1.5,
                          output_type="np",
                          generator=torch.Generator().manual_seed(config.seed)).images
    finally:
        raw.train()
        if ema is not None:
            ema.restore(raw.parameters())
    predictions = [(np.clip(im, 0, 1) * 255).round().astype(np.uint8) for im in images]
    grid = np.concatenate([np.concatenate(list(map(np.asarray, group)), axis=1) for group in (inputs, targets, predictions)], axis=0)
    path = Path(config.output_dir) / "samples" / f"{CHECKPOINT_PREFIX}{step:06d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    if metrics is not None:
        metrics.artifact(path, "samples")
    return path


def _rgb(array: np.ndarray) -> np.ndarray:
    return np.repeat(array[:, :, None], 3, axis=2) if array.ndim == 2 else array[:, :, :3]
