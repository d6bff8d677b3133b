"""MS-COCO 2017 detection (with instance polygons): reader of the official on-disk layout.

Layout (the three published zips extracted into one folder, the dataset root)::

    annotations/instances_{train,val}2017.json
    train2017/<12-digit image id>.jpg
    val2017/<12-digit image id>.jpg

Conventions:
- One record per image and split (``train``, ``val``); ``image_id`` is the json image id as text.
- Boxes come straight from ``bbox``, which COCO already stores as ``xywh`` in absolute pixels with
  a top-left origin (pixel-edge coordinates, floats). ``iscrowd`` is kept on the box.
- Category ids are COCO's own, non-contiguous ids (1..90 with gaps); names come from the json's
  ``categories`` array.
- Images without annotations are still records (no boxes, no categories).
- Masks stay in the json (``mask_format = "coco_instances"``, ``mask_path`` = the json path):
  `class_masks` decodes polygons and RLE with pycocotools; crowd regions (``iscrowd = 1``) are
  returned as the void mask, never as category pixels.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import warnings
from pathlib import Path

import numpy as np

from instructcv_core.data.datasets.base import (
    DatasetLayoutError,
    DatasetSpec,
    ReadResult,
    RemoteFile,
    check_images,
    require,
)
from instructcv_core.data.records import Box, Category, ImageRecord, QuarantineEntry

SPLITS = ("train", "val")
_S3 = "https://s3.amazonaws.com/images.cocodataset.org"

SPEC = DatasetSpec(
    name="coco",
    title="MS-COCO 2017 (detection, instance segmentation)",
    licence=(
        "COCO annotations: Creative Commons Attribution 4.0 (CC BY 4.0), (c) COCO Consortium. "
        "The COCO Consortium does not own the copyright of the images: their use must abide by the "
        "Flickr Terms of Use (each image carries its own Flickr licence id), and users take full "
        "responsibility for their use of the images."
    ),
    citation=(
        "Lin, T.-Y., Maire, M., Belongie, S., et al. Microsoft COCO: Common Objects in Context. "
        "ECCV 2014."
    ),
    homepage="https://cocodataset.org",
    files=(
        RemoteFile(
            "train2017.zip",
            ("http://images.cocodataset.org/zips/train2017.zip", f"{_S3}/zips/train2017.zip"),
            "md5:cced6f7f71b7629ddf16f17bbcfab6b2",
            size=19_336_861_798,
        ),
        RemoteFile(
            "val2017.zip",
            ("http://images.cocodataset.org/zips/val2017.zip", f"{_S3}/zips/val2017.zip"),
            "md5:442b8da7639aecaf257c1dceb8ba8c80",
            size=815_585_330,
        ),
        RemoteFile(
            "annotations_trainval2017.zip",
            (
                "http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
                f"{_S3}/annotations/annotations_trainval2017.zip",
            ),
            "md5:f4bbac642086de4f52a3fdda2de5fa2c",
            size=252_907_541,
        ),
    ),
    root_subdir=".",
    marker="annotations/instances_val2017.json",
)


def annotation_path(split: str) -> str:
    """The instances json of ``split``, relative to the dataset root."""
    return f"annotations/instances_{split}2017.json"


def read(root: Path, splits: tuple[str, ...] = SPLITS) -> ReadResult:
    """Parse ``annotations/instances_<split>2017.json`` and check every image it lists."""
    root = Path(root)
    records: list[ImageRecord] = []
    quarantine: list[QuarantineEntry] = []
    table: dict[int, Category] = {}
    for split in splits:
        rel_json = annotation_path(split)
        data = _load_json(require(root / rel_json, f"COCO {split} instances annotations"))
        names = {}
        for cat in data["categories"]:
            table.setdefault(cat["id"], Category(cat["id"], cat["name"], cat.get("supercategory", "")))
            names[cat["id"]] = cat["name"]
        anns_by_image: dict[int, list[dict]] = {}
        for ann in data["annotations"]:
            anns_by_image.setdefault(ann["image_id"], []).append(ann)
        rel_images = [f"{split}2017/{image['file_name']}" for image in data["images"]]
        sizes = check_images([root / rel_image for rel_image in rel_images])
        for image, rel_image, size in zip(data["images"], rel_images, sizes):
            if isinstance(size, str):
                quarantine.append(QuarantineEntry(rel_image, size))
                continue
            if size != (image["width"], image["height"]):
                reason = f"image is {size[0]}x{size[1]} but {rel_json} says {image['width']}x{image['height']}"
                quarantine.append(QuarantineEntry(rel_image, reason))
                continue
            boxes = [_box(ann, names, rel_json) for ann in anns_by_image.get(image["id"], [])]
            records.append(
                ImageRecord(
                    dataset="coco",
                    image_id=str(image["id"]),
                    split=split,
                    image_path=rel_image,
                    width=size[0],
                    height=size[1],
                    categories=sorted({b.category for b in boxes}),
                    boxes=boxes,
                    mask_path=rel_json,
                    mask_format="coco_instances",
                )
            )
    return ReadResult(records, [table[k] for k in sorted(table)], quarantine)


def class_masks(record: ImageRecord, root: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-category masks (instances merged) and the void mask (crowd regions) of ``record``.

    Polygons and RLE are rasterised by pycocotools at the image's native size.
    """
    coco = _load_coco(str(Path(root) / record.mask_path))
    image_id = int(record.image_id)
    if image_id not in coco.imgs:
        raise KeyError(f"{record.mask_path}: no image with id {image_id}")
    info = coco.imgs[image_id]
    void = np.zeros((info["height"], info["width"]), bool)
    masks: dict[str, np.ndarray] = {}
    for ann in coco.imgToAnns.get(image_id, []):
        with warnings.catch_warnings():  # pycocotools' numpy-2 copy-keyword deprecation notice
            warnings.simplefilter("ignore", DeprecationWarning)
            mask = coco.annToMask(ann).astype(bool)
        if ann.get("iscrowd", 0):
            void |= mask
            continue
        name = coco.cats[ann["category_id"]]["name"]
        masks[name] = masks[name] | mask if name in masks else mask
    return masks, void


def _box(ann: dict, names: dict[int, str], rel_json: str) -> Box:
    if ann["category_id"] not in names:
        raise DatasetLayoutError(f"{rel_json}: annotation {ann['id']} has unknown category_id {ann['category_id']}")
    x, y, w, h = (float(v) for v in ann["bbox"])
    return Box(names[ann["category_id"]], ann["category_id"], x, y, w, h, iscrowd=bool(ann.get("iscrowd", 0)))


def _load_json(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise DatasetLayoutError(f"{path}: not valid json ({exc})") from exc
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DatasetLayoutError(f"{path}: not a COCO instances file (no {key!r} array)")
    return data


def _load_coco(path: str):
    """The pycocotools COCO object of ``path``, parsed once per file version."""
    stat = Path(path).stat()
    return _load_coco_cached(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _load_coco_cached(path: str, _mtime_ns: int, _size: int):
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints progress lines
        return COCO(path)
