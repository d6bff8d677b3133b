"""The training run: set up, resume, loop over micro-batches, checkpoint, export.

:func:`train` reads top to bottom as the run does; each piece is a function of its own module
(:mod:`.setup`, :mod:`.data`, :mod:`.step`, :mod:`.checkpoint`, :mod:`.export`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from instructcv_core.training.checkpoint import Position, resume, resume_key, save_checkpoint, truncate_losses
from instructcv_core.training.config import TrainConfig
from instructcv_core.training.data import seeded_generator
from instructcv_core.training.step import DiffusionObjective, train_micro_batch

logger = logging.getLogger("instructcv_core.training")


@dataclass
class TrainResult:
    steps: int  # global optimizer steps reached
    final_loss: float | None
    samples_per_second: float  # this invocation's training loop (all processes)
    seconds: float  # wall clock of this invocation's training loop
    output_dir: str
    pipeline_dir: str
    resumed_from: int | None  # the checkpoint step this invocation resumed from
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class LoopOutcome:
    """What the loop leaves: where it stopped and its throughput."""

    position: Position
    last_loss: float | None
    samples_seen: int
    seconds: float


def train(config: TrainConfig, *, on_log: Callable[[dict], None] | None = None) -> TrainResult:
    """Fine-tune ``config.base_model`` on the manifest; resumes from the last checkpoint in output_dir."""
    from accelerate.utils import set_seed

    from instructcv_core.data.imagestore import ImageStore
    from instructcv_core.model.loading import check_base_source
    from instructcv_core.training import data, recipe, setup
    from instructcv_core.training.checkpoint import last_logged_loss
    from instructcv_core.training.export import save_pipeline
    from instructcv_core.training.mlflow_metrics import MlflowMetrics
    from instructcv_core.training.step import TextEmbeddings

    setup_start = time.monotonic()
    # Fail on a missing base model before touching any data (a cheap check: nothing is loaded).
    check_base_source(config.base_model, config.allow_network)
    output_dir = Path(config.output_dir)
    frame = data.read_manifest(config.manifest, config.tasks)
    store = ImageStore(Path(config.image_store))
    data.check_images(frame, store, config.manifest)

    accelerator = setup.make_accelerator(config)
    # Accumulation from the effective batch and the world size, length from the epochs (training/recipe.py).
    config = recipe.resolve_schedule(config, accelerator.num_processes, len(frame))
    accelerator.gradient_accumulation_steps = config.gradient_accumulation_steps
    set_seed(config.seed)  # global RNGs (nothing below draws from them; every draw has its own generator)
    main = accelerator.is_main_process
    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
    log = logger.info if main else (lambda *_: None)

    # --- Model: the base, conv_in widened to 8 (noisy latent + image condition); only the UNet trains.
    base = setup.load_trainable_base(config)
    frozen = setup.frozen_parts(base, config.mixed_precision, accelerator.device)
    device = frozen.device

    # --- Data: seeded per-epoch permutation; optionally every image pre-encoded once (latent_cache.py).
    latent_cache, cache_built, cache_seconds = None, False, 0.0
    if config.cache_latents:
        latent_cache, cache_built, cache_seconds = _latent_cache(config, frame, store, frozen, accelerator, log)
    pixel_loss = config.objective == "onestep" and config.onestep_loss != "latent"
    dataset = data.PairDataset(frame, store, config.resolution, latent_cache, target_images=pixel_loss)
    loader = data.make_loader(dataset, config.train_batch_size, config.seed, config.dataloader_num_workers)

    optimizer, lr_scheduler, ema = setup.make_optimization(config, base.unet, accelerator.num_processes)
    unet, optimizer, loader, lr_scheduler = accelerator.prepare(base.unet, optimizer, loader, lr_scheduler)
    if ema is not None:
        ema.to(device)
        accelerator.register_for_checkpointing(ema)
    if len(loader) == 0:
        raise ValueError(f"{len(dataset)} training rows give no full batch of {config.train_batch_size} per process "
                         f"x {accelerator.num_processes} processes")
    expected_batches = recipe.batches_per_process(len(dataset), config.train_batch_size, accelerator.num_processes)
    if len(loader) != expected_batches:  # the step arithmetic of the recipe must be the loader's
        raise RuntimeError(f"the data loader gives {len(loader)} micro-batches per process and epoch; the recipe "
                           f"counted {expected_batches} (training/recipe.py no longer matches accelerate's sharding)")

    texts = TextEmbeddings(base.tokenizer, frozen.text_encoder)
    objective = DiffusionObjective.from_config(config, unet, base, frozen, texts)

    # --- Resume: the last complete checkpoint, if any, must belong to the same trajectory.
    key = resume_key(config, accelerator.num_processes)
    position, resumed_from = resume(accelerator, output_dir, key)
    if resumed_from is not None:
        if ema is not None:
            ema.to(device)
        log(f"resuming from step {position.global_step} (epoch {position.epoch}, batch {position.position})")
    losses_path = output_dir / "losses.jsonl"
    if main and resumed_from is not None:
        truncate_losses(losses_path, position.global_step)
    elif main:
        losses_path.unlink(missing_ok=True)  # a fresh start: no losses of an earlier, discarded run
    metrics = MlflowMetrics(config.mlflow_tracking_uri, config.mlflow_run_id) if main and config.mlflow_run_id else None

    def checkpoint(at: Position) -> None:
        save_checkpoint(accelerator, output_dir, at, len(loader), key, config.checkpoints_total_limit)

    def preview(step: int) -> None:
        from instructcv_core.training.export import sample_grid

        sample_grid(accelerator, unet, ema, frozen.vae, frozen.text_encoder, base.tokenizer, base.noise_scheduler,
                    frame, store, config, step, metrics)

    setup_seconds = time.monotonic() - setup_start
    log(f"{len(dataset)} rows, {len(loader)} batches of {config.train_batch_size} per epoch per process, "
        f"{accelerator.num_processes} process(es); setup {setup_seconds:.1f}s; training steps {position.global_step} -> {config.max_steps}")
    outcome = run_loop(config, accelerator, objective, optimizer, lr_scheduler, ema, loader, position,
                       losses_path=losses_path, metrics=metrics, log=log, on_log=on_log, checkpoint=checkpoint,
                       preview=preview)

    # --- Output: the pipeline with the EMA weights, EulerAncestral as the official sampler (one-step:
    # DDIM with trailing spacing, the sampler it was trained for).
    accelerator.wait_for_everyone()
    pipeline_dir = output_dir / "pipeline"
    if main:
        save_pipeline(accelerator.unwrap_model(unet), ema, base.vae, base.text_encoder, base.tokenizer,
                      base.noise_scheduler, pipeline_dir, config.objective)
    samples_per_second = outcome.samples_seen / outcome.seconds if outcome.samples_seen else 0.0
    final_loss = outcome.last_loss if outcome.last_loss is not None else (last_logged_loss(losses_path) if main else None)
    result = TrainResult(
        steps=outcome.position.global_step, final_loss=final_loss, samples_per_second=samples_per_second,
        seconds=outcome.seconds, output_dir=str(output_dir), pipeline_dir=str(pipeline_dir), resumed_from=resumed_from,
        extra={"samples_this_run": outcome.samples_seen, "setup_seconds": setup_seconds, "cache_latents": config.cache_latents,
               "latent_cache": str(latent_cache.path) if latent_cache is not None else None, "latent_cache_built": cache_built,
               "latent_cache_seconds": cache_seconds, "num_processes": accelerator.num_processes, "device": str(device),
               "rows": len(dataset), "epoch": outcome.position.epoch,
               "prediction_type": base.noise_scheduler.config.prediction_type, "objective": config.objective},
    )
    if main:
        from instructcv_core.data.records import atomic_write_text

        atomic_write_text(output_dir / "train_result.json",
                          json.dumps({**result.to_dict(), "config": config.to_dict()}, indent=1, sort_keys=True, default=str))
        if metrics is not None:
            metrics.log({"samples_per_second": samples_per_second,
                         "final_loss": float("nan") if final_loss is None else final_loss}, result.steps)
            metrics.flush()
        log(f"done: step {result.steps}, final loss {final_loss}, {samples_per_second:.1f} samples/s; pipeline in {pipeline_dir}")
    accelerator.wait_for_everyone()
    accelerator.free_memory()
    return result


def run_loop(config: TrainConfig, accelerator, objective: DiffusionObjective, optimizer, lr_scheduler, ema, loader,
             position: Position, *, losses_path: Path, metrics, log: Callable[[str], None],
             on_log: Callable[[dict], None] | None, checkpoint: Callable[[Position], None],
             preview: Callable[[int], None]) -> LoopOutcome:
    """Train from ``position`` until ``max_steps``.

    Per micro-batch: a generator seeded by (seed, global step, micro-batch, process) and one
    :func:`~.step.train_micro_batch`. Per optimizer step: the EMA update, ``losses.jsonl`` (rank 0), MLflow
    metrics, progress every ``log_every`` steps (``on_log``), a checkpoint every ``checkpointing_steps``
    steps and at the end (``checkpoint``), a preview every ``sample_every`` steps (``preview``).
    """
    main = accelerator.is_main_process
    global_step, epoch, pos = position.global_step, position.epoch, position.position
    loop_start = time.monotonic()
    samples_seen, step_losses, last_loss = 0, [], None
    losses_file = open(losses_path, "a") if main else None
    try:
        while global_step < config.max_steps:
            if pos >= len(loader):  # a checkpoint taken at the end of an epoch
                epoch, pos = epoch + 1, 0
            loader.set_epoch(epoch)  # the sampler's permutation for this epoch
            batches = accelerator.skip_first_batches(loader, pos) if pos else loader
            micro = 0
            for batch in batches:
                # Keyed by the micro-batch's index in the optimizer step over all processes (process p's
                # j-th micro-batch is the step's (j x processes + p)-th batch, as accelerate deals them), so
                # N processes draw what one process accumulating N times as many micro-batches draws.
                generator = seeded_generator(config.seed, global_step,
                                             micro * accelerator.num_processes + accelerator.process_index, 0)
                loss = train_micro_batch(accelerator, objective, optimizer, lr_scheduler, batch, generator, config.max_grad_norm)
                pos += 1
                micro += 1
                samples_seen += len(batch["instruction"]) * accelerator.num_processes
                step_losses.append(accelerator.gather(loss.detach()[None]).mean())
                if not accelerator.sync_gradients:
                    continue
                # --- One optimizer step done.
                if ema is not None:
                    ema.step(objective.unet.parameters())
                global_step += 1
                micro = 0
                last_loss = float(torch.stack(step_losses).mean())
                step_losses = []
                lr = lr_scheduler.get_last_lr()[0]
                elapsed = time.monotonic() - loop_start
                if main:
                    losses_file.write(json.dumps({"step": global_step, "loss": last_loss, "lr": lr}) + "\n")
                    losses_file.flush()
                    if metrics is not None:
                        metrics.log({"loss": last_loss, "lr": lr}, global_step)
                done = global_step >= config.max_steps
                if main and (global_step % config.log_every == 0 or done):
                    record = {"step": global_step, "max_steps": config.max_steps, "epoch": epoch, "loss": last_loss,
                              "lr": lr, "seconds": elapsed, "samples_per_second": samples_seen / max(elapsed, 1e-9)}
                    log(f"step {global_step}/{config.max_steps} loss {last_loss:.5f} lr {lr:.2e} "
                        f"{record['samples_per_second']:.1f} samples/s")
                    if metrics is not None:
                        metrics.flush()
                    if on_log is not None:
                        on_log(record)
                if global_step % config.checkpointing_steps == 0 or done:
                    checkpoint(Position(global_step, epoch, pos))
                if config.sample_every and global_step % config.sample_every == 0:
                    preview(global_step)
                if done:
                    break
            else:
                epoch, pos = epoch + 1, 0
    finally:
        if losses_file is not None:
            losses_file.close()
    return LoopOutcome(Position(global_step, epoch, pos), last_loss, samples_seen, time.monotonic() - loop_start)


def _latent_cache(config: TrainConfig, frame, store, frozen, accelerator, log):
    """Every input and target of ``frame`` encoded once (built by rank 0, found by the others):
    ``(cache, built_now, seconds)``."""
    from instructcv_core.training import latent_cache

    start = time.monotonic()
    digests = set(frame["input_digest"]) | set(frame["target_digest"])
    fingerprint = latent_cache.vae_fingerprint(frozen.vae, frozen.weight_dtype)
    with accelerator.main_process_first():  # rank 0 encodes; the others then find its file
        cache, built = latent_cache.build_cache(
            digests, store=store, vae=frozen.vae, resolution=config.resolution,
            cache_dir=Path(config.manifest).resolve().parent / latent_cache.CACHE_FOLDER,
            device=frozen.device, dtype=frozen.weight_dtype, fingerprint=fingerprint, log=log)
    return cache, built, time.monotonic() - start
