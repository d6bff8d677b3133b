"""Stand-ins for the released InstructCV weights, built offline: a tiny randomly initialised
`StableDiffusionInstructPix2PixPipeline` in the released layout (CLIP text encoder and tokenizer, an
AutoencoderKL, an 8-channel UNet, epsilon prediction) saved with `save_pretrained`, and the same
weights as one original (latent-diffusion layout) checkpoint file, as the official training code
writes them (`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.transformer.*`)."""

from __future__ import annotations

from pathlib import Path

RES = 32


def build_released_folder(out: Path) -> Path:
    """A tiny InstructPix2Pix pipeline in the released layout at ``out`` (seeded; image channels of
    conv_in random, so the input image matters)."""
    import torch

    from instructcv_core.model.config import TinyModelConfig
    from instructcv_core.model.conv_in import widen_conv_in
    from instructcv_core.model.loading import load_base
    from instructcv_core.model.tiny_base import build_tiny_base
    from instructcv_core.training.export import build_pipeline

    config = TinyModelConfig(image_size=RES, vae_block_out_channels=(8, 16, 16), unet_block_out_channels=(16, 32),
                             text_encoder="clip", prediction_type="epsilon", seed=3)
    base = load_base(str(build_tiny_base(config, out.parent / f"{out.name}-base")))
    unet = widen_conv_in(base.unet, 8)
    with torch.no_grad():
        unet.conv_in.weight[:, 4:].normal_(0, 0.2, generator=torch.Generator().manual_seed(1))
    build_pipeline(unet, base.vae, base.text_encoder, base.tokenizer, base.noise_scheduler).save_pretrained(
        out, safe_serialization=True)
    return out


def original_layout(pipe, ema_offset: float | None = None) -> dict:
    """The pipeline's UNet, VAE and CLIP text encoder as one latent-diffusion state dict (the inverse of
    diffusers' `convert_ldm_*_checkpoint`). With ``ema_offset``, also `model_ema.*` copies of the UNet
    weights shifted by it, as a training checkpoint with EMA holds them."""
    unet, vae, text = pipe.unet, pipe.vae, pipe.text_encoder
    state = {f"model.diffusion_model.{_unet_key(k, unet.config)}": v for k, v in unet.state_dict().items()}
    if ema_offset is not None:
        for key, value in list(state.items()):
            flat = "model_ema." + "".join(key.split(".")[1:])
            state[flat] = value + ema_offset
    state.update({f"first_stage_model.{_vae_key(k, vae.config)}": _vae_value(k, v) for k, v in vae.state_dict().items()})
    prefix = "cond_stage_model.transformer." + ("" if hasattr(text, "text_model") else "text_model.")
    state.update({prefix + k: v for k, v in text.state_dict().items()})
    return {k: v.contiguous().clone() for k, v in state.items()}


def _replace_resnet(rest: str) -> str:
    return (rest.replace("norm1", "in_layers.0").replace("conv1", "in_layers.2").replace("norm2", "out_layers.0")
            .replace("conv2", "out_layers.3").replace("time_emb_proj", "emb_layers.1")
            .replace("conv_shortcut", "skip_connection"))


def _unet_key(key: str, config) -> str:
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    for old, new in fixed.items():
        if key.startswith(old + "."):
            return new + key[len(old):]
    parts = key.split(".")
    per = config.layers_per_block + 1  # LDM slots per level: the layers and a down/upsampler
    if parts[0] == "down_blocks":
        block, kind = int(parts[1]), parts[2]
        if kind == "downsamplers":  # down_blocks.i.downsamplers.0.conv.* -> input_blocks.n.0.op.*
            return f"input_blocks.{1 + block * per + config.layers_per_block}.0.op." + ".".join(parts[5:])
        slot = 1 + block * per + int(parts[3])
        rest = ".".join(parts[4:])
        return f"input_blocks.{slot}.0.{_replace_resnet(rest)}" if kind == "resnets" else f"input_blocks.{slot}.1.{rest}"
    if parts[0] == "mid_block":
        index = int(parts[2])
        rest = ".".join(parts[3:])
        return f"middle_block.{2 * index}.{_replace_resnet(rest)}" if parts[1] == "resnets" else f"middle_block.1.{rest}"
    if parts[0] == "up_blocks":
        block, kind = int(parts[1]), parts[2]
        if kind == "upsamplers":  # after the attention when the level has one
            has_attention = "CrossAttn" in config.up_block_types[block]
            return f"output_blocks.{block * per + config.layers_per_block}.{2 if has_attention else 1}.conv." + ".".join(parts[5:])
        slot = block * per + int(parts[3])
        rest = ".".join(parts[4:])
        return f"output_blocks.{slot}.0.{_replace_resnet(rest)}" if kind == "resnets" else f"output_blocks.{slot}.1.{rest}"
    raise KeyError(f"no latent-diffusion name for UNet key {key}")


def _vae_key(key: str, config) -> str:
    renames = {"encoder.conv_norm_out": "encoder.norm_out", "decoder.conv_norm_out": "decoder.norm_out"}
    for old, new in renames.items():
        if key.startswith(old + "."):
            return new + key[len(old):]
    parts = key.split(".")
    if parts[1] == "down_blocks":
        if parts[3] == "downsamplers":
            return f"encoder.down.{parts[2]}.downsample." + ".".join(parts[5:])
        return f"encoder.down.{parts[2]}.block.{parts[4]}." + ".".join(parts[5:]).replace("conv_shortcut", "nin_shortcut")
    if parts[1] == "up_blocks":
        level = len(config.up_block_types) - 1 - int(parts[2])
        if parts[3] == "upsamplers":
            return f"decoder.up.{level}.upsample." + ".".join(parts[5:])
        return f"decoder.up.{level}.block.{parts[4]}." + ".".join(parts[5:]).replace("conv_shortcut", "nin_shortcut")
    if len(parts) > 2 and parts[1] == "mid_block":
        if parts[2] == "resnets":
            return f"{parts[0]}.mid.block_{int(parts[3]) + 1}." + ".".join(parts[4:]).replace("conv_shortcut", "nin_shortcut")
        rest = ".".join(parts[4:])
        rest = {"group_norm.weight": "norm.weight", "group_norm.bias": "norm.bias", "to_q.weight": "q.weight",
                "to_q.bias": "q.bias", "to_k.weight": "k.weight", "to_k.bias": "k.bias", "to_v.weight": "v.weight",
                "to_v.bias": "v.bias", "to_out.0.weight": "proj_out.weight", "to_out.0.bias": "proj_out.bias"}[rest]
        return f"{parts[0]}.mid.attn_1.{rest}"
    return key  # conv_in, conv_out, quant_conv, post_quant_conv keep their names


def _vae_value(key: str, value):
    """The VAE's mid-block attention projections are 1x1 convolutions in the original layout."""
    if ".mid_block.attentions." in key and key.endswith("weight") and value.ndim == 2:
        return value[:, :, None, None]
    return value


def write_single_file(pipe, path: Path, ema_offset: float | None = None) -> Path:
    """The pipeline's weights as one original-layout ``.safetensors`` file."""
    from safetensors.torch import save_file

    save_file(original_layout(pipe, ema_offset), str(path))
    return path
