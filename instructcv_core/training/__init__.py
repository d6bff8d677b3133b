"""InstructCV instruction tuning: the InstructPix2Pix recipe on a Stable Diffusion base, with accelerate.

    python -m instructcv_core.training --config cfg.yaml
    accelerate launch [--num_processes N ...] -m instructcv_core.training --config cfg.yaml

What the official code does (reference §2 and §7) and where it is here:

- SD v1.5 base, ``conv_in`` widened 4 -> 8 with the new channels zero; VAE and text encoder frozen;
  only the UNet is optimised, AdamW, constant lr 1e-4 (:mod:`.setup`).
- Loss, conditioning dropout (5% text only, 5% both, 5% image only) and the joint horizontal flip,
  p = 0.5 (:mod:`.step`).
- EMA of the UNet weights, decay 0.9999 with LitEma's warm-up; the saved pipeline carries the EMA
  weights (:mod:`.setup`, :mod:`.export`).

``objective: onestep`` trains the same way for one deterministic sampling step instead (Garcia et al.,
WACV 2025): the UNet once at t = T - 1 from Gaussian noise, a loss on the x0 it predicts (latent, or
through the frozen decoder in pixel space), the pipeline saved with a trailing-spacing DDIM scheduler
(:mod:`.step`, :mod:`.export`).

The pieces: :mod:`.config` (``TrainConfig``, every knob), :mod:`.data` (manifest, images, order,
seeded draws), :mod:`.latent_cache` (images encoded once), :mod:`.setup`, :mod:`.step`,
:mod:`.checkpoint` (checkpoints, the resume key), :mod:`.export` (the pipeline, previews),
:mod:`.loop` (:func:`train`), ``__main__`` (the command line and Dagster Pipes).

Reproducibility: the data order is a permutation seeded by (seed, epoch) and every random draw of a
micro-batch (flip, target posterior sample, noise, timesteps, dropout) comes from a generator seeded
by (seed, global step, micro-batch, process). Nothing depends on RNG state carried between steps, so a
run resumed from a checkpoint draws exactly what the uninterrupted run drew: same losses, same weights.

Layout of ``output_dir``: ``checkpoints/step-XXXXXX/``, ``losses.jsonl`` (step, loss, lr), ``samples/``
(preview grids when ``sample_every``), ``pipeline/`` (the fine-tuned
``StableDiffusionInstructPix2PixPipeline`` with EMA weights) and ``train_result.json``.

Importing this package is cheap (no torch): the modules load what they need.
"""

from instructcv_core.training.config import TrainConfig, load_config

__all__ = ["TrainConfig", "load_config"]
