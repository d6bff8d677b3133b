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
- An unusable annotation is quarantined by its id and left out of the record's boxes and masks;
  its image stays with the other annotations. A box reaching more than 1 px outside its image
  is clipped to it (and reported); one within 1 px is kept as stored.
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
    sixteen_bit_warnings,
)
from instructcv_core.data.records import Box, Category, ImageRecord, QuarantineEntry, ReadWarning
from instructcv_core.data.schema import (
    AnnotationError,
    FieldErrors,
    as_int,
    as_list,
    as_mapping,
    as_number,
    as_str,
)

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

    The json is validated against the instances schema (`validate_instances`): structural
    problems stop the read with one `AnnotationError` naming the file and every bad field; an
    unusable annotation (a degenerate or out-of-image box, a malformed polygon) is quarantined by
    its id and its image kept with its other annotations; a box reaching partly outside its image
    is clipped to it (a ``box_clipped`` warning); an annotation of an image the file does not list
    is reported in the quarantine list.
    """
    root = Path(root)
    records: list[ImageRecord] = []
    quarantine: list[QuarantineEntry] = []
    read_warnings: list[ReadWarning] = []
    table: dict[int, Category] = {}
    for split in splits:
        rel_json = annotation_path(split)
        data = _load_json(require(root / rel_json, f"COCO {split} instances annotations"))
        instances = validate_instances(data, rel_json)
        for cat in instances.categories.values():
            table.setdefault(cat.id, cat)
        names = {cid: cat.name for cid, cat in instances.categories.items()}
        quarantine += instances.orphans + instances.rejected
        read_warnings += instances.clipped
        image_paths = [root / f"{split}2017/{image['file_name']}" for image in instances.images]
        sizes = check_images(image_paths)
        read_warnings += sixteen_bit_warnings(root, image_paths, sizes)
        for image, size in zip(instances.images, sizes):
            rel_image = f"{split}2017/{image['file_name']}"
            if isinstance(size, str):
                quarantine.append(QuarantineEntry(rel_image, size))
                continue
            if size != (image["width"], image["height"]):
                reason = f"image is {size[0]}x{size[1]} but {rel_json} says {image['width']}x{image['height']}"
                quarantine.append(QuarantineEntry(rel_image, reason))
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
    return ReadResult(records, [table[k] for k in sorted(table)], quarantine, read_warnings)


@dataclass
class Instances:
    """A validated instances json: what `read` needs, and what it must report.

    ``annotations``: image id -> its usable annotations (a copy with the clipped ``bbox`` where
    the box was clipped); ``rejected``: one quarantine entry per unusable annotation (by id; its
    image keeps the others); ``clipped``: one ``box_clipped`` warning per clipped box;
    ``orphans``: one quarantine entry per annotation whose ``image_id`` names no image.
    """

    categories: dict[int, Category]
    images: list[dict]
    annotations: dict[int, list[dict]] = field(default_factory=dict)
    rejected: list[QuarantineEntry] = field(default_factory=list)
    clipped: list[ReadWarning] = field(default_factory=list)
    orphans: list[QuarantineEntry] = field(default_factory=list)


def validate_instances(data: object, rel_json: str) -> Instances:
    """Check a COCO instances json against its schema (types, ids, ranges); see `read`.

    Schema: ``categories[i]`` {id: int >= 1, unique; name: non-empty string}, at least one;
    ``images[i]`` {id: int >= 0, unique; file_name: a plain file name; width, height: int >= 1};
    ``annotations[i]`` {id: int; image_id: int; category_id: one of the categories; bbox: 4
    finite numbers ``[x, y, w, h]`` with w, h > 0 overlapping the image; iscrowd: 0 or 1;
    segmentation: polygons (arrays of >= 3 x, y pairs) or RLE {size: [height, width], counts}}.

    Every structural problem (the first four lines' types, ids and ranges) is gathered and raised
    together (`SchemaErrors`, up to `MAX_LISTED` listed). An entry is named by its id once that id
    is valid (``annotations[id=10].category_id``), by its position otherwise (``images[3].id``).
    """
    data = as_mapping(data, rel_json, "")
    errors = FieldErrors(rel_json)
    categories: dict[int, Category] = {}
    category_ids: set[int] = set()  # every valid category id, also of entries with another bad field
    category_list = errors.check(as_list, data["categories"], rel_json, "categories", non_empty=True)
    for i, cat in enumerate(category_list or []):
        cat = errors.check(as_mapping, cat, rel_json, f"categories[{i}]")
        if cat is None:
            continue
        cid = errors.check(as_int, cat.get("id"), rel_json, f"categories[{i}].id", lo=1)
        if cid is not None and cid in category_ids:
            errors.add(f"categories[{i}].id", f"duplicate category id {cid}")
            continue
        where = f"categories[id={cid}]" if cid is not None else f"categories[{i}]"
        name = errors.check(as_str, cat.get("name"), rel_json, f"{where}.name")
        supercategory = errors.check(as_str, cat.get("supercategory", ""), rel_json, f"{where}.supercategory",
                                     non_empty=False)
        if cid is None:
            continue
        category_ids.add(cid)
        if name is not None and supercategory is not None:
            categories[cid] = Category(cid, name, supercategory)
    images: list[dict] = []
    by_id: dict[int, dict] = {}
    image_ids: set[int] = set()  # every valid image id, also of entries with another bad field
    for i, image in enumerate(errors.check(as_list, data["images"], rel_json, "images") or []):
        image = errors.check(as_mapping, image, rel_json, f"images[{i}]")
        if image is None:
            continue
        image_id = errors.check(as_int, image.get("id"), rel_json, f"images[{i}].id", lo=0)
        if image_id is not None and image_id in image_ids:
            errors.add(f"images[{i}].id", f"duplicate image id {image_id}")
            continue
        where = f"images[id={image_id}]" if image_id is not None else f"images[{i}]"
        file_name = errors.check(as_str, image.get("file_name"), rel_json, f"{where}.file_name")
        if file_name is not None and ("/" in file_name or "\\" in file_name or file_name in (".", "..")):
            errors.add(f"{where}.file_name", f"must be a plain file name, got {file_name!r}")
            file_name = None
        width = errors.check(as_int, image.get("width"), rel_json, f"{where}.width", lo=1)
        height = errors.check(as_int, image.get("height"), rel_json, f"{where}.height", lo=1)
        if image_id is None:
            continue
        image_ids.add(image_id)
        if None not in (file_name, width, height):
            by_id[image_id] = image
            images.append(image)
    result = Instances(categories, images)
    for i, ann in enumerate(errors.check(as_list, data["annotations"], rel_json, "annotations") or []):
        ann = errors.check(as_mapping, ann, rel_json, f"annotations[{i}]")
        if ann is None:
            continue
        ann_id = errors.check(as_int, ann.get("id"), rel_json, f"annotations[{i}].id")
        where = f"annotations[id={ann_id}]" if ann_id is not None else f"annotations[{i}]"
        image_id = errors.check(as_int, ann.get("image_id"), rel_json, f"{where}.image_id")
        category_id = errors.check(as_int, ann.get("category_id"), rel_json, f"{where}.category_id")
        # (without a category table every id would be "unknown": that table's own error says enough)
        if category_id is not None and category_list and category_id not in category_ids:
            errors.add(f"{where}.category_id", f"unknown category id {category_id}")
            continue
        if None in (ann_id, image_id, category_id):
            continue
        if image_id not in image_ids:
            result.orphans.append(QuarantineEntry(rel_json, f"{where}: image_id {image_id} names no image in images[]",
                                                  annotation=str(ann_id)))
            continue
        if image_id not in by_id:  # an image entry with errors of its own, already recorded
            continue
        image = by_id[image_id]
        try:
            bbox = _check_annotation(ann, image, rel_json, where)
        except AnnotationError as exc:
            result.rejected.append(QuarantineEntry(
                rel_json, f"{exc.problem} (image id {image_id}, {image['file_name']})", annotation=str(ann_id)))
            continue
        if bbox != ann["bbox"]:
            result.clipped.append(ReadWarning(
                "box_clipped", rel_json,
                f"{where}.bbox: box {ann['bbox']} reaches outside the {image['width']}x{image['height']} image "
                f"(image id {image_id}, {image['file_name']}); clipped to {bbox}",
                annotation=str(ann_id)))
            ann = {**ann, "bbox": bbox}
        result.annotations.setdefault(image_id, []).append(ann)
    errors.raise_if_any()
    return result


BOX_TOLERANCE_PX = 1.0  # how far a box may reach past the image edge unchanged (rounding in annotation tools)


def _check_annotation(ann: Mapping, image: Mapping, rel_json: str, where: str) -> list:
    """The per-annotation checks, whose failure makes only this annotation unusable.

    Returns the usable ``bbox``: as stored, or clipped to the image when it reaches more than
    `BOX_TOLERANCE_PX` outside it. Raises one `AnnotationError` naming every problem of the
    annotation (``field: problem; field: problem``).
    """
    errors = FieldErrors(rel_json)
    bbox = errors.check(_usable_bbox, ann.get("bbox"), image, rel_json, f"{where}.bbox")
    height, width = image["height"], image["width"]
    iscrowd = errors.check(as_int, ann.get("iscrowd", 0), rel_json, f"{where}.iscrowd", lo=0, hi=1)
    if "segmentation" not in ann:
        errors.add(f"{where}.segmentation", "missing")
    elif isinstance(ann["segmentation"], Mapping):
        segmentation = ann["segmentation"]
        size = errors.check(as_list, segmentation.get("size"), rel_json, f"{where}.segmentation.size")
        if size is not None and size != [height, width]:
            errors.add(f"{where}.segmentation.size", f"must be [height, width] = {[height, width]}, got {size}")
        counts = segmentation.get("counts")
        if not isinstance(counts, (str, list)) or not counts:
            errors.add(f"{where}.segmentation.counts", "must be a non-empty RLE string or array")
    elif iscrowd:
        errors.add(f"{where}.segmentation", "a crowd annotation must be RLE {size, counts}")
    else:
        for k, polygon in enumerate(errors.check(as_list, ann["segmentation"], rel_json, f"{where}.segmentation",
                                                 non_empty=True) or []):
            polygon = errors.check(as_list, polygon, rel_json, f"{where}.segmentation[{k}]")
            if polygon is None:
                continue
            if len(polygon) < 6 or len(polygon) % 2:
                errors.add(f"{where}.segmentation[{k}]",
                           f"a polygon needs an even number (>= 6) of coordinates, got {len(polygon)}")
            elif not all(type(v) in (int, float) and math.isfinite(v) for v in polygon):
                errors.add(f"{where}.segmentation[{k}]", "coordinates must be finite numbers")
    if errors.errors:
        raise AnnotationError(rel_json, "", "; ".join(f"{e.field}: {e.problem}" for e in errors.errors))
    return bbox


def _usable_bbox(value: object, image: Mapping, rel_json: str, field_path: str) -> list:
    """``[x, y, w, h]`` with w, h > 0, as stored or clipped to the image; an error if it misses the image."""
    bbox = as_list(value, rel_json, field_path)
    if len(bbox) != 4:
        raise AnnotationError(rel_json, field_path, f"must hold 4 numbers [x, y, w, h], got {len(bbox)}")
    x, y = (as_number(v, rel_json, f"{field_path}[{k}]") for k, v in enumerate(bbox[:2]))
    w, h = (as_number(v, rel_json, f"{field_path}[{k}]", positive=True) for k, v in enumerate(bbox[2:], 2))
    width, height = image["width"], image["height"]
    tol = BOX_TOLERANCE_PX
    if x >= -tol and y >= -tol and x + w <= width + tol and y + h <= height + tol:
        return bbox
    x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))
    if x1 <= x0 or y1 <= y0:
        raise AnnotationError(rel_json, field_path, f"box {[x, y, w, h]} lies outside the {width}x{height} image")
    return [x0, y0, x1 - x0, y1 - y0]


def annotation_is_usable(ann: Mapping, image: Mapping) -> bool:
    """Whether `read` keeps this annotation (the masks skip the ones it quarantined)."""
    try:
        _check_annotation(ann, image, "", "")
    except AnnotationError:
        return False
    return True


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
        if not annotation_is_usable(ann, info):  # quarantined by `read`: neither box nor mask
            continue
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
