"""Mini FSS-1000: ``fewshot_data.zip`` with ``fewshot_data/<class>/{1..N}.{jpg,png}``.

Every class is a category no training set has: one object per image, rendered large by
`render_single_object`, indoors or outdoors. Besides the renderer's held-out ``starfish`` and
``arrowhead``, the writer defines its own object kinds from the renderer's shapes (new names and
colours). ``abacus`` always comes first: it is the real dataset's first class folder and the
reader's layout marker.

Masks are grey PNGs: 255 inside the object and 0 outside, except a one-pixel soft edge (200 on the
object's boundary pixels, 60 just outside them), so that only the ``>= 128`` threshold gives back
the exact object.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from instructcv_core.data.mini.pack import pack_zip
from instructcv_core.data.mini.scenes import INDOOR, KINDS, OUTDOOR, ObjectKind, Scene, render_single_object

ARCHIVES = ("fewshot_data.zip",)
DEFAULT_SIZES = {"classes": 6, "per_class": 10}

# Classes in the order they are used: sizes["classes"] takes the first ones.
FSS_KINDS: tuple[ObjectKind, ...] = (
    ObjectKind("abacus", "rectangle", (150, 95, 45), 0.5, 1.3),
    KINDS["starfish"],
    KINDS["arrowhead"],
    ObjectKind("hexnut", "hexagon", (160, 165, 175), 0.3, 1.15),
    ObjectKind("kite", "diamond", (230, 40, 120), 1.0, 0.8),
    ObjectKind("ufo", "semicircle", (120, 230, 90), 1.2, 2.2),
    ObjectKind("lifebuoy", "ring", (255, 100, 20), 0.8, 1.0),
    ObjectKind("pyramid", "triangle", (210, 180, 110), 1.5, 1.4),
)
IMAGE_SIZE = (160, 160)  # (width, height); the real images are all 224 x 224
EDGE_INSIDE, EDGE_OUTSIDE = 200, 60
JPEG_QUALITY = 90


def class_names(n_classes: int) -> list[str]:
    if n_classes > len(FSS_KINDS):
        raise ValueError(f"mini FSS-1000 has at most {len(FSS_KINDS)} classes, asked for {n_classes}")
    return [k.name for k in FSS_KINDS[:n_classes]]


def render_fss_image(seed: int, class_index: int, number: int) -> tuple[Scene, np.ndarray]:
    """Regenerate image ``<class>/<number>.jpg`` (number from 1): the scene and its uint8 mask PNG."""
    rng = np.random.default_rng([_u(seed), class_index, number])
    style = OUTDOOR if rng.random() < 0.3 else INDOOR
    scene = render_single_object(rng, *IMAGE_SIZE, FSS_KINDS[class_index], style)
    return scene, mask_png(scene.objects[0].mask)


def mask_png(mask: np.ndarray) -> np.ndarray:
    """0/255 mask with a soft one-pixel edge on both sides of the boundary."""
    m = mask.astype(np.uint8)
    kernel = np.ones((3, 3), np.uint8)
    out = np.where(mask, 255, 0).astype(np.uint8)
    out[mask & ~(cv2.erode(m, kernel) > 0)] = EDGE_INSIDE
    out[~mask & (cv2.dilate(m, kernel) > 0)] = EDGE_OUTSIDE
    return out


def write_archives(out_dir: Path, seed: int, sizes: dict[str, int]) -> list[Path]:
    out_dir = Path(out_dir)
    names = class_names(sizes["classes"])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "fewshot_data"
        for class_index, name in enumerate(names):
            folder = root / name
            folder.mkdir(parents=True)
            for number in range(1, sizes["per_class"] + 1):
                scene, mask = render_fss_image(seed, class_index, number)
                Image.fromarray(scene.image).save(folder / f"{number}.jpg", quality=JPEG_QUALITY)
                Image.fromarray(mask).save(folder / f"{number}.png")
        return [pack_zip(Path(tmp), out_dir / "fewshot_data.zip")]


def _u(seed: int) -> int:
    return int(seed) % (1 << 63)
