"""Setting a run up: the accelerator, the base model made trainable, the frozen parts, the optimizer.

- SD v1.5 base (or the tiny one), ``conv_in`` widened 4 -> 8 with the new channels zero
  (`model.widen_conv_in`); VAE and text encoder frozen; only the UNet is optimised, AdamW.
- EMA of the UNet weights with LitEma's warm-up (:func:`make_ema`).
- Frozen models run in the mixed-precision dtype (memory); the fp32 originals are what gets saved.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from instructcv_core.model.loading import MAX_PROMPT_TOKENS, BaseComponents
from instructcv_core.training.config import TrainConfig

WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def make_accelerator(config: TrainConfig):
    """The run's ``Accelerator`` (mixed precision, gradient accumulation; checkpoints named by us)."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    return Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps or 1,  # derived ones are set after (loop.py)
        project_config=ProjectConfiguration(project_dir=str(Path(config.output_dir)), automatic_checkpoint_naming=False),
    )


def load_trainable_base(config: TrainConfig) -> BaseComponents:
    """The base model ready for InstructPix2Pix training: 8-channel ``conv_in``, frozen VAE and text encoder.

    The prediction type is overridden when ``config.prediction_type`` is set; the tokenizer is cut to
    77 tokens (saved with the pipeline, so inference pads alike).
    """
    from instructcv_core.model.conv_in import widen_conv_in
    from instructcv_core.model.loading import load_base

    components = load_base(config.base_model, allow_network=config.allow_network)
    unet, vae, text_encoder, tokenizer = components.unet, components.vae, components.text_encoder, components.tokenizer
    if config.prediction_type is not None:
        components.noise_scheduler.register_to_config(prediction_type=config.prediction_type)
    if unet.config.in_channels == 4:
        widen_conv_in(unet, 8, init=config.image_conv_in_init)  # zeros: training starts from the base's behaviour
    if unet.config.in_channels != 8:
        raise ValueError(f"the base UNet has {unet.config.in_channels} input channels; expected 4 (SD) or 8 (InstructPix2Pix)")
    if tokenizer.model_max_length > MAX_PROMPT_TOKENS:
        tokenizer.model_max_length = MAX_PROMPT_TOKENS
    vae.requires_grad_(False).eval()
    text_encoder.requires_grad_(False).eval()
    unet.train()
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    return components


@dataclass
class FrozenParts:
    """The frozen VAE and text encoder as they run (on the device, in the mixed-precision dtype)."""

    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    weight_dtype: torch.dtype
    device: torch.device


def frozen_parts(components: BaseComponents, mixed_precision: str, device: torch.device) -> FrozenParts:
    """Move the frozen models to ``device``; under mixed precision run cast copies (the originals stay fp32)."""
    dtype = WEIGHT_DTYPES[mixed_precision]

    def run_copy(module):
        return module.to(device) if dtype == torch.float32 else copy.deepcopy(module).to(device, dtype)

    return FrozenParts(run_copy(components.vae), run_copy(components.text_encoder), dtype, device)


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


def make_optimization(config: TrainConfig, unet, num_processes: int):
    """AdamW over the UNet, the learning-rate schedule and (``use_ema``) the EMA: ``(optimizer, lr_scheduler, ema)``.

    The schedule's step counts are multiplied by ``num_processes`` because accelerate steps a prepared
    scheduler once per process.
    """
    from diffusers.optimization import get_scheduler

    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.learning_rate, weight_decay=config.adam_weight_decay)
    warmup, total = config.lr_warmup_steps * num_processes, config.max_steps * num_processes
    if config.lr_scheduler == "exponential":
        lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, exponential_schedule(warmup, total))
    else:
        lr_scheduler = get_scheduler(config.lr_scheduler, optimizer=optimizer, num_warmup_steps=warmup,
                                     num_training_steps=total)
    ema = make_ema(unet, config.ema_decay) if config.use_ema else None
    return optimizer, lr_scheduler, ema


#: Where the "exponential" schedule ends, as a fraction of the peak learning rate.
EXPONENTIAL_FINAL_RATIO = 0.01


def exponential_schedule(warmup_steps: int, total_steps: int, final_ratio: float = EXPONENTIAL_FINAL_RATIO):
    """The learning-rate factor of step n: linear warm-up to 1 over ``warmup_steps``, then exponential decay
    reaching ``final_ratio`` at ``total_steps`` (and staying there): Garcia et al.'s one-step fine-tuning
    schedule (Marigold's ``IterExponential``), which ``diffusers.optimization`` does not offer."""
    import math

    decay_steps = max(1, total_steps - warmup_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / warmup_steps
        return math.exp(min(step - warmup_steps, decay_steps) / decay_steps * math.log(final_ratio))

    return factor
