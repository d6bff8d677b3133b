"""The base-model stage's config: the tiny model's shape and how its autoencoder is fitted (no torch here).

:class:`TinyModelConfig` is what :func:`instructcv_core.model.tiny_base.build_tiny_base` builds;
:class:`BaseModelConfig` adds the autoencoder fit and is what the ``base_model`` stage resolves from
the profile presets (:mod:`instructcv_core.presets`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from instructcv_core.presets import knob


@dataclass(frozen=True)
class TinyModelConfig:
    """Shape of the tiny Stable-Diffusion-like base of the ``mini`` profile (each field's help says why).

    Measured figures behind the defaults are in :func:`instructcv_core.model.autoencoder.fit_autoencoder`
    and cpu-feasibility: the VAE's full-resolution level dominates the cost (0.54 GFLOP per 64-px image
    for a training step with (8, 16, 32), vs 1.27 for (16, 32, 32) and 5.0 for (32, 64, 64)).
    """

    image_size: int = knob(64, "Training/inference resolution in pixels (square).")
    vae_block_out_channels: tuple[int, ...] = knob(
        (8, 16, 32), "AutoencoderKL channels per level; n levels downsample by 2 ** (n - 1) (keep >= x4: a x2 VAE "
        "gives the UNet 4x the latent pixels). (8, 16, 32) is the cheapest tried that fits as well as wider ones "
        "in a fixed wall-clock budget.")
    vae_layers_per_block: int = knob(1, "ResNet blocks per VAE encoder level (the decoder has one more, as in diffusers).")
    latent_channels: int = knob(4, "Latent channels (4, as SD).")
    unet_block_out_channels: tuple[int, ...] = knob(
        (32, 64), "UNet channels per level; every level but the lowest has cross-attention (SD's pattern), "
        "plus the mid block. (32, 64): the mini recipe (docs/benchmarks.md).")
    layers_per_block: int = knob(1, "ResNet(+attention) layers per UNet level.")
    attention_head_dim: int = knob(
        2, "UNet2DConditionModel(attention_head_dim=...), which (a diffusers naming legacy SD v1.5 shares) is "
        "the number of attention heads per block. 2, the pretrained mini base's: on a CPU a training step costs "
        "less than half of SD's 8 (docs/benchmarks.md, the attention layout of the base).")
    text_encoder: Literal["minilm", "clip"] = knob(
        "minilm", "`minilm` (pretrained all-MiniLM-L6-v2, 384-d, frozen: unseen instructions still map near "
        "their paraphrases) or `clip` (a tiny random CLIPTextModel with a locally built tokenizer).")
    prediction_type: Literal["epsilon", "v_prediction"] = knob(
        "v_prediction", "The scheduler's prediction type: `v_prediction` (learns image-to-image maps much "
        "faster on the mini model) or `epsilon` (SD v1.5 and the paper).")
    zero_terminal_snr: bool = knob(
        False, "Rescale the noise schedule to zero SNR at t = 999 (pure noise there; needs v_prediction). SD's "
        "schedule leaves 0.068 x the target in the t = 999 training input, which the one-step sampler never has.")
    seed: int = knob(0, "Seeds every random initialisation.")

    def __post_init__(self) -> None:
        # run configs and YAML give lists; a frozen config keeps hashable tuples
        object.__setattr__(self, "vae_block_out_channels", tuple(int(c) for c in self.vae_block_out_channels))
        object.__setattr__(self, "unet_block_out_channels", tuple(int(c) for c in self.unet_block_out_channels))
        if self.text_encoder not in ("minilm", "clip"):
            raise ValueError(f"text_encoder must be 'minilm' or 'clip', got {self.text_encoder!r}")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {self.prediction_type!r}")
        if self.zero_terminal_snr and self.prediction_type != "v_prediction":
            raise ValueError("zero_terminal_snr needs prediction_type 'v_prediction' (epsilon is undefined at zero SNR)")
        factor = 2 ** (len(self.vae_block_out_channels) - 1)
        if factor < 4:
            raise ValueError("vae_block_out_channels needs >= 3 levels (x4 downsampling); see cpu-feasibility.md")
        if self.image_size % (factor * 2 ** (len(self.unet_block_out_channels) - 1)):
            raise ValueError(f"image_size {self.image_size} is not divisible by the VAE x UNet downsampling")

    @property
    def latent_size(self) -> int:
        """Side of the latent grid: ``image_size / 2 ** (vae levels - 1)``."""
        return self.image_size // 2 ** (len(self.vae_block_out_channels) - 1)


@dataclass(frozen=True)
class BaseModelConfig(TinyModelConfig):
    """The base-model stage of the mini profile: where the tiny base comes from, and its shape.

    ``pretrained`` (the default): the pretrained mini base, the mini world's SD v1.5
    (:mod:`instructcv_core.model.pretrain_mini`), loaded from the versioned folder or, with
    ``rebuild``, pretrained here; its shape must be the shape knobs' values. Otherwise the
    from-scratch ablation: a randomly initialised base whose autoencoder is fitted for ``fit_steps``
    fixed optimiser steps on the manifest images. The stage records what it built (:meth:`stamp`)
    and reuses a base built from the same.
    """

    pretrained: bool = knob(True, "Start from the pretrained mini base (as InstructCV starts from SD v1.5); false: "
                            "a randomly initialised base with its autoencoder fitted on the manifest images.")
    rebuild: bool = knob(False, "Pretrain the mini base here (`python -m instructcv_core.model.pretrain_mini build`, "
                         "about an hour on 2 CPU cores) instead of loading the versioned folder.")
    fit_steps: int = knob(600, "From-scratch base only: optimiser steps (batches of 16 images) of the autoencoder's fit.")
    fit_images: int = knob(4000, "From-scratch base only: at most this many distinct training images to fit on.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rebuild and not self.pretrained:
            raise ValueError("rebuild: true pretrains the mini base; it needs pretrained: true")
        if self.fit_steps < 0:
            raise ValueError(f"fit_steps must be >= 0, got {self.fit_steps}")
        if self.fit_images < 1:
            raise ValueError(f"fit_images must be >= 1, got {self.fit_images}")

    def tiny(self) -> TinyModelConfig:
        """The model's shape alone (what :func:`build_tiny_base` takes)."""
        return TinyModelConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(TinyModelConfig)})

    def stamp(self, source_digest: str) -> dict:
        """What a built base records of its making; the same stamp means the same base (reused as is).

        ``source_digest``: the pretrained folder's SHA256SUMS digest, or (from scratch) a digest of
        the images the autoencoder was fitted on (see the base_model asset).
        """
        tiny = self.tiny()
        shape = {"tiny": tiny.__dict__ | {"vae_block_out_channels": list(tiny.vae_block_out_channels),
                                          "unet_block_out_channels": list(tiny.unet_block_out_channels)}}
        if self.pretrained:
            return shape | {"pretrained": source_digest, "rebuild": self.rebuild}
        return shape | {"fit_steps": self.fit_steps, "fit_images": self.fit_images, "manifest_digests": source_digest}
