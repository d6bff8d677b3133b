"""The common record every raw-dataset reader produces: one `ImageRecord` per (image, split).

Conventions (all readers follow them, whatever the on-disk format):
- Paths are POSIX strings relative to the dataset root (the extracted folder); the root itself is
  stored beside the records (see `write_records` / `read_records`).
- Boxes are COCO-style ``xywh`` in absolute pixels with a top-left origin and pixel-edge
  coordinates: a box covering columns 10..19 inclusive has ``x=10, w=10``.
- Masks stay on disk in their native format; ``mask_format`` names it so that
  `instructcv_core.data.labels` can decode it (per-class boolean masks, void pixels reported apart).
- Depth stays on disk in its native format; ``depth_format`` names it and decoding always yields
  metres as float32 with 0 meaning "no measurement".
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

# Mask formats: how a file (or annotation reference) encodes per-pixel classes.
MASK_FORMATS = {
    "ade20k_index": "single-channel PNG, 0 = other (ignored), 1..150 = objectInfo150 index",
    "voc_palette": "palette PNG, index = class (0 background, 1..20), 255 = void",
    "pets_trimap": "PNG trimap, 1 = pet, 2 = background, 3 = boundary (void)",
    "binary_l": "grayscale PNG, >= 128 = the record's category (FSS-1000)",
    "coco_instances": "polygons/RLE in the instances json named by mask_path, keyed by image id",
}
# Depth formats: how a file encodes depth; decoders return metres.
DEPTH_FORMATS = {
    "png_uint16_mm": "16-bit PNG in millimetres, 0 = invalid (BTS/NYUv2 export)",
    "sunrgbd_png": "16-bit PNG, bits rotated right by 3, millimetres, capped at 8 m (SUN RGB-D toolbox)",
}


@dataclass(frozen=True)
class Box:
    """One annotated object box: ``xywh`` in absolute pixels, top-left origin."""

    category: str
    category_id: int
    x: float
    y: float
    w: float
    h: float
    iscrowd: bool = False
    difficult: bool = False


@dataclass(frozen=True)
class Category:
    """A dataset's own category: its native id (COCO ids are not contiguous) and name."""

    id: int
    name: str
    supercategory: str = ""


@dataclass
class ImageRecord:
    """One image of one split of one source dataset, with whichever labels exist."""

    dataset: str
    image_id: str
    split: str
    image_path: str
    width: int
    height: int
    categories: list[str] = field(default_factory=list)  # category names present in the labels
    boxes: list[Box] = field(default_factory=list)
    mask_path: str | None = None
    mask_format: str | None = None
    depth_path: str | None = None
    depth_format: str | None = None
    depth_dense_path: str | None = None  # hole-filled depth where the dataset has one (NYUv2 `depths`)
    label: int | None = None  # class index for classification datasets
    label_name: str | None = None
    species: str | None = None  # Oxford-IIIT Pet: "cat" | "dog"

    def __post_init__(self) -> None:
        if self.mask_format is not None and self.mask_format not in MASK_FORMATS:
            raise ValueError(f"unknown mask_format {self.mask_format!r} for {self.image_path}")
        if self.depth_format is not None and self.depth_format not in DEPTH_FORMATS:
            raise ValueError(f"unknown depth_format {self.depth_format!r} for {self.image_path}")


@dataclass(frozen=True)
class QuarantineEntry:
    """A source file a reader could not use, and why (reported, never silently dropped).

    ``annotation`` is set when only one annotation of ``path`` is unusable (the image stays, with
    its other annotations): COCO's annotation id (``"10"``), or ``object<k>:<name>`` for the k-th
    (0-based) ``<object>`` of a VOC XML file. None means the whole file (or its image) is unused.
    """

    path: str
    reason: str
    annotation: str | None = None


@dataclass(frozen=True)
class ReadWarning:
    """Something a reader changed in usable input to keep it, counted and reported (the data stays).

    ``kind``: ``box_clipped`` (a box reaching outside its image, clipped to it), ``depth_masked``
    (NaN, infinite, negative or implausible depth pixels set to 0 = no measurement) or
    ``sixteen_bit_to_rgb`` (a 16-bit grey photograph scaled to 8-bit RGB when read). ``path``
    and ``annotation`` name the file and annotation as a `QuarantineEntry` does.
    """

    kind: str
    path: str
    detail: str
    annotation: str | None = None


def report_entry(entry: QuarantineEntry | ReadWarning) -> dict:
    """The JSON object of a report line; ``annotation`` only where set (older reports had none)."""
    row = asdict(entry)
    if row.get("annotation") is None:
        row.pop("annotation", None)
    return row


_BOX_TYPE = pa.struct(
    [
        ("category", pa.string()),
        ("category_id", pa.int64()),
        ("x", pa.float64()),
        ("y", pa.float64()),
        ("w", pa.float64()),
        ("h", pa.float64()),
        ("iscrowd", pa.bool_()),
        ("difficult", pa.bool_()),
    ]
)
RECORD_SCHEMA = pa.schema(
    [
        ("dataset", pa.string()),
        ("image_id", pa.string()),
        ("split", pa.string()),
        ("image_path", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("categories", pa.list_(pa.string())),
        ("boxes", pa.list_(_BOX_TYPE)),
        ("mask_path", pa.string()),
        ("mask_format", pa.string()),
        ("depth_path", pa.string()),
        ("depth_format", pa.string()),
        ("depth_dense_path", pa.string()),
        ("label", pa.int64()),
        ("label_name", pa.string()),
        ("species", pa.string()),
    ]
)


def write_records(
    records: list[ImageRecord], path: Path, root: Path, categories: list[Category]
) -> Path:
    """Write records as Parquet atomically; the dataset root and category table go in its metadata."""
    rows = [asdict(r) for r in records]
    table = pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)
    meta = {
        b"instructcv.root": str(Path(root).resolve()).encode(),
        b"instructcv.categories": json.dumps([asdict(c) for c in categories]).encode(),
    }
    table = table.replace_schema_metadata(meta)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))
    return path


def read_records(path: Path) -> tuple[list[ImageRecord], Path, list[Category]]:
    """Read records written by `write_records`: (records, dataset root, categories)."""
    table = pq.read_table(path)
    meta = table.schema.metadata or {}
    if b"instructcv.root" not in meta:
        raise ValueError(f"{path}: not a records file (no instructcv.root in its Parquet metadata)")
    root = Path(meta[b"instructcv.root"].decode())
    categories = [Category(**c) for c in json.loads(meta[b"instructcv.categories"])]
    records = []
    for row in table.to_pylist():
        row["boxes"] = [Box(**b) for b in row["boxes"]]
        records.append(ImageRecord(**row))
    return records, root, categories


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
