"""Instruction-guided generation with InstructPix2Pix 3-way classifier-free guidance, batched.

The stock ``StableDiffusionInstructPix2PixPipeline`` runs one (image, instruction) list at a time and
re-encodes the image for every call; the official evaluation scripts call it once per instruction.
InstructCV asks many instructions of one image (every category of a benchmark), so here:

* image latents (VAE posterior mode, unscaled, as in training) are computed once per image and
  text embeddings once per distinct instruction, and reused across the batch;
* one UNet call evaluates the three guidance branches of every item of a batch
  (``ε = ε(∅,∅) + s_T·[ε(T,I) − ε(∅,I)] + s_I·[ε(∅,I) − ε(∅,∅)]``);
* every item has its own seed: its initial noise and the noise of each ancestral step come from its
  own ``torch.Generator``, so an output does not depend on which other items share its batch (up to
  floating-point differences of batched kernels). A batch of one reproduces the stock pipeline
  called with ``generator=torch.Generator().manual_seed(seed)`` (tested).

Steps, guidance scales, scheduler and resolution are :class:`SamplerConfig`, so the paper recipe
(100 Euler-ancestral steps, s_T 7.5, s_I 1.5, 256²), the guidance sweep of Fig. 3 and the fast
presets (``few``: a few DDIM steps; ``one``: one deterministic step at t = 999) are configurations
of the same code. DDIM always runs with ``set_alpha_to_one`` and without ``clip_sample``: its last
step then returns exactly the x0 the model predicts (SD v1.5's scheduler config says
``set_alpha_to_one: false``, which would add sqrt(1 - alpha_0) of the predicted noise to it), so one
trailing step is one UNet evaluation whose output is the model's own estimate of the target.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from instructcv_core.inference.config import SCHEDULERS, Request, SamplerConfig
from instructcv_core.model.autoencoder import images_to_tensor, tensor_to_images
from instructcv_core.model.prompts import encode_prompt

#: The config's model precisions as torch dtypes.
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class InstructCVSampler:
    """Batched 3-way-CFG sampling with a trained InstructCV (InstructPix2Pix) model."""

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler_config: Mapping, config: SamplerConfig):
        import diffusers

        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = DTYPES[config.dtype]
        self.unet = unet.to(self.device, self.dtype).eval()
        self.vae = vae.to(self.device, self.dtype).eval()
        self.text_encoder = text_encoder.to(self.device, self.dtype).eval()
        self.tokenizer = tokenizer
        self._scheduler_cls = getattr(diffusers, SCHEDULERS[config.scheduler])
        self._model_scheduler_config = dict(scheduler_config)  # the model's own, before this config's changes
        self._scheduler_config = dict(scheduler_config)
        if config.timestep_spacing:
            self._scheduler_config["timestep_spacing"] = config.timestep_spacing
        if config.scheduler == "ddim":  # the last step ends on x0 itself, unclipped (module docstring)
            self._scheduler_config.update(set_alpha_to_one=True, clip_sample=False)
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._image_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._null_text = self._encode_texts([""])[0]
        expected = self.vae.config.latent_channels * 2
        if self.unet.config.in_channels != expected:
            raise ValueError(f"the UNet takes {self.unet.config.in_channels} input channels; an InstructPix2Pix "
                             f"UNet takes {expected} (noisy latent + image latent)")

    def with_config(self, config: SamplerConfig) -> InstructCVSampler:
        """A sampler of the same model (the same modules, nothing reloaded) that samples as ``config`` says
        (another preset, steps or guidance: the speed-quality curve asks one model many ways)."""
        if (config.device, config.dtype) != (self.config.device, self.config.dtype):
            raise ValueError("with_config keeps the model where it is: device and dtype must not change "
                             f"({self.config.device}/{self.config.dtype} -> {config.device}/{config.dtype})")
        return type(self)(self.unet, self.vae, self.text_encoder, self.tokenizer, self._model_scheduler_config, config)

    @classmethod
    def from_pretrained(cls, pipeline_dir: str | Path, config: SamplerConfig) -> InstructCVSampler:
        """Load a saved ``StableDiffusionInstructPix2PixPipeline`` folder (a training output)."""
        from diffusers import StableDiffusionInstructPix2PixPipeline

        path = Path(pipeline_dir)
        if not (path / "model_index.json").is_file():
            raise FileNotFoundError(f"{path}: not a diffusers pipeline folder (no model_index.json)")
        pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
            str(path), safety_checker=None, feature_extractor=None, requires_safety_checker=False, local_files_only=True)
        return cls.from_pipeline(pipe, config)

    @classmethod
    def from_pipeline(cls, pipe, config: SamplerConfig) -> InstructCVSampler:
        """A sampler over a loaded InstructPix2Pix pipeline's modules (e.g. the released weights,
        `instructcv_core.model.released.load_released`); its scheduler contributes only its config."""
        return cls(pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler.config, config)

    # ----------------------------------------------------------------------------------------------
    # cached encoders

    @torch.no_grad()
    def _encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return encode_prompt(self.tokenizer, self.text_encoder, list(texts)).to(self.dtype)

    def text_embeddings(self, instructions: Sequence[str], keep: int = 4096) -> torch.Tensor:
        """The instructions' embeddings; each text encoded once, alone (see :meth:`image_latents`)."""
        for text in dict.fromkeys(t for t in instructions if t not in self._text_cache):
            self._text_cache[text] = self._encode_texts([text])[0]
        for text in instructions:
            self._text_cache.move_to_end(text)
        out = torch.stack([self._text_cache[t] for t in instructions])
        while len(self._text_cache) > keep:
            self._text_cache.popitem(last=False)
        return out

    @torch.no_grad()
    def image_latents(self, keys: Sequence[str], images: Mapping[str, np.ndarray], keep: int = 256) -> torch.Tensor:
        """Posterior-mode latents (unscaled) of the images named by ``keys``; each image encoded once, alone.

        Alone, because a batched convolution's rows differ from the same rows computed in another batch
        in the last bits: an image's latent would then depend on which other images happened to miss the
        cache with it, and a resumed or sharded evaluation (which starts with an empty cache) would not
        reproduce an uninterrupted one bit for bit. Each image is encoded once per evaluation, so the
        cost is small beside the UNet's steps.
        """
        for key in dict.fromkeys(k for k in keys if k not in self._image_cache):
            pixels = images_to_tensor([self._square(images[key])]).to(self.device, self.dtype)
            self._image_cache[key] = self.vae.encode(pixels).latent_dist.mode()[0]
        for key in keys:
            self._image_cache.move_to_end(key)
        out = torch.stack([self._image_cache[k] for k in keys])
        while len(self._image_cache) > keep:
            self._image_cache.popitem(last=False)
        return out

    def _square(self, image: np.ndarray) -> np.ndarray:
        image = np.asarray(image)
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        r = self.config.resolution
        if image.shape[:2] != (r, r):
            from PIL import Image

            image = np.asarray(Image.fromarray(image[:, :, :3]).resize((r, r), Image.Resampling.LANCZOS))
        return image[:, :, :3]

    # ----------------------------------------------------------------------------------------------
    # sampling

    def generate(
        self,
        requests: Sequence[Request],
        images: Mapping[str, np.ndarray],
        on_batch: Callable[[int], None] | None = None,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(index into requests, uint8 RGB output)`` for every request, batch by batch.

        ``images`` maps each ``image_key`` to a uint8 RGB array (any size: it is resized square to
        the configured resolution with LANCZOS). Requests are processed in the given order; sort
        them by image so an image's latents stay cached. ``on_batch(n)`` is called after each batch.
        """
        size = self.config.batch_size
        for start in range(0, len(requests), size):
            chunk = requests[start : start + size]
            outputs = self._generate_batch(chunk, images)
            for offset, output in enumerate(outputs):
                yield start + offset, output
            if on_batch is not None:
                on_batch(len(chunk))

    @torch.no_grad()
    def _generate_batch(self, requests: Sequence[Request], images: Mapping[str, np.ndarray]) -> np.ndarray:
        latents = self.denoise(requests, images)
        decoded = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]
        return tensor_to_images(decoded)

    @torch.no_grad()
    def denoise(self, requests: Sequence[Request], images: Mapping[str, np.ndarray]) -> torch.Tensor:
        """The final (scaled) latents of one batch of requests, before decoding."""
        cfg, n = self.config, len(requests)
        scheduler = self._scheduler_cls.from_config(self._scheduler_config)
        scheduler.set_timesteps(cfg.steps, device=self.device)
        generators = [torch.Generator("cpu").manual_seed(int(r.seed)) for r in requests]

        image_latents = self.image_latents([r.image_key for r in requests], images)
        text = self.text_embeddings([r.instruction for r in requests])
        shape = (self.vae.config.latent_channels, *image_latents.shape[-2:])
        # Per-item initial noise from the item's own generator, drawn on the CPU (device-independent).
        latents = torch.stack([torch.randn(shape, generator=g, dtype=torch.float32) for g in generators])
        latents = (latents * scheduler.init_noise_sigma).to(self.device, self.dtype)

        step_kwargs = {}
        if "generator" in inspect.signature(scheduler.step).parameters:
            step_kwargs["generator"] = generators  # diffusers draws one noise tensor per item from its generator
        if cfg.guided:
            null = self._null_text.expand(n, *self._null_text.shape)
            prompt_embeds = torch.cat([text, null, null])
            cond_latents = torch.cat([image_latents, image_latents, torch.zeros_like(image_latents)])
        else:
            prompt_embeds, cond_latents = text, image_latents
        for t in scheduler.timesteps:
            model_input = torch.cat([latents] * 3) if cfg.guided else latents
            model_input = torch.cat([scheduler.scale_model_input(model_input, t), cond_latents], dim=1)
            pred = self.unet(model_input, t, encoder_hidden_states=prompt_embeds, return_dict=False)[0]
            if cfg.guided:
                pred_text, pred_image, pred_uncond = pred.chunk(3)
                pred = (pred_uncond + cfg.text_guidance * (pred_text - pred_image)
                        + cfg.image_guidance * (pred_image - pred_uncond))
            latents = scheduler.step(pred, t, latents, **step_kwargs, return_dict=False)[0]
        return latents


__all__ = ["DTYPES", "InstructCVSampler", "Request", "SamplerConfig", "resolve_device"]
