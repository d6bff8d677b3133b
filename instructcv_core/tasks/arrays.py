"""Array conventions shared by every task's encoding and post-processing.

* images: ``uint8`` RGB, shape ``(H, W, 3)`` (RGB, not OpenCV's BGR);
* masks: ``bool``, shape ``(H, W)``;
* depth: ``float32`` metres, shape ``(H, W)``; 0 means "no measurement";
* boxes: ``(x, y, w, h)`` in *pixel-edge* coordinates: a box over columns 10..19 inclusive has
  ``x = 10, w = 10``; its right edge is ``x + w = 20`` (COCO's ``bbox``, ``cv2.boundingRect``);
* sizes: ``(width, height)``.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

Size = tuple[int, int]


def check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    """``image`` as an array, after checking it is uint8 ``(H, W, 3)``."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name} must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    return image


def round_half_up(v: float) -> int:
    """Round to the nearest integer, halves up (``floor(v + 0.5)``): 2.5 -> 3, -2.5 -> -2.

    Used for box edges and depth levels. Python's ``round`` and ``np.round`` round halves to even
    (``round(2.5) == 2``), which is why they are not used.
    """
    return int(math.floor(v + 0.5))


def resize_to(image: np.ndarray, size: Size | None, resample=Image.Resampling.BILINEAR) -> np.ndarray:
    """Resize with Pillow to ``size = (width, height)``; ``None`` (or the same size) returns the
    input unchanged.

    Accepts uint8 ``(H, W, 3)`` / ``(H, W)`` arrays and float ``(H, W)`` arrays (resized as
    float32 in Pillow mode "F"); the dtype is kept (float input comes back float32). Pillow's
    BILINEAR antialiases when shrinking. (Pillow >= 13 may run the vertical pass first, which
    changes results slightly versus the Pillow <= 12 of the authors' 2023 setup.)
    """
    image = np.asarray(image)
    if size is None:
        return image
    width, height = (int(v) for v in size)
    if width < 1 or height < 1:
        raise ValueError(f"size must be positive (width, height), got {size!r}")
    if image.shape[:2] == (height, width):
        return image
    if image.dtype == np.uint8 and (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        pil = Image.fromarray(np.ascontiguousarray(image))
    elif np.issubdtype(image.dtype, np.floating) and image.ndim == 2:
        pil = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32))  # mode "F"
    else:
        raise TypeError(f"expected uint8 (H, W[, 3]) or float (H, W), got {image.dtype} {image.shape}")
    return np.asarray(pil.resize((width, height), resample=resample))


def channel_values(output: np.ndarray, channel: str | int) -> np.ndarray:
    """float32 (H, W): the channel mean, or one channel (0 = R, 1 = G, 2 = B) of an RGB image.
    A 2-D gray image is taken as is (``channel`` ignored)."""
    output = np.asarray(output)
    if output.ndim == 2:
        return output.astype(np.float32)
    if output.ndim != 3:
        raise ValueError(f"output must be (H, W) or (H, W, C), got {output.shape}")
    if isinstance(channel, str):
        if channel != "mean":
            raise ValueError(f"channel must be 'mean' or an int, got {channel!r}")
        if output.dtype == np.uint8 and output.shape[2] == 3:
            # The same float32 numbers as .astype(float32).mean(axis=2) (a sum of three bytes is exact
            # in float32, then one division by 3), without the slow reduction over a length-3 axis.
            values = output[:, :, 0].astype(np.float32)
            values += output[:, :, 1]
            values += output[:, :, 2]
            values /= np.float32(3)
            return values
        return output.astype(np.float32).mean(axis=2)
    if isinstance(channel, bool) or not isinstance(channel, (int, np.integer)):
        raise ValueError(f"channel must be 'mean' or an int, got {channel!r}")
    if not 0 <= channel < output.shape[2]:
        raise ValueError(f"channel {channel} out of range for {output.shape[2]} channels")
    return output[:, :, int(channel)].astype(np.float32)


def as_rgb(image: np.ndarray) -> np.ndarray:
    """A gray ``(H, W)`` image replicated to three channels; an RGB image unchanged."""
    return np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image


__all__ = ["Size", "as_rgb", "channel_values", "check_image", "resize_to", "round_half_up"]
