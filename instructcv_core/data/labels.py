"""Decode the labels an `ImageRecord` points to: per-category masks and metric depth.

Both decoders work at the image's native resolution and never resize.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from instructcv_core.data.datasets import dataset_module
from instructcv_core.data.images import read_uint16
from instructcv_core.data.records import ImageRecord

SUNRGBD_MAX_DEPTH_M = 8.0


def decode_depth_png_mm(path: Path) -> np.ndarray:
    """16-bit PNG in millimetres -> float32 metres (0 stays 0 = invalid)."""
    raw = _read_uint16(path)
    return raw.astype(np.float32) / 1000.0


def decode_sunrgbd_depth(path: Path) -> np.ndarray:
    """SUN RGB-D depth PNG -> float32 metres, as the toolbox's read3dPoints.m does it.

    The stored value is the millimetre depth with its 16 bits rotated left by 3; rotate them back
    (``(v >> 3) | (v << 13)``), divide by 1000 and cap at 8 m.
    """
    raw = _read_uint16(path)
    rotated = (raw >> 3) | (raw << 13)  # uint16 arithmetic wraps, which is the rotation
    depth = rotated.astype(np.float32) / 1000.0
    return np.minimum(depth, SUNRGBD_MAX_DEPTH_M)


_DEPTH_DECODERS = {"png_uint16_mm": decode_depth_png_mm, "sunrgbd_png": decode_sunrgbd_depth}


def load_depth_m(record: ImageRecord, root: Path, dense: bool = False) -> np.ndarray:
    """Metric depth (float32 metres, 0 = no measurement) of ``record``.

    ``dense`` picks the hole-filled map where the dataset has one (NYUv2 ``depths``).
    """
    rel = record.depth_dense_path if dense and record.depth_dense_path else record.depth_path
    if rel is None or record.depth_format is None:
        raise ValueError(f"{record.dataset}/{record.image_id}: record has no depth")
    return _DEPTH_DECODERS[record.depth_format](Path(root) / rel)


def load_class_masks(record: ImageRecord, root: Path) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Per-category boolean masks (instances merged) and the void/ignore mask, or None.

    Delegates to the dataset module's ``class_masks``: each dataset knows its own conventions
    (ADE20K 0 = other, VOC 255 = void, Pets trimap boundary, COCO crowd regions).
    """
    if record.mask_format is None:
        raise ValueError(f"{record.dataset}/{record.image_id}: record has no segmentation labels")
    return dataset_module(record.dataset).class_masks(record, Path(root))


def _read_uint16(path: Path) -> np.ndarray:
    return read_uint16(path)  # ImageRefused (a ValueError) names the file and the reason
