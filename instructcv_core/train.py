"""InstructCV instruction tuning: the InstructPix2Pix recipe on a Stable Diffusion base, with accelerate.

    python -m instructcv_core.train --config cfg.yaml
    accelerate launch [--num_processes N ...] -m instructcv_core.train --config cfg.yaml

What the official code does (reference §2 and §7) and where it is here:

- SD v1.5 base, ``conv_in`` widened 4 -> 8 with the new channels zero (`model.widen_conv_in`); VAE
  and text encoder frozen; only the UNet is optimised, AdamW, constant lr 1e-4.
- Loss: L2 between the UNet output and the scheduler's target (noise for epsilon, velocity for
  v-prediction) at uniformly drawn timesteps, on ``scaling_factor * z`` with ``z`` drawn from the VAE
  posterior of the target; the UNet input is ``cat(noisy latent, unscaled posterior mode of the input)``.
- Conditioning dropout per sample (5% text only, 5% both, 5% image only); null text = encoder(""),
  null image = zero latent (`apply_conditioning_dropout`).
- EMA of the UNet weights, decay 0.9999 with LitEma's warm-up; the saved pipeline carries the EMA weights.
- Joint horizontal flip of input and target, p = 0.5.

Reproducibility: the data order is a permutation seeded by (seed, epoch) and every random draw of a
micro-batch (flip, target posterior sample, noise, timesteps, dropout) comes from a generator seeded
by (seed, global step, micro-batch, process). Nothing depends on RNG state carried between steps, so a
run resumed from a checkpoint draws exactly what the uninterrupted run drew: same losses, same weights.

Layout of ``output_dir``: ``checkpoints/step-XXXXXX/`` (accelerate state + EMA + ``train_state.json``,
each written to a temporary folder and renamed), ``losses.jsonl`` (step, loss, lr), ``samples/``
(preview grids when ``sample_every``), ``pipeline/`` (the fine-tuned
``StableDiffusionInstructPix2PixPipeline`` with EMA weights) and ``train_result.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger("instructcv_core.train")

MANIFEST_COLUMNS = ("pair_id", "task", "instruction", "input_digest", "target_digest")
MIXED_PRECISION = ("no", "fp16", "bf16")
CHECKPOINT_PREFIX = "step-"
STATE_FILE = "train_state.json"
MAX_PROMPT_TOKENS = 77  # CLIP ViT-L/14's context length, as SD v1.5 and the official code


@dataclass
class TrainConfig:
    """Everything a training run needs; YAML/JSON keys are these field names (`load_config`)."""

    base_model: str  # SD-v1.5-layout folder, hub id or single checkpoint file (`model.load_base`)
    manifest: str  # Parquet manifest with MANIFEST_COLUMNS
    image_store: str  # ImageStore root holding the manifest's digests at `resolution`
    output_dir: str
    resolution: int = 256
    train_batch_size: int = 16  # per process
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    adam_weight_decay: float = 1e-2  # torch AdamW's default, which the official code uses
    lr_scheduler: str = "constant"  # any `diffusers.optimization.get_scheduler` name
    lr_warmup_steps: int = 0
    max_grad_norm: float | None = None  # the official config does not clip
    max_steps: int = 1000  # optimizer steps
    max_seconds: float | None = None  # wall-clock budget of the training loop; stops at whichever comes first
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = 2
    seed: int = 0
    mixed_precision: str = "no"  # "no" | "fp16" | "bf16"
    gradient_checkpointing: bool = False
    use_ema: bool = True
    ema_decay: float = 0.9999
    conditioning_dropout: tuple[float, float, float] = (0.05, 0.05, 0.05)  # (text only, both, image only)
    random_flip: bool = True
    prediction_type: str | None = None  # override the base scheduler's ("epsilon" | "v_prediction")
    cache_latents: bool = False
    dataloader_num_workers: int = 0
    allow_network: bool = False
    log_every: int = 10
    sample_every: int = 0  # 0 = off; else a preview grid of `sample_rows` fixed rows every N steps
    sample_rows: int = 4
    sample_steps: int = 20
    mlflow_tracking_uri: str | None = None
    mlflow_run_id: str | None = None  # rank 0 logs metrics to this existing run when set
    tasks: tuple[str, ...] | None = None  # keep only manifest rows of these tasks (None = all)

    def __post_init__(self) -> None:
        self.conditioning_dropout = tuple(float(p) for p in self.conditioning_dropout)
        if self.tasks is not None:
            self.tasks = (self.tasks,) if isinstance(self.tasks, str) else tuple(self.tasks)
        if len(self.conditioning_dropout) != 3 or min(self.conditioning_dropout) < 0 or sum(self.conditioning_dropout) > 1:
            raise ValueError(f"conditioning_dropout must be 3 probabilities summing to <= 1, got {self.conditioning_dropout}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        if self.prediction_type not in (None, "epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be epsilon or v_prediction, got {self.prediction_type!r}")
        for name in ("resolution", "train_batch_size", "gradient_accumulation_steps", "checkpointing_steps", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0, got {self.max_steps}")

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["conditioning_dropout"] = list(self.conditioning_dropout)
        out["tasks"] = None if self.tasks is None else list(self.tasks)
        return out


def load_config(path: str | Path) -> TrainConfig:
    """A TrainConfig from a YAML (.yaml/.yml) or JSON file; unknown keys are refused by name."""
    path = Path(path)
    text = path.read_text()
    if path.suffix.lower() == ".json":
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of TrainConfig fields")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown TrainConfig key(s): {', '.join(unknown)}")
    return TrainConfig(**data)


@dataclass
class TrainResult:
    steps: int  # global optimizer steps reached
    final_loss: float | None
    samples_per_second: float  # this invocation's training loop (all processes)
    seconds: float  # wall clock of this invocation's training loop
    output_dir: str
    pipeline_dir: str
    resumed_from: int | None  # the checkpoint step this invocation resumed from
    stopped_by: str = "max_steps"  # "max_steps" | "max_seconds"
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------------
# Data


def read_manifest(path: str | Path, tasks: tuple[str, ...] | None = None):
    """The manifest rows to train on (file order), optionally only those of ``tasks``."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    columns = pq.read_schema(path).names
    missing = [c for c in MANIFEST_COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"manifest {path} lacks column(s) {', '.join(missing)}")
    frame = pq.read_table(path, columns=list(MANIFEST_COLUMNS)).to_pandas()
    if tasks is not None:
        frame = frame[frame["task"].isin(tasks)].reset_index(drop=True)
    if frame.empty:
        present = sorted(pq.read_table(path, columns=["task"]).column("task").unique().to_pylist())
        raise ValueError(
            f"manifest {path} has no rows for tasks {list(tasks) if tasks is not None else 'any'} "
            f"(tasks present: {present or 'none'})"
        )
    return frame


class PairDataset(torch.utils.data.Dataset):
    """Manifest rows -> images in [-1, 1] (or their cached latent statistics) and the instruction."""

    def __init__(self, frame, store, resolution: int, latent_cache=None):
        self.rows = frame[list(MANIFEST_COLUMNS)].to_dict("records")
        self.store, self.resolution, self.latent_cache = store, resolution, latent_cache

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        from instructcv_core.latents import load_image

        row = self.rows[index]
        item = {"index": index, "instruction": row["instruction"]}
        if self.latent_cache is not None:  # (2 flips, 2 [mean, std], C, h, w) each
            item["input_stats"] = self.latent_cache[row["input_digest"]]
            item["target_stats"] = self.latent_cache[row["target_digest"]]
        else:
            item["input"] = load_image(self.store, row["input_digest"], self.resolution)
            item["target"] = load_image(self.store, row["target_digest"], self.resolution)
        return item


class EpochPermutationSampler(torch.utils.data.Sampler):
    """A fresh permutation per epoch seeded by (seed, epoch): the data order never depends on RNG state."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:  # accelerate's DataLoaderShard calls this
        self.epoch = epoch

    def __iter__(self):
        return iter(torch.randperm(self.size, generator=seeded_generator(self.seed, "epoch", self.epoch)).tolist())

    def __len__(self) -> int:
        return self.size


def seeded_generator(*keys) -> torch.Generator:
    """A CPU generator seeded from ``keys`` (e.g. (seed, step, micro-batch, rank)) via a SeedSequence."""
    words = [int(k) if isinstance(k, (int, np.integer)) else int.from_bytes(hashlib.sha256(str(k).encode()).digest()[:4], "little") for k in keys]
    seed = int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0] & ((1 << 63) - 1))
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------
# Recipe pieces


def apply_conditioning_dropout(text_emb, image_latents, null_text_emb, probs, generator):
    """InstructPix2Pix classifier-free-guidance dropout, per sample (official `ddpm_edit.get_input`).

    One r ~ U(0, 1) per sample: text is replaced by the null embedding when r < p1 + p2, the image
    latent by zeros when p1 <= r < p1 + p2 + p3 (so p1 text only, p2 both, p3 image only).
    """
    p_text, p_both, p_image = probs
    r = torch.rand(text_emb.shape[0], generator=generator).to(text_emb.device)
    drop_text = r < p_text + p_both
    drop_image = (r >= p_text) & (r < p_text + p_both + p_image)
    text_emb = torch.where(drop_text[:, None, None], null_text_emb.to(text_emb.dtype).expand_as(text_emb), text_emb)
    image_latents = torch.where(drop_image[:, None, None, None], torch.zeros_like(image_latents), image_latents)
    return text_emb, image_latents


class TextEmbeddings:
    """Frozen text-encoder outputs cached per distinct instruction (there are few; encoding is costly on CPU).

    Each prompt is encoded alone, exactly as the diffusers pipeline encodes it (`model.encode_prompt`),
    so an embedding never depends on which other prompts shared its batch. The cache is bounded;
    an evicted prompt is re-encoded to the same values.
    """

    def __init__(self, tokenizer, text_encoder, max_entries: int = 4096):
        self.tokenizer, self.text_encoder, self.max_entries = tokenizer, text_encoder, max_entries
        self.cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> torch.Tensor:
        from instructcv_core.model import encode_prompt

        for prompt in dict.fromkeys(prompts):
            if prompt not in self.cache:
                if len(self.cache) >= self.max_entries:
                    self.cache.pop(next(iter(self.cache)))
                self.cache[prompt] = encode_prompt(self.tokenizer, self.text_encoder, [prompt])[0].float()
        return torch.stack([self.cache[p] for p in prompts])


def make_ema(unet, decay: float):
    """EMA of the UNet weights with the official LitEma warm-up, decay_n = min(decay, (1 + n) / (10 + n)).

    LitEma (CompVis latent-diffusion `ldm/modules/ema.py`, used by InstructCV/InstructPix2Pix) increments
    ``num_updates`` to n = 1, 2, ... before using (1 + n) / (10 + n). diffusers' `EMAModel.get_decay`
    (0.42) computes ``step = optimization_step - update_after_step - 1`` after incrementing
    ``optimization_step`` and, with ``use_ema_warmup=False``, returns ``min((1 + step) / (10 + step), decay)``
    (0 when step <= 0). The default ``update_after_step=0`` is therefore one update behind LitEma (its
    first update copies the weights); ``update_after_step=-1`` makes step = n: exactly LitEma's schedule
    (tested). The official EMA is updated per PyTorch-Lightning batch, i.e. per micro-batch under
    gradient accumulation; here it is updated per optimizer step (diffusers' convention), so with
    accumulation k an equivalent horizon is ``ema_decay ** k``.
    """
    from diffusers.training_utils import EMAModel

    return EMAModel(unet.parameters(), decay=decay, use_ema_warmup=False, update_after_step=-1)


# ------------------------------------------------------------------------------------------------
# Checkpoints


def checkpoint_dirs(output_dir: Path) -> list[Path]:
    """Complete checkpoints (renamed into place only when fully written), oldest first."""
    folder = Path(output_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def _save_checkpoint(accelerator, output_dir: Path, state: dict, total_limit: int | None) -> Path:
    final = Path(output_dir) / "checkpoints" / f"{CHECKPOINT_PREFIX}{state['global_step']:06d}"
    if final.exists():
        return final
    tmp = final.parent / f".tmp-{final.name}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # model, optimizer, lr scheduler, EMA (registered), RNG states
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1, sort_keys=True))
        os.replace(tmp, final)  # atomic: a killed run leaves only a .tmp- folder, ignored and replaced
        if total_limit is not None:
            for old in checkpoint_dirs(output_dir)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _truncate_losses(path: Path, last_step: int) -> None:
    """Keep the losses of steps <= last_step (a killed run may have logged beyond its checkpoint)."""
    from instructcv_core.data.records import atomic_write_text

    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by the kill
            continue
        if entry.get("step", math.inf) <= last_step:
            kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def _last_logged_loss(path: Path) -> float | None:
    if not path.exists():
        return None
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return json.loads(lines[-1])["loss"] if lines else None


# ------------------------------------------------------------------------------------------------
# Logging to MLflow (rank 0)


class _MlflowMetrics:
    """Buffered metric logging into an existing run (does not start, end or change the run's status)."""

    def __init__(self, tracking_uri: str | None, run_id: str):
        from mlflow.tracking import MlflowClient

        self.client, self.run_id, self.buffer = MlflowClient(tracking_uri=tracking_uri), run_id, []

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.buffer += [Metric(key, float(value), now, step) for key, value in metrics.items()]

    def flush(self) -> None:
        for start in range(0, len(self.buffer), 1000):  # MLflow's log_batch limit
            self.client.log_batch(self.run_id, metrics=self.buffer[start : start + 1000])
        self.buffer = []

    def artifact(self, path: Path, artifact_path: str) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path=artifact_path)


# ------------------------------------------------------------------------------------------------
# Training


def train(config: TrainConfig, *, on_log: Callable[[dict], None] | None = None) -> TrainResult:
    """Fine-tune ``config.base_model`` on the manifest; resumes from the last checkpoint in output_dir."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from diffusers.optimization import get_scheduler

    from instructcv_core import model as base_model
    from instructcv_core.data.imagestore import ImageStore
    from instructcv_core.latents import posterior_stats

    setup_start = time.monotonic()
    # Fail on a missing base model before touching any data (a cheap check: nothing is loaded).
    base_model.check_base_source(config.base_model, config.allow_network)
    output_dir = Path(config.output_dir)
    frame = read_manifest(config.manifest, config.tasks)
    store = ImageStore(Path(config.image_store))
    missing = [d for d in dict.fromkeys(list(frame["input_digest"]) + list(frame["target_digest"])) if not store.path(d).is_file()]
    if missing:
        raise FileNotFoundError(f"image store {config.image_store} lacks {len(missing)} image(s) of {config.manifest}, e.g. {missing[0]}")

    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        project_config=ProjectConfiguration(project_dir=str(output_dir), automatic_checkpoint_naming=False),
    )
    set_seed(config.seed)  # global RNGs (nothing below draws from them; every draw has its own generator)
    main = accelerator.is_main_process
    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
    log = logger.info if main else (lambda *_: None)

    # --- Model: the base, conv_in widened to 8 (noisy latent + image condition); only the UNet trains.
    components = base_model.load_base(config.base_model, allow_network=config.allow_network)
    unet, vae, text_encoder, tokenizer = components.unet, components.vae, components.text_encoder, components.tokenizer
    noise_scheduler = components.noise_scheduler
    if config.prediction_type is not None:
        noise_scheduler.register_to_config(prediction_type=config.prediction_type)
    if unet.config.in_channels == 4:
        base_model.widen_conv_in(unet, 8)  # new channels zero: training starts from the base's behaviour
    if unet.config.in_channels != 8:
        raise ValueError(f"the base UNet has {unet.config.in_channels} input channels; expected 4 (SD) or 8 (InstructPix2Pix)")
    if tokenizer.model_max_length > MAX_PROMPT_TOKENS:
        tokenizer.model_max_length = MAX_PROMPT_TOKENS  # saved with the pipeline, so inference pads alike
    vae.requires_grad_(False).eval()
    text_encoder.requires_grad_(False).eval()
    unet.train()
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()

    # Frozen models run in the mixed-precision dtype (memory); the fp32 originals are what gets saved.
    weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[config.mixed_precision]
    device = accelerator.device
    vae_run = vae.to(device) if weight_dtype == torch.float32 else _copy_to(vae, device, weight_dtype)
    text_run = text_encoder.to(device) if weight_dtype == torch.float32 else _copy_to(text_encoder, device, weight_dtype)
    scaling_factor = vae.config.scaling_factor

    # --- Data: seeded per-epoch permutation; optionally every image pre-encoded once (latents.py).
    latent_cache, cache_built, cache_seconds = None, False, 0.0
    if config.cache_latents:
        from instructcv_core import latents

        cache_start = time.monotonic()
        digests = set(frame["input_digest"]) | set(frame["target_digest"])
        fingerprint = latents.vae_fingerprint(vae_run, weight_dtype)
        with accelerator.main_process_first():  # rank 0 encodes; the others then find its file
            latent_cache, cache_built = latents.build_cache(
                digests, store=store, vae=vae_run, resolution=config.resolution,
                cache_dir=Path(config.manifest).resolve().parent / latents.CACHE_FOLDER,
                device=device, dtype=weight_dtype, fingerprint=fingerprint, log=log)
        cache_seconds = time.monotonic() - cache_start
    dataset = PairDataset(frame, store, config.resolution, latent_cache)
    sampler = EpochPermutationSampler(len(dataset), config.seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=config.train_batch_size, sampler=sampler, drop_last=True,
                                         num_workers=config.dataloader_num_workers)

    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.learning_rate, weight_decay=config.adam_weight_decay)
    lr_scheduler = get_scheduler(config.lr_scheduler, optimizer=optimizer,
                                 num_warmup_steps=config.lr_warmup_steps * accelerator.num_processes,
                                 num_training_steps=config.max_steps * accelerator.num_processes)
    ema = make_ema(unet, config.ema_decay) if config.use_ema else None
    unet, optimizer, loader, lr_scheduler = accelerator.prepare(unet, optimizer, loader, lr_scheduler)
    if ema is not None:
        ema.to(device)
        accelerator.register_for_checkpointing(ema)
    if len(loader) == 0:
        raise ValueError(f"{len(dataset)} training rows give no full batch of {config.train_batch_size} per process "
                         f"x {accelerator.num_processes} processes")

    texts = TextEmbeddings(tokenizer, text_run)
    null_text = texts([""])  # the null prompt of classifier-free guidance, CLIP("") in the official code

    # --- Resume: the last complete checkpoint, if any, must belong to the same run configuration.
    resume_key = {
        "seed": config.seed, "train_batch_size": config.train_batch_size, "num_processes": accelerator.num_processes,
        "gradient_accumulation_steps": config.gradient_accumulation_steps, "learning_rate": config.learning_rate,
        "use_ema": config.use_ema, "conditioning_dropout": list(config.conditioning_dropout),
        "random_flip": config.random_flip, "resolution": config.resolution, "tasks": config.to_dict()["tasks"],
        "rows": hashlib.sha256("\n".join(frame["pair_id"]).encode()).hexdigest(),
    }
    global_step, epoch, position, resumed_from = 0, 0, 0, None
    losses_path = output_dir / "losses.jsonl"
    checkpoints = checkpoint_dirs(output_dir)
    if checkpoints:
        state = json.loads((checkpoints[-1] / STATE_FILE).read_text())
        changed = sorted(k for k in resume_key if state.get("resume_key", {}).get(k) != resume_key[k])
        if changed:
            raise ValueError(f"{checkpoints[-1]} was written by a run with different {', '.join(changed)}; "
                             f"use another output_dir or delete {output_dir / 'checkpoints'} to start over")
        accelerator.load_state(str(checkpoints[-1]))
        if ema is not None:
            ema.to(device)
        global_step, epoch, position = state["global_step"], state["epoch"], state["position"]
        resumed_from = global_step
        log(f"resuming from {checkpoints[-1]} (step {global_step}, epoch {epoch}, batch {position})")
    if main and checkpoints:
        _truncate_losses(losses_path, global_step)
    elif main:
        losses_path.unlink(missing_ok=True)  # a fresh start: no losses of an earlier, discarded run
    metrics = _MlflowMetrics(config.mlflow_tracking_uri, config.mlflow_run_id) if main and config.mlflow_run_id else None

    def micro_batch_loss(batch, generator) -> torch.Tensor:
        """The conditional latent-diffusion loss of one micro-batch; draws in a fixed order from ``generator``."""
        n = len(batch["instruction"])
        flip = torch.rand(n, generator=generator) < 0.5  # drawn even when flips are off: same stream
        if not config.random_flip:
            flip = torch.zeros_like(flip)
        if latent_cache is not None:
            rows = torch.arange(n)
            input_stats = batch["input_stats"][rows, flip.long()].to(device)  # (n, 2, C, h, w)
            target_stats = batch["target_stats"][rows, flip.long()].to(device)
            image_latents, target_mean, target_std = input_stats[:, 0], target_stats[:, 0], target_stats[:, 1]
        else:
            # One joint horizontal flip of input and target, then one VAE pass over both.
            pair = torch.cat([batch["input"], batch["target"]]).to(device)
            pair = torch.where(torch.cat([flip, flip]).to(device)[:, None, None, None], pair.flip(-1), pair)
            mean, std = posterior_stats(vae_run, pair.to(weight_dtype))
            image_latents, target_mean, target_std = mean[:n].float(), mean[n:].float(), std[n:].float()
        # Target latent: a posterior sample (mean + std * eps, as latent_dist.sample()), scaled.
        eps = torch.randn(target_mean.shape, generator=generator).to(device)
        latents = (target_mean + target_std * eps) * scaling_factor
        # Image condition: the posterior mode, unscaled (the official code's encode_first_stage(...).mode()).
        image_latents = image_latents.float()
        noise = torch.randn(latents.shape, generator=generator).to(device)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (n,), generator=generator).to(device)
        text_emb, image_latents = apply_conditioning_dropout(texts(batch["instruction"]), image_latents, null_text,
                                                             config.conditioning_dropout, generator)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        if noise_scheduler.config.prediction_type == "epsilon":
            target = noise
        else:  # v_prediction
            target = noise_scheduler.get_velocity(latents, noise, timesteps)
        pred = unet(torch.cat([noisy, image_latents], dim=1), timesteps, encoder_hidden_states=text_emb).sample
        return F.mse_loss(pred.float(), target.float(), reduction="mean")

    setup_seconds = time.monotonic() - setup_start
    log(f"{len(dataset)} rows, {len(loader)} batches of {config.train_batch_size} per epoch per process, "
        f"{accelerator.num_processes} process(es); setup {setup_seconds:.1f}s; training steps {global_step} -> {config.max_steps}")
    loop_start = time.monotonic()
    samples_seen, step_losses, stopped_by, last_loss = 0, [], "max_steps", None
    losses_file = open(losses_path, "a") if main else None
    try:
        while global_step < config.max_steps and stopped_by == "max_steps":
            if position >= len(loader):  # a checkpoint taken at the end of an epoch
                epoch, position = epoch + 1, 0
            loader.set_epoch(epoch)  # the sampler's permutation for this epoch
            batches = accelerator.skip_first_batches(loader, position) if position else loader
            micro = 0
            for batch in batches:
                generator = seeded_generator(config.seed, global_step, micro, accelerator.process_index)
                with accelerator.accumulate(unet):
                    loss = micro_batch_loss(batch, generator)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and config.max_grad_norm is not None:
                        accelerator.clip_grad_norm_(unet.parameters(), config.max_grad_norm)
                    optimizer.step()
                    lr_scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                position += 1
                micro += 1
                samples_seen += len(batch["instruction"]) * accelerator.num_processes
                step_losses.append(accelerator.gather(loss.detach()[None]).mean())
                if not accelerator.sync_gradients:
                    continue
                # --- One optimizer step done.
                if ema is not None:
                    ema.step(unet.parameters())
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
                out_of_time = config.max_seconds is not None and elapsed >= config.max_seconds
                done = global_step >= config.max_steps or out_of_time
                if main and (global_step % config.log_every == 0 or done):
                    record = {"step": global_step, "max_steps": config.max_steps, "epoch": epoch, "loss": last_loss,
                              "lr": lr, "seconds": elapsed, "samples_per_second": samples_seen / max(elapsed, 1e-9)}
                    log(f"step {global_step}/{config.max_steps} loss {last_loss:.5f} lr {lr:.2e} "
                        f"{record['samples_per_second']:.1f} samples/s")
                    if metrics is not None:
                        metrics.flush()
                    if on_log is not None:
                        on_log(record)
                state = {"global_step": global_step, "epoch": epoch, "position": position,
                         "batches_per_epoch": len(loader), "resume_key": resume_key}
                if global_step % config.checkpointing_steps == 0 or done:
                    _save_checkpoint(accelerator, output_dir, state, config.checkpoints_total_limit)
                if config.sample_every and global_step % config.sample_every == 0:
                    _sample_grid(accelerator, unet, ema, vae_run, text_run, tokenizer, noise_scheduler, frame, store,
                                 config, global_step, metrics)
                if out_of_time and global_step < config.max_steps:
                    stopped_by = "max_seconds"
                if done:
                    break
            else:
                epoch, position = epoch + 1, 0
    finally:
        if losses_file is not None:
            losses_file.close()
    train_seconds = time.monotonic() - loop_start

    # --- Output: the pipeline with the EMA weights, EulerAncestral as the official sampler.
    accelerator.wait_for_everyone()
    pipeline_dir = output_dir / "pipeline"
    if main:
        _save_pipeline(accelerator.unwrap_model(unet), ema, vae, text_encoder, tokenizer, noise_scheduler, pipeline_dir)
    samples_per_second = samples_seen / train_seconds if samples_seen else 0.0
    final_loss = last_loss if last_loss is not None else (_last_logged_loss(losses_path) if main else None)
    result = TrainResult(
        steps=global_step, final_loss=final_loss, samples_per_second=samples_per_second, seconds=train_seconds,
        output_dir=str(output_dir), pipeline_dir=str(pipeline_dir), resumed_from=resumed_from, stopped_by=stopped_by,
        extra={"samples_this_run": samples_seen, "setup_seconds": setup_seconds, "cache_latents": config.cache_latents,
               "latent_cache": str(latent_cache.path) if latent_cache is not None else None, "latent_cache_built": cache_built,
               "latent_cache_seconds": cache_seconds, "num_processes": accelerator.num_processes, "device": str(device),
               "rows": len(dataset), "epoch": epoch, "prediction_type": noise_scheduler.config.prediction_type},
    )
    if main:
        from instructcv_core.data.records import atomic_write_text

        atomic_write_text(output_dir / "train_result.json",
                          json.dumps({**result.to_dict(), "config": config.to_dict()}, indent=1, sort_keys=True, default=str))
        if metrics is not None:
            metrics.log({"samples_per_second": samples_per_second,
                         "final_loss": float("nan") if final_loss is None else final_loss}, global_step)
            metrics.flush()
        log(f"done: step {global_step}, final loss {final_loss}, {samples_per_second:.1f} samples/s; pipeline in {pipeline_dir}")
    accelerator.wait_for_everyone()
    accelerator.free_memory()
    return result


def _copy_to(module, device, dtype):
    import copy

    return copy.deepcopy(module).to(device, dtype)


def build_pipeline(unet, vae, text_encoder, tokenizer, noise_scheduler):
    """The stock InstructPix2Pix pipeline around the trained UNet (EulerAncestral sampling, no safety checker)."""
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

    return StableDiffusionInstructPix2PixPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=EulerAncestralDiscreteScheduler.from_config(noise_scheduler.config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def _save_pipeline(unet, ema, vae, text_encoder, tokenizer, noise_scheduler, pipeline_dir: Path) -> None:
    """Save the pipeline with the EMA weights copied into the UNet (then restore the raw weights), atomically."""
    tmp = pipeline_dir.parent / f".tmp-{pipeline_dir.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    if ema is not None:
        ema.store(unet.parameters())
        ema.copy_to(unet.parameters())
    try:
        build_pipeline(unet, vae, text_encoder, tokenizer, noise_scheduler).save_pretrained(tmp, safe_serialization=True)
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
def _sample_grid(accelerator, unet, ema, vae, text_encoder, tokenizer, noise_scheduler, frame, store, config, step, metrics):
    """A preview on fixed rows with the EMA weights: rows input / target / prediction, one column per row."""
    if not accelerator.is_main_process:
        return
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
        pipe = build_pipeline(raw, vae, text_encoder, tokenizer, noise_scheduler)
        pipe.set_progress_bar_config(disable=True)
        with accelerator.autocast():
            images = pipe(list(rows["instruction"]), image=inputs, num_inference_steps=config.sample_steps,
                          guidance_scale=7.5, image_guidance_scale=1.5, output_type="np",
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


def _rgb(array: np.ndarray) -> np.ndarray:
    return np.repeat(array[:, :, None], 3, axis=2) if array.ndim == 2 else array[:, :, :3]


# ------------------------------------------------------------------------------------------------
# Command line (and Dagster Pipes on rank 0)


def _is_rank_zero() -> bool:
    return all(os.environ.get(var, "0") == "0" for var in ("RANK", "LOCAL_RANK"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m instructcv_core.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="TrainConfig as YAML or JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    config = load_config(args.config)

    # Only rank 0 talks to Dagster: every rank opening Pipes would report duplicate messages.
    if not (os.environ.get("DAGSTER_PIPES_CONTEXT") and _is_rank_zero()):
        train(config)
        return 0
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        def on_log(record: dict) -> None:
            pipes.log.info(f"step {record['step']}/{record['max_steps']}: loss {record['loss']:.5f}, "
                           f"lr {record['lr']:.2e}, {record['samples_per_second']:.1f} samples/s")

        result = train(config, on_log=on_log)
        pipes.report_asset_materialization(metadata={
            "steps": result.steps,
            "samples_per_second": result.samples_per_second,
            "final_loss": result.final_loss,
            "checkpoint_path": {"raw_value": result.pipeline_dir, "type": "path"},
            "resumed_from": result.resumed_from,
            "stopped_by": result.stopped_by,
        })
    return 0


if __name__ == "__main__":
    # Run the importable module's main: objects accelerate pickles into checkpoints then name
    # `instructcv_core.train`, not `__main__`, and load from any entry point.
    from instructcv_core.train import main as _main

    sys.exit(_main())
