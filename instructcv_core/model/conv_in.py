"""InstructPix2Pix's change to the base UNet: ``conv_in`` widened to take the image condition."""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel


def widen_conv_in(unet: UNet2DConditionModel, in_channels: int = 8, init: str = "zeros") -> UNet2DConditionModel:
    """Give ``unet`` a ``conv_in`` with ``in_channels`` inputs (InstructPix2Pix: 8 = latent ⊕ image latent).

    ``init="zeros"`` (InstructPix2Pix): the first ``old`` input channels copy the pretrained weights,
    the rest are zero (the image condition starts with no effect: on ``cat(x, zeros)`` the widened
    UNet computes what the original did on ``x``). ``init="copy"`` (Marigold, Ke et al. CVPR 2024):
    every group of ``old`` channels gets the pretrained weights divided by the number of groups (on
    ``cat(x, x)`` the widened UNet computes what the original did on ``x``), so the image condition
    is read through the pretrained input layer from the first step. The bias is copied;
    ``unet.config.in_channels`` is updated. Modifies and returns the same ``unet``.
    """
    if init not in ("zeros", "copy"):
        raise ValueError(f"unknown conv_in init {init!r} (zeros | copy)")
    old = unet.conv_in
    if in_channels <= old.in_channels:
        raise ValueError(f"conv_in already has {old.in_channels} input channels (asked for {in_channels})")
    new = torch.nn.Conv2d(
        in_channels,
        old.out_channels,
        kernel_size=old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        dilation=old.dilation,
        bias=old.bias is not None,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    with torch.no_grad():
        new.weight.zero_()
        if init == "zeros":
            new.weight[:, : old.in_channels].copy_(old.weight)
        else:
            if in_channels % old.in_channels:
                raise ValueError(f"init='copy' needs a multiple of {old.in_channels} input channels, not {in_channels}")
            groups = in_channels // old.in_channels
            new.weight.copy_(old.weight.repeat(1, groups, 1, 1) / groups)
        if old.bias is not None:
            new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)
    return unet
