"""Mini MS-COCO 2017: the official zips (images + instances json) filled with rendered scenes.

Archive members exactly as published: ``train2017/<id>.jpg``, ``val2017/<id>.jpg`` and
``annotations/instances_{train,val}2017.json``. Each image is an indoor scene with 1-4 objects of
the training categories; the json carries polygons traced from each object's visible mask, the
visible mask's box, and (for some images where two or more objects of one category stand together)
one crowd annotation with an uncompressed column-major RLE, as real COCO crowd regions are.
A few images have no objects at all (real COCO has such images too).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from instructcv_core.data.mini.pack import pack_zip
from instructcv_core.data.mini.scenes import INDOOR, KINDS, Scene, render_scene

ARCHIVES = ("train2017.zip", "val2017.zip", "annotations_trainval2017.zip")
DEFAULT_SIZES = {"train": 240, "val": 60}
SPLITS = ("train", "val")

TRAIN_KINDS = ("person", "car", "cat", "dog", "chair", "bottle", "bird", "tv", "bus")
# The real COCO ids and supercategories of the categories the mini uses.
CATEGORIES = {
    "person": (1, "person"),
    "car": (3, "vehicle"),
    "bus": (6, "vehicle"),
    "bird": (16, "animal"),
    "cat": (17, "animal"),
    "dog": (18, "animal"),
    "bottle": (44, "kitchen"),
    "chair": (62, "furniture"),
    "tv": (72, "electronic"),
}
LICENSES = [
    {"url": "http://creativecommons.org/licenses/by-nc-sa/2.0/", "id": 1, "name": "Attribution-NonCommercial-ShareAlike License"},
    {"url": "http://creativecommons.org/licenses/by-nc/2.0/", "id": 2, "name": "Attribution-NonCommercial License"},
    {"url": "http://creativecommons.org/licenses/by-nc-nd/2.0/", "id": 3, "name": "Attribution-NonCommercial-NoDerivs License"},
    {"url": "http://creativecommons.org/licenses/by/2.0/", "id": 4, "name": "Attribution License"},
    {"url": "http://creativecommons.org/licenses/by-sa/2.0/", "id": 5, "name": "Attribution-ShareAlike License"},
    {"url": "http://creativecommons.org/licenses/by-nd/2.0/", "id": 6, "name": "Attribution-NoDerivs License"},
    {"url": "http://flickr.com/commons/usage/", "id": 7, "name": "No known copyright restrictions"},
    {"url": "http://www.usa.gov/copyright.shtml", "id": 8, "name": "United States Government Work"},
]
IMAGE_SIZES = ((192, 144), (176, 132), (160, 120), (144, 176))  # (width, height), one portrait
EMPTY_EVERY = 25  # image index % 25 == 12 has no objects
CROWD_PROB = 0.6  # chance that a category with >= 2 objects becomes one crowd region
CROWD_ID_BASE = 900_100_000_000  # real COCO crowd annotation ids live in this range
JPEG_QUALITY = 90


@dataclass
class MiniAnnotation:
    category: str
    mask: np.ndarray  # bool (H, W), visible pixels
    iscrowd: bool

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        ys, xs = np.nonzero(self.mask)
        return int(xs.min()), int(ys.min()), int(xs.max()) + 1 - int(xs.min()), int(ys.max()) + 1 - int(ys.min())


@dataclass
class MiniImage:
    scene: Scene
    license: int
    annotations: list[MiniAnnotation]


def image_ids(seed: int, sizes: dict[str, int]) -> dict[str, list[int]]:
    """Distinct COCO-like image ids per split (train and val never share one)."""
    total = sum(sizes[s] for s in SPLITS)
    rng = np.random.default_rng([_u(seed), 7])
    ids = rng.choice(np.arange(1, 581_930), size=total, replace=False).tolist()
    return {"train": ids[: sizes["train"]], "val": ids[sizes["train"] :]}


def render_coco_image(seed: int, split: str, index: int) -> MiniImage:
    """Regenerate image ``index`` of ``split``: the scene and the annotations written for it."""
    rng = np.random.default_rng([_u(seed), SPLITS.index(split), index])
    width, height = IMAGE_SIZES[int(rng.integers(len(IMAGE_SIZES)))]
    licence = int(rng.integers(1, len(LICENSES) + 1))
    n_objects = (0, 0) if index % EMPTY_EVERY == 12 else (1, 4)
    scene = render_scene(rng, width, height, [KINDS[k] for k in TRAIN_KINDS], n_objects, INDOOR)
    crowd = None
    by_category: dict[str, list] = {}
    for obj in scene.objects:
        by_category.setdefault(obj.kind.name, []).append(obj)
    groups = sorted(name for name, objs in by_category.items() if len(objs) >= 2)
    if groups and rng.random() < CROWD_PROB:
        crowd = groups[0]
    annotations = [
        MiniAnnotation(obj.kind.name, obj.mask, False) for obj in scene.objects if obj.kind.name != crowd
    ]
    if crowd is not None:
        merged = np.logical_or.reduce([obj.mask for obj in by_category[crowd]])
        annotations.append(MiniAnnotation(crowd, merged, True))
    return MiniImage(scene, licence, annotations)


def write_archives(out_dir: Path, seed: int, sizes: dict[str, int]) -> list[Path]:
    out_dir = Path(out_dir)
    ids = image_ids(seed, sizes)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        next_ann_id = 1
        for split in SPLITS:
            images, annotations = [], []
            folder = tmp / split / f"{split}2017"
            folder.mkdir(parents=True)
            for index, image_id in enumerate(ids[split]):
                mini = render_coco_image(seed, split, index)
                file_name = f"{image_id:012d}.jpg"
                Image.fromarray(mini.scene.image).save(folder / file_name, quality=JPEG_QUALITY)
                height, width = mini.scene.image.shape[:2]
                images.append(
                    {"license": mini.license, "file_name": file_name, "height": height, "width": width, "id": image_id}
                )
                for ann in mini.annotations:
                    ann_id = CROWD_ID_BASE + image_id if ann.iscrowd else next_ann_id
                    next_ann_id += 0 if ann.iscrowd else 1
                    annotations.append(_annotation_json(ann, image_id, ann_id))
            data = {
                "info": {
                    "description": "instructcv-mini stand-in for COCO 2017 (synthetic scenes)",
                    "url": "http://cocodataset.org",
                    "version": "1.0",
                    "year": 2017,
                    "contributor": "COCO Consortium (format); instructcv-mini (content)",
                    "date_created": "2017/09/01",
                },
                "licenses": LICENSES,
                "images": images,
                "annotations": annotations,
                "categories": [
                    {"supercategory": sup, "id": cid, "name": name}
                    for name, (cid, sup) in sorted(CATEGORIES.items(), key=lambda kv: kv[1][0])
                ],
            }
            ann_dir = tmp / "annotations" / "annotations"
            ann_dir.mkdir(parents=True, exist_ok=True)
            (ann_dir / f"instances_{split}2017.json").write_text(json.dumps(data, separators=(",", ":")))
        return [
            pack_zip(tmp / "train", out_dir / "train2017.zip"),
            pack_zip(tmp / "val", out_dir / "val2017.zip"),
            pack_zip(tmp / "annotations", out_dir / "annotations_trainval2017.zip"),
        ]


def _annotation_json(ann: MiniAnnotation, image_id: int, ann_id: int) -> dict:
    segmentation = uncompressed_rle(ann.mask) if ann.iscrowd else mask_polygons(ann.mask)
    return {
        "segmentation": segmentation,
        "area": float(ann.mask.sum()),
        "iscrowd": int(ann.iscrowd),
        "image_id": image_id,
        "bbox": [float(v) for v in ann.bbox],
        "category_id": CATEGORIES[ann.category][0],
        "id": ann_id,
    }


def mask_polygons(mask: np.ndarray) -> list[list[float]]:
    """COCO polygons (flattened ``[x1, y1, x2, y2, ...]``, pixel-edge coordinates) of ``mask``.

    Contours are traced on the mask upsampled 2x so the polygon runs a quarter pixel inside the
    outer pixel edges: pycocotools rasterises it back to exactly the same pixels. A hole (the
    ``ring`` shape) is spliced into its outer contour through a zero-width cut, the way annotators
    draw a ring as one polygon; the even-odd rasteriser then leaves the hole empty.
    """
    up = np.kron(mask.astype(np.uint8), np.ones((2, 2), np.uint8))
    contours, hierarchy = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return []
    hierarchy = hierarchy[0]
    polygons = []
    for i, contour in enumerate(contours):
        if hierarchy[i][3] != -1:  # a hole: handled with its parent
            continue
        points = contour.reshape(-1, 2)
        child = hierarchy[i][2]
        while child != -1:
            points = _splice(points, contours[child].reshape(-1, 2))
            child = hierarchy[child][0]
        if len(points) >= 3:
            coords = (points.astype(np.float64) + 0.5) / 2.0
            polygons.append([round(float(v), 2) for v in coords.ravel()])
    return polygons


def _splice(outer: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """One polygon: ``outer`` to its point nearest ``hole``, around the hole, and back."""
    d = ((outer[:, None, :].astype(np.int64) - hole[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(int(np.argmin(d)), d.shape)
    loop = np.concatenate([hole[j:], hole[: j + 1]])
    return np.concatenate([outer[: i + 1], loop, outer[i:]])


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE: run lengths over the column-major pixels, starting with zeros."""
    flat = mask.astype(np.uint8).flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"counts": [int(c) for c in counts], "size": [int(mask.shape[0]), int(mask.shape[1])]}


def _u(seed: int) -> int:
    """A non-negative seed for numpy's SeedSequence."""
    return int(seed) % (1 << 63)
