"""Mini ImageNet subset: an Imagenette-style ``imagenette2-160.tgz`` with 5 real Imagenette classes.

Each class is its own object kind (shape and colour), rendered alone (`render_single_object`) on
outdoor or indoor backgrounds. Like imagenette2-160, images have a shortest side of 160 px and
varying aspect ratios, train files are ``<wnid>_<n>.JPEG``, val files ``ILSVRC2012_val_%08d.JPEG``,
and the archive (gzip tar, root folder ``imagenette2-160/``) includes ``noisy_imagenette.csv``.
"""

from __future__ import annotations

import io
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from instructcv_core.data.mini.pack import pack_tar
from instructcv_core.data.mini.scenes import INDOOR, OUTDOOR, ObjectKind, Scene, render_single_object

ARCHIVES = ("imagenette2-160.tgz",)
DEFAULT_SIZES = {"train_per_class": 20, "val_per_class": 10}  # 5 classes: 50 test images
ROOT_FOLDER = "imagenette2-160"

# wnid -> (object kind, probability of an outdoor background). Heights are only what keeps the
# object in frame with `render_single_object` (it scales the object to the frame, not the world).
CLASSES: dict[str, tuple[ObjectKind, float]] = {
    "n01440764": (ObjectKind("tench", "ellipse", (150, 170, 140), 0.5, 2.4), 0.5),
    "n03028079": (ObjectKind("church", "house", (205, 195, 175), 2.5, 0.8), 0.9),
    "n03394916": (ObjectKind("French horn", "ring", (212, 175, 55), 0.5, 1.0), 0.2),
    "n03445777": (ObjectKind("golf ball", "ellipse", (248, 248, 245), 0.043, 1.0), 0.8),
    "n03888257": (ObjectKind("parachute", "semicircle", (235, 70, 45), 2.5, 1.7), 0.9),
}
WNIDS = tuple(sorted(CLASSES))
LONG_SIDES = (160, 200, 213, 240)
NOISE_LEVELS = (0, 1, 5, 25, 50)  # noisy_imagenette.csv columns: % of labels replaced


@dataclass(frozen=True)
class NetteImage:
    index: int
    split: str
    wnid: str
    filename: str
    width: int
    height: int
    outdoor: bool

    @property
    def path(self) -> str:
        return f"{self.split}/{self.wnid}/{self.filename}"


def plan(seed: int, sizes: dict[str, int]) -> list[NetteImage]:
    rng = np.random.default_rng([seed, 0])
    per_split = {"train": sizes["train_per_class"], "val": sizes["val_per_class"]}
    n_val = per_split["val"] * len(WNIDS)
    val_numbers = iter(np.sort(rng.choice(50_000, n_val, replace=False) + 1))
    items = []
    for split, count in per_split.items():
        for wnid in WNIDS:
            numbers = np.sort(rng.choice(15_000, count, replace=False) + 1)
            for n in numbers:
                if split == "train":
                    filename = f"{wnid}_{n}.JPEG"
                else:
                    filename = f"ILSVRC2012_val_{next(val_numbers):08d}.JPEG"
                long_side = int(rng.choice(LONG_SIDES))
                w, h = (long_side, 160) if rng.random() < 0.8 else (160, long_side)
                outdoor = bool(rng.random() < CLASSES[wnid][1])
                items.append(NetteImage(len(items), split, wnid, filename, w, h, outdoor))
    return items


def render_image(seed: int, item: NetteImage) -> Scene:
    rng = np.random.default_rng([seed, 1, item.index])
    kind = CLASSES[item.wnid][0]
    return render_single_object(rng, item.width, item.height, kind, OUTDOOR if item.outdoor else INDOOR)


def write_archives(out_dir: Path, seed: int, sizes: dict[str, int]) -> list[Path]:
    out_dir = Path(out_dir)
    items = plan(seed, sizes)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / ROOT_FOLDER
        for item in items:
            path = root / item.path
            path.parent.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            Image.fromarray(render_image(seed, item).image).save(buf, "JPEG", quality=90)
            path.write_bytes(buf.getvalue())
        (root / "noisy_imagenette.csv").write_text(_noisy_csv(seed, items))
        return [pack_tar(Path(tmp), out_dir / ARCHIVES[0], gzip_compress=True)]


def _noisy_csv(seed: int, items: list[NetteImage]) -> str:
    """fast.ai's label-noise table: the true wnid, or another one for the given % of images."""
    rng = np.random.default_rng([seed, 2])
    lines = ["path," + ",".join(f"noisy_labels_{p}" for p in NOISE_LEVELS) + ",is_valid"]
    for item in items:
        labels = []
        for p in NOISE_LEVELS:
            others = [w for w in WNIDS if w != item.wnid]
            noisy = item.split == "train" and rng.random() < p / 100
            labels.append(others[int(rng.integers(len(others)))] if noisy else item.wnid)
        lines.append(f"{item.path},{','.join(labels)},{item.split == 'val'}")
    return "\n".join(lines) + "\n"
