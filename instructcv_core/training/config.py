"""The training stage's config: every knob of a run, its default, its help text and its validation.

YAML/JSON keys are the field names (:func:`load_config`). The profile presets (``mini``, ``paper``)
live in :mod:`instructcv_core.presets`; the Dagster run config is generated from this class.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from instructcv_core.presets import knob

MixedPrecision = Literal["no", "fp16", "bf16"]
MIXED_PRECISION = typing.get_args(MixedPrecision)
#: The `diffusers.optimization.get_scheduler` schedules that need no extra arguments.
#: Plus "exponential": linear warm-up, then exponential decay to 1 % of the peak at max_steps (the
#: schedule of Garcia et al.'s one-step fine-tuning, Marigold's `IterExponential`; `training.setup`).
LrScheduler = Literal["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial",
                      "exponential"]
LR_SCHEDULERS = typing.get_args(LrScheduler)
#: What a run optimises: the InstructPix2Pix diffusion loss, or the one-step prediction (`training.step`).
Objective = Literal["diffusion", "onestep"]
OBJECTIVES = typing.get_args(Objective)
#: The one-step loss: MSE on the x0 latent, or L1 / L2 on the decoded image in [-1, 1].
OnestepLoss = Literal["latent", "pixel_l1", "pixel_l2"]
ONESTEP_LOSSES = typing.get_args(OnestepLoss)

ConvInInit = Literal["zeros", "copy"]
CONV_IN_INITS = typing.get_args(ConvInInit)


@dataclass
class TrainConfig:
    """Everything a training run needs (the InstructPix2Pix recipe's defaults, as the official code).

    A knob whose meaningful value is "none" also takes an explicit value, for run configs that cannot
    say null: ``max_grad_norm=inf`` (no clipping),
    ``checkpoints_total_limit=0`` (keep all); they are normalised to ``None``.
    """

    base_model: str = knob(help="SD-v1.5-layout folder, hub id or single checkpoint file (`model.load_base`).")
    manifest: str = knob(help="Parquet manifest with the columns of `training.data.MANIFEST_COLUMNS`.")
    image_store: str = knob(help="ImageStore root holding the manifest's digests at `resolution`.")
    output_dir: str = knob(help="Folder of the run: checkpoints, losses, samples, the pipeline.")
    resolution: int = knob(256, "Square training resolution in pixels.")
    train_batch_size: int = knob(16, "Micro-batch size per process.")
    gradient_accumulation_steps: int | None = knob(
        None, "Micro-batches per optimizer step (unset: derived from effective_batch_size and the world size, "
              "or 1 without it; `training.recipe`).")
    effective_batch_size: int | None = knob(
        None, "Samples per optimizer step over all processes = train_batch_size x processes x accumulation "
              "(unset: whatever the batch and accumulation give).")
    learning_rate: float = knob(1e-4, "AdamW learning rate (the peak, under a schedule with warm-up).")
    adam_weight_decay: float = knob(1e-2, "AdamW weight decay (torch's default, which the official code uses).")
    lr_scheduler: LrScheduler = knob("constant", "Learning-rate schedule (a `diffusers.optimization.get_scheduler` name).")
    lr_warmup_steps: int = knob(0, "Warm-up steps of the learning-rate schedule.")
    max_grad_norm: float | None = knob(None, "Clip the gradient norm to this (.inf or unset: no clipping, as the official config).")
    max_steps: int | None = knob(1000, "Optimizer steps to train for (a fixed count, never a wall-clock budget: the "
                                       "same config and seed give the same checkpoint; null or 0 with "
                                       "num_train_epochs: derived).")
    num_train_epochs: int | None = knob(None, "Length in epochs over the manifest; max_steps is then derived from "
                                             "the manifest's rows and the effective batch (`training.recipe`).")
    checkpointing_steps: int = knob(500, "Save a resumable checkpoint every N optimizer steps (and at the end).")
    checkpoints_total_limit: int | None = knob(2, "Keep this many newest checkpoints (0: keep all).")
    seed: int = knob(0, "Seeds the data order and every random draw of a micro-batch.")
    mixed_precision: MixedPrecision = knob("no", "Precision of the forward passes: no | fp16 | bf16.")
    gradient_checkpointing: bool = knob(False, "Recompute UNet activations in the backward pass (memory for compute).")
    use_ema: bool = knob(True, "Keep an EMA of the UNet weights; the saved pipeline carries the EMA weights.")
    ema_decay: float = knob(0.9999, "EMA decay (with LitEma's warm-up, min(decay, (1 + n) / (10 + n))).")
    conditioning_dropout: tuple[float, float, float] = knob(
        (0.05, 0.05, 0.05), "Classifier-free-guidance dropout per sample: (text only, both, image only).")
    random_flip: bool = knob(True, "Joint horizontal flip of input and target with p = 0.5.")
    train_timesteps: tuple[int, int] = knob(
        (0, 1000), "Training timesteps are drawn uniformly from [low, high) (official: every timestep). A "
        "narrower high-noise range matches a few-step sampler that starts at pure noise (the mini profile).")
    prediction_type: Literal["epsilon", "v_prediction"] | None = knob(
        None, "Override the base scheduler's prediction type (unset: the base's).")
    objective: Objective = knob(
        "diffusion", "What is trained: `diffusion` (the InstructPix2Pix loss at random timesteps) or `onestep` (one "
        "deterministic step at t = T - 1 from Gaussian noise, a task loss on the x0 it predicts; the pipeline is saved "
        "with a trailing-spacing DDIM scheduler, so one sampling step runs the model as trained).")
    onestep_loss: OnestepLoss = knob(
        "latent", "The one-step loss: `latent` (MSE between x0 and the target's scaled posterior mean), `pixel_l1` or "
        "`pixel_l2` (x0 decoded by the frozen VAE, whose decoder gradients pass through, against the target image).")
    image_conv_in_init: ConvInInit = knob(
        "zeros", "How the image-latent input channels of the widened conv_in start (`model.conv_in.widen_conv_in`): "
        "`zeros` (InstructPix2Pix: no effect at first) or `copy` (Marigold: the pretrained input weights, both halves "
        "halved). Only used when the base UNet has 4 input channels.")
    cache_latents: bool = knob(False, "Encode every input and target once with the frozen VAE (VAE encoding "
                                      "dominates at small resolutions; same statistics).")
    dataloader_num_workers: int = knob(0, "DataLoader worker processes.")
    allow_network: bool = knob(False, "Let model loading download from the Hugging Face hub.")
    log_every: int = knob(10, "Log progress every N optimizer steps.")
    sample_every: int = knob(0, "Save a preview grid of `sample_rows` fixed rows every N steps (0: off).")
    sample_rows: int = knob(4, "Rows of the preview grid.")
    sample_steps: int = knob(20, "Sampling steps of the preview.")
    mlflow_tracking_uri: str | None = knob(None, "MLflow tracking URI of `mlflow_run_id`.")
    mlflow_run_id: str | None = knob(None, "Rank 0 logs metrics to this existing MLflow run when set.")
    tasks: tuple[str, ...] | None = knob(None, "Train only on manifest rows of these tasks (unset: all).")

    def __post_init__(self) -> None:
        self.conditioning_dropout = tuple(float(p) for p in self.conditioning_dropout)
        self.train_timesteps = tuple(int(t) for t in self.train_timesteps)
        if len(self.train_timesteps) != 2 or not 0 <= self.train_timesteps[0] < self.train_timesteps[1]:
            raise ValueError(f"train_timesteps must be [low, high) with 0 <= low < high, got {self.train_timesteps}")
        if self.tasks is not None:
            self.tasks = (self.tasks,) if isinstance(self.tasks, str) else tuple(self.tasks)
        if self.max_grad_norm is not None and math.isinf(self.max_grad_norm):
            self.max_grad_norm = None
        if self.max_steps is None and self.num_train_epochs is None:
            raise ValueError("set max_steps or num_train_epochs (the run's length)")
        if self.checkpoints_total_limit == 0:
            self.checkpoints_total_limit = None
        if len(self.conditioning_dropout) != 3 or min(self.conditioning_dropout) < 0 or sum(self.conditioning_dropout) > 1:
            raise ValueError(f"conditioning_dropout must be 3 probabilities summing to <= 1, got {self.conditioning_dropout}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ValueError(f"lr_scheduler must be one of {LR_SCHEDULERS}, got {self.lr_scheduler!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.onestep_loss not in ONESTEP_LOSSES:
            raise ValueError(f"onestep_loss must be one of {ONESTEP_LOSSES}, got {self.onestep_loss!r}")
        if self.image_conv_in_init not in CONV_IN_INITS:
            raise ValueError(f"image_conv_in_init must be one of {CONV_IN_INITS}, got {self.image_conv_in_init!r}")
        if self.prediction_type not in (None, "epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be epsilon or v_prediction, got {self.prediction_type!r}")
        for name in ("resolution", "train_batch_size", "gradient_accumulation_steps", "checkpointing_steps", "log_every",
                     "effective_batch_size", "num_train_epochs"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "lr_warmup_steps", "sample_every", "dataloader_num_workers"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be > 0 (or .inf for no clipping), got {self.max_grad_norm}")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 0:
            raise ValueError(f"checkpoints_total_limit must be >= 0 (0 keeps all), got {self.checkpoints_total_limit}")
        if not 0 <= self.ema_decay <= 1:
            raise ValueError(f"ema_decay must be in [0, 1], got {self.ema_decay}")
        if self.learning_rate <= 0 or self.adam_weight_decay < 0:
            raise ValueError(f"learning_rate must be > 0 and adam_weight_decay >= 0, got {self.learning_rate}, "
                             f"{self.adam_weight_decay}")

    def to_dict(self) -> dict:
        """Plain values (lists for tuples): what YAML/JSON and :func:`load_config` round-trip."""
        out = dataclasses.asdict(self)
        out["conditioning_dropout"] = list(self.conditioning_dropout)
        out["train_timesteps"] = list(self.train_timesteps)
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
    missing = sorted(f.name for f in dataclasses.fields(TrainConfig)
                     if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in data)
    if missing:
        raise ValueError(f"{path}: missing TrainConfig key(s): {', '.join(missing)}")
    from instructcv_core.presets import refuse_nan

    config = TrainConfig(**data)
    try:
        refuse_nan(config)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return config
