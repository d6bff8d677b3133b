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
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
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
from instructcv_core.data.schema import AnnotationError, as_int, as_list, as_mapping, as_number, as_str

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
    """Parse ``annotations/instances_<split>2017.json`` and check every image it lists.

    The json is validated against the instances schema (`validate_instances`): a structural
    problem is an `AnnotationError` naming the file and field; an annotation problem confined to
    one image (a degenerate or out-of-image box, a malformed polygon) quarantines that image; an
    annotation of an image the file does not list is reported in the quarantine list.
    """
    root = Path(root)
    records: list[ImageRecord] = []
    quarantine: list[QuarantineEntry] = []
    table: dict[int, Category] = {}
    for split in splits:
        rel_json = annotation_path(split)
        data = _load_json(require(root / rel_json, f"COCO {split} instances annotations"))
        instances = validate_instances(data, rel_json)
        for cat in instances.categories.values():
            table.setdefault(cat.id, cat)
        names = {cid: cat.name for cid, cat in instances.categories.items()}
        quarantine += instances.orphans
        rel_images = [f"{split}2017/{image['file_name']}" for image in instances.images]
        sizes = check_images([root / rel_image for rel_image in rel_images])
        for image, rel_image, size in zip(instances.images, rel_images, sizes):
            if isinstance(size, str):
                quarantine.append(QuarantineEntry(rel_image, size))
                continue
            if size != (image["width"], image["height"]):
                reason = f"image is {size[0]}x{size[1]} but {rel_json} says {image['width']}x{image['height']}"
                quarantine.append(QuarantineEntry(rel_image, reason))
                continue
            if image["id"] in instances.problems:
                quarantine.append(QuarantineEntry(rel_image, instances.problems[image["id"]]))
                continue
            boxes = [_box(ann, names) for ann in instances.annotations.get(image["id"], [])]
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


@dataclass
class Instances:
    """A validated instances json: what `read` needs, and what it must report.

    ``problems``: image id -> why that image's annotations are unusable (it is quarantined);
    ``orphans``: one quarantine entry per annotation whose ``image_id`` names no image.
    """

    categories: dict[int, Category]
    images: list[dict]
    annotations: dict[int, list[dict]]
    problems: dict[int, str] = field(default_factory=dict)
    orphans: list[QuarantineEntry] = field(default_factory=list)


def validate_instances(data: object, rel_json: str) -> Instances:
    """Check a COCO instances json against its schema (types, ids, ranges); see `read`.

    Schema: ``categories[i]`` {id: int >= 1, unique; name: non-empty string}, at least one;
    ``images[i]`` {id: int >= 0, unique; file_name: a plain file name; width, height: int >= 1};
    ``annotations[i]`` {id: int; image_id: int; category_id: one of the categories; bbox: 4
    finite numbers ``[x, y, w, h]`` with w, h > 0 inside the image (1 px tolerance); iscrowd: 0
    or 1; segmentation: polygons (arrays of >= 3 x, y pairs) or RLE {size: [height, width],
    counts}}.
    """
    data = as_mapping(data, rel_json, "")
    categories: dict[int, Category] = {}
    for i, cat in enumerate(as_list(data["categories"], rel_json, "categories", non_empty=True)):
        where = f"categories[{i}]"
        cat = as_mapping(cat, rel_json, where)
        cid = as_int(cat.get("id"), rel_json, f"{where}.id", lo=1)
        if cid in categories:
            raise AnnotationError(rel_json, f"{where}.id", f"duplicate category id {cid}")
        supercategory = cat.get("supercategory", "")
        categories[cid] = Category(cid, as_str(cat.get("name"), rel_json, f"{where}.name"),
                                   as_str(supercategory, rel_json, f"{where}.supercategory", non_empty=False))
    images: list[dict] = []
    by_id: dict[int, dict] = {}
    for i, image in enumerate(as_list(data["images"], rel_json, "images")):
        where = f"images[{i}]"
        image = as_mapping(image, rel_json, where)
        image_id = as_int(image.get("id"), rel_json, f"{where}.id", lo=0)
        if image_id in by_id:
            raise AnnotationError(rel_json, f"{where}.id", f"duplicate image id {image_id}")
        file_name = as_str(image.get("file_name"), rel_json, f"{where}.file_name")
        if "/" in file_name or "\\" in file_name or file_name in (".", ".."):
            raise AnnotationError(rel_json, f"{where}.file_name", f"must be a plain file name, got {file_name!r}")
        as_int(image.get("width"), rel_json, f"{where}.width", lo=1)
        as_int(image.get("height"), rel_json, f"{where}.height", lo=1)
        by_id[image_id] = image
        images.append(image)
    result = Instances(categories, images, {})
    for i, ann in enumerate(as_list(data["annotations"], rel_json, "annotations")):
        where = f"annotations[{i}]"
        ann = as_mapping(ann, rel_json, where)
        as_int(ann.get("id"), rel_json, f"{where}.id")
        image_id = as_int(ann.get("image_id"), rel_json, f"{where}.image_id")
        category_id = as_int(ann.get("category_id"), rel_json, f"{where}.category_id")
        if category_id not in categories:
            raise AnnotationError(rel_json, f"{where}.category_id", f"unknown category id {category_id}")
        if image_id not in by_id:
            result.orphans.append(
                QuarantineEntry(rel_json, f"{where} (id {ann['id']}): image_id {image_id} names no image in images[]")
            )
            continue
        try:
            _check_annotation(ann, by_id[image_id], rel_json, where)
        except AnnotationError as exc:
            result.problems.setdefault(image_id, str(exc))
        result.annotations.setdefault(image_id, []).append(ann)
    return result


BOX_TOLERANCE_PX = 1.0  # how far a box may reach past the image edge (rounding in annotation tools)


def _check_annotation(ann: Mapping, image: Mapping, rel_json: str, where: str) -> None:
    """The per-annotation checks whose failure makes only this annotation's image unusable."""
    bbox = as_list(ann.get("bbox"), rel_json, f"{where}.bbox")
    if len(bbox) != 4:
        raise AnnotationError(rel_json, f"{where}.bbox", f"must hold 4 numbers [x, y, w, h], got {len(bbox)}")
    x, y = (as_number(v, rel_json, f"{where}.bbox[{k}]") for k, v in enumerate(bbox[:2]))
    w, h = (as_number(v, rel_json, f"{where}.bbox[{k}]", positive=True) for k, v in enumerate(bbox[2:], 2))
    width, height = image["width"], image["height"]
    tol = BOX_TOLERANCE_PX
    if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        raise AnnotationError(
            rel_json, f"{where}.bbox", f"box {[x, y, w, h]} reaches outside the {width}x{height} image"
        )
    iscrowd = as_int(ann.get("iscrowd", 0), rel_json, f"{where}.iscrowd", lo=0, hi=1)
    if "segmentation" not in ann:
        raise AnnotationError(rel_json, f"{where}.segmentation", "missing")
    segmentation = ann["segmentation"]
    if isinstance(segmentation, Mapping):
        size = as_list(segmentation.get("size"), rel_json, f"{where}.segmentation.size")
        if size != [height, width]:
            raise AnnotationError(rel_json, f"{where}.segmentation.size",
                                  f"must be [height, width] = {[height, width]}, got {size}")
        counts = segmentation.get("counts")
        if not isinstance(counts, (str, list)) or not counts:
            raise AnnotationError(rel_json, f"{where}.segmentation.counts", "must be a non-empty RLE string or array")
    elif iscrowd:
        raise AnnotationError(rel_json, f"{where}.segmentation", "a crowd annotation must be RLE {size, counts}")
    else:
        for k, polygon in enumerate(as_list(segmentation, rel_json, f"{where}.segmentation", non_empty=True)):
            polygon = as_list(polygon, rel_json, f"{where}.segmentation[{k}]")
            if len(polygon) < 6 or len(polygon) % 2:
                raise AnnotationError(rel_json, f"{where}.segmentation[{k}]",
                                      f"a polygon needs an even number (>= 6) of coordinates, got {len(polygon)}")
            if not all(type(v) in (int, float) and math.isfinite(v) for v in polygon):
                raise AnnotationError(rel_json, f"{where}.segmentation[{k}]", "coordinates must be finite numbers")


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


def _box(ann: dict, names: dict[int, str]) -> Box:
    x, y, w, h = (float(v) for v in ann["bbox"])
    return Box(names[ann["category_id"]], ann["category_id"], x, y, w, h, iscrowd=bool(ann.get("iscrowd", 0)))


def _load_json(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise DatasetLayoutError(f"{path}: not valid json ({exc})") from exc
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or key not in data:
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
