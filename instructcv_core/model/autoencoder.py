"""Fitting the tiny autoencoder, and measuring the round-trip ceiling it puts on each task's encoding.

A random VAE cannot reconstruct images, so the mini base step fits the tiny autoencoder on
mini-benchmark images (:func:`fit_autoencoder`); :func:`reconstruction_report` measures, per task,
how much of the visual encoding survives an encode/decode round trip.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from instructcv_core.tasks import TASKS


def images_to_tensor(images: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` (or a sequence of ``(H, W, 3)``) -> float32 ``(N, 3, H, W)`` in [-1, 1]."""
    array = np.stack([np.asarray(im) for im in images]) if not isinstance(images, np.ndarray) else images
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"expected uint8 images of shape (N, H, W, 3), got {array.dtype} {array.shape}")
    # contiguous NCHW: a permuted (channels-last strided) batch sends the convolutions and GroupNorm
    # backward down a CPU path many times slower
    return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).contiguous().float().div(127.5).sub(1.0)


def tensor_to_images(x: torch.Tensor) -> np.ndarray:
    """float ``(N, 3, H, W)`` in [-1, 1] -> uint8 ``(N, H, W, 3)``, rounded as diffusers' postprocessing."""
    x = (x.detach().float() / 2 + 0.5).clamp(0, 1)
    return (x.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)


@torch.no_grad()
def round_trip(vae: AutoencoderKL, images: np.ndarray | Sequence[np.ndarray], batch_size: int = 64) -> np.ndarray:
    """Encode (posterior mode, as the IP2P image condition) and decode: uint8 ``(N, H, W, 3)`` back."""
    x = images_to_tensor(images)
    was_training = vae.training
    vae.eval()
    out = []
    param = next(vae.parameters())
    for i in range(0, len(x), batch_size):
        batch = x[i : i + batch_size].to(param.device, param.dtype)
        out.append(tensor_to_images(vae.decode(vae.encode(batch).latent_dist.mode()).sample))
    vae.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, x.shape[2], x.shape[3], 3), np.uint8)


def fit_autoencoder(
    vae: AutoencoderKL,
    images: np.ndarray | Sequence[np.ndarray],
    *,
    steps: int,
    batch_size: int = 16,
    lr: float = 1e-3,
    seed: int = 0,
    kl_weight: float = 1e-6,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Train the VAE (encoder and decoder) to reconstruct ``images`` for a fixed number of optimiser steps.

    images: uint8 ``(N, H, W, 3)`` at the model's image size (inputs and targets mixed), scaled to
        [-1, 1]. steps: AdamW steps of ``batch_size`` images (never a wall-clock budget: the same
        config and seed give the same weights on the same machine type).
    Loss: pixel MSE of ``decode(z ~ posterior)`` + ``kl_weight`` x KL(posterior || N(0, I)) (mean
    per sample). AdamW at ``lr``, cosine-decayed to 5 % over ``steps``. Data order (a seeded
    permutation per epoch) and posterior noise come from ``seed``.
    Afterwards ``vae.config.scaling_factor`` = 1 / std of the latent posterior means over ``images``
    (registered in the config), so scaled latents have unit variance as SD's 0.18215 gives its VAE.
    Returns ``{"steps", "seconds", "final_mse", "scaling_factor"}``; ``final_mse`` is the mean
    squared error in [0, 1] units of the posterior-mode round trip over ``images``; ``seconds`` is
    the measured training time (reported, never a stopping rule). The VAE is left in eval mode with
    gradients off: it is frozen from here on (InstructPix2Pix trains the UNet only).
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    x = images_to_tensor(images)
    n = len(x)
    if n == 0:
        raise ValueError("fit_autoencoder needs at least one image")
    param = next(vae.parameters())
    device, dtype = param.device, param.dtype
    vae.requires_grad_(True)
    vae.train()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    batch_size = min(batch_size, n)
    start = time.monotonic()
    order = torch.randperm(n, generator=generator)
    cursor = 0
    loss_value = float("nan")
    for step in range(steps):
        progress = step / steps
        for group in optimizer.param_groups:
            group["lr"] = lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))
        if cursor + batch_size > n:  # a new epoch: a fresh seeded permutation
            order = torch.randperm(n, generator=generator)
            cursor = 0
        batch = x[order[cursor : cursor + batch_size]].to(device, dtype)
        cursor += batch_size
        posterior = vae.encode(batch).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=generator).to(device, dtype)
        z = posterior.mean + posterior.std * noise
        recon = vae.decode(z).sample
        loss = F.mse_loss(recon, batch) + kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_value = float(loss.detach())
        if log is not None and (step + 1) % 50 == 0:
            log(f"autoencoder step {step + 1}/{steps}: loss {loss_value:.5f} ({time.monotonic() - start:.0f}s)")
    train_seconds = time.monotonic() - start
    vae.eval()
    vae.requires_grad_(False)

    squared_error, means = 0.0, []
    with torch.no_grad():
        for i in range(0, n, 64):
            batch = x[i : i + 64].to(device, dtype)
            mean = vae.encode(batch).latent_dist.mode()
            means.append(mean.float().flatten())
            recon = vae.decode(mean).sample.clamp(-1, 1)
            squared_error += float(((recon.float() - batch.float()) / 2).pow(2).sum())
    std = float(torch.cat(means).std())
    scaling_factor = 1.0 / max(std, 1e-8)
    vae.register_to_config(scaling_factor=scaling_factor)
    final_mse = squared_error / x.numel()
    if log is not None:
        log(f"autoencoder: {steps} steps in {train_seconds:.0f}s, round-trip mse {final_mse:.5f}, scaling_factor {scaling_factor:.4f}")
    return {"steps": steps, "seconds": train_seconds, "final_mse": final_mse, "scaling_factor": scaling_factor}


def reconstruction_report(vae: AutoencoderKL, images_by_task: dict[str, np.ndarray]) -> dict[str, dict]:
    """The VAE round-trip ceiling of each task's visual encoding.

    ``images_by_task`` maps a name to uint8 ``(N, H, W, 3)`` images (the task's target images for the
    task names below; any other name, e.g. ``"inputs"``, gets the generic figures only). Each image is
    encoded (posterior mode) and decoded to uint8. Per name: ``n`` and ``mse`` (mean squared error in
    [0, 1] units), plus:

    * ``"segmentation"``: ``iou`` (mean per-image IoU of masks thresholded at mean gray > 127, an image
      whose masks are both empty counting 1) and ``iou_pooled`` (all pixels together);
    * ``"depth"``: ``rmse_m``, the RMSE in metres of decoded depth (mean gray x 10 / 255);
    * ``"classification"``: ``colour_accuracy``, the fraction of blocks whose round-trip mean colour is
      nearest (among the 16 palette colours) to the same colour as the original's;
    * ``"detection"``: ``outline_iou``, IoU of the box-colour pixels (within 60 per channel of blue).
    """
    report: dict[str, dict] = {}
    for task, images in images_by_task.items():
        images = np.asarray(images)
        if len(images) == 0:
            report[task] = {"n": 0}
            continue
        recon = round_trip(vae, images)
        orig_f, recon_f = images.astype(np.float64) / 255, recon.astype(np.float64) / 255
        entry: dict[str, float] = {"n": int(len(images)), "mse": float(((orig_f - recon_f) ** 2).mean())}
        if task in TASKS:
            entry.update(TASKS[task].reconstruction_metrics(images, recon))
        report[task] = entry
    return report
