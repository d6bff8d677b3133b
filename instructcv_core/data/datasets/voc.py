"""PASCAL VOC 2012 (segmentation + detection): reader of the official devkit layout.

Layout (root = ``VOCdevkit/VOC2012/``)::

    JPEGImages/<id>.jpg                       ids like 2007_000033
    Annotations/<id>.xml                      boxes (detection)
    SegmentationClass/<id>.png                palette PNG, index = class
    SegmentationObject/<id>.png               palette PNG, index = instance
    ImageSets/Main/{train,val,trainval}.txt   detection image lists
    ImageSets/Segmentation/{train,val,trainval}.txt

Conventions:
- For each split the images are ``Main[split] ∪ Segmentation[split]``; a record gets boxes when
  its image is in ``Main[split]`` and the class mask (``mask_format = "voc_palette"``) when it is in
  ``Segmentation[split]``.
- XML boxes are 1-based inclusive integer pixel indices; the record box is
  ``x = xmin - 1, y = ymin - 1, w = xmax - xmin + 1, h = ymax - ymin + 1`` (pixel-edge xywh).
  ``difficult`` is kept on the box (absent tag = 0).
- An unusable ``<object>`` (no ``bndbox``, an inverted or out-of-image box, an unknown class) is
  quarantined alone, named ``object<k>:<name>`` (`voc_xml.object_id`); its image keeps the other
  boxes. A problem with the whole XML (unreadable, a bad ``size``) quarantines the image.
- Category ids are 1..20 in the devkit's order; masks use 0 = background and 255 = void
  (object boundaries and regions the annotators could not label), both excluded from categories.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from instructcv_core.data.datasets.base import (
    DatasetSpec,
    ReadResult,
    RemoteFile,
    check_images,
    require,
    sixteen_bit_warnings,
)
from instructcv_core.data.images import read_label
from instructcv_core.data.records import Box, Category, ImageRecord, QuarantineEntry, ReadWarning
from instructcv_core.data.schema import AnnotationError
from instructcv_core.data.voc_xml import UnsafeXmlError, object_id, parse_voc_xml

CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
VOID = 255
SPLITS = ("train", "val")

SPEC = DatasetSpec(
    name="voc",
    title="PASCAL VOC 2012 (trainval)",
    licence=(
        "The VOC 2012 images come from Flickr: their use must respect Flickr's terms of use. The "
        "annotations are provided by the PASCAL VOC challenge organisers for research use."
    ),
    citation=(
        "Everingham, M., Van Gool, L., Williams, C. K. I., Winn, J., Zisserman, A. The PASCAL Visual "
        "Object Classes (VOC) Challenge. IJCV 88(2), 2010."
    ),
    homepage="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/",
    files=(
        RemoteFile(
            "VOCtrainval_11-May-2012.tar",
            (
                "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
                "https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
                "http://pjreddie.com/media/files/VOCtrainval_11-May-2012.tar",
            ),
            # TFDS's sha256; torchvision publishes md5:6cd6e144f989b92b3379bac3b3de84fd for the same file
            "sha256:e14f763270cf193d0b5f74b169f44157a4b0c6efa708f4dd0ff78ee691763bcb",
            size=1_999_639_040,
        ),
    ),
    root_subdir="VOCdevkit/VOC2012",
    marker="ImageSets/Segmentation/val.txt",
)


def read_list(path: Path) -> list[str]:
    """Image ids of an ImageSets list (first column; per-class lists carry a second one)."""
    text = require(path, "VOC image-set list").read_text()
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def parse_annotation(
    path: Path, label: str | None = None
) -> tuple[tuple[int, int] | None, list[Box], list[QuarantineEntry]]:
    """(width, height), boxes (pixel-edge xywh) and rejected objects of one Annotations/<id>.xml.

    The size is None when the XML states none. The file is validated by
    `instructcv_core.data.voc_xml` (errors name the file and the field, e.g. ``object[1].bndbox``);
    an unusable object (or one of an unknown class) is a quarantine entry naming it
    (``annotation`` = ``object<k>:<name>``) and the other objects stay.
    """
    label = label or str(path)
    annotation = parse_voc_xml(path, label)
    rejected = [(r.index, QuarantineEntry(label, r.error.problem, annotation=r.object_id)) for r in annotation.rejected]
    boxes = []
    for obj in annotation.objects:
        if obj.name not in CLASSES:
            rejected.append((obj.index, QuarantineEntry(label, f"object[{obj.index}].name: unknown class {obj.name!r}",
                                                        annotation=object_id(obj.index, obj.name))))
            continue
        boxes.append(
            Box(obj.name, CLASSES.index(obj.name) + 1, obj.xmin - 1, obj.ymin - 1, obj.xmax - obj.xmin + 1,
                obj.ymax - obj.ymin + 1, difficult=obj.difficult)
        )
    return annotation.size, boxes, [entry for _, entry in sorted(rejected, key=lambda pair: pair[0])]


def read(root: Path, splits: tuple[str, ...] = SPLITS) -> ReadResult:
    """Records of ``Main[split] ∪ Segmentation[split]`` for each split."""
    root = Path(root)
    records: list[ImageRecord] = []
    quarantine: list[QuarantineEntry] = []
    warnings: list[ReadWarning] = []
    for split in splits:
        main = set(read_list(root / "ImageSets" / "Main" / f"{split}.txt"))
        seg = set(read_list(root / "ImageSets" / "Segmentation" / f"{split}.txt"))
        image_ids = sorted(main | seg)
        image_paths = [root / _image_rel(image_id) for image_id in image_ids]
        sizes = check_images(image_paths)
        warnings += sixteen_bit_warnings(root, image_paths, sizes)
        for image_id, size in zip(image_ids, sizes):
            record = _record(root, image_id, size, split, image_id in main, image_id in seg, quarantine)
            if record is not None:
                records.append(record)
    categories = [Category(i + 1, name) for i, name in enumerate(CLASSES)]
    return ReadResult(records, categories, quarantine, warnings)


def class_masks(record: ImageRecord, root: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-class masks (index 1..20) and the void mask (index 255) of ``record``."""
    label = load_label(Path(root) / record.mask_path)
    masks = {CLASSES[int(v) - 1]: label == v for v in np.unique(label) if 0 < v <= len(CLASSES)}
    return masks, label == VOID


def load_label(path: Path) -> np.ndarray:
    """SegmentationClass PNG as its palette indices (never converted to RGB)."""
    label = read_label(path, ("P", "L"))
    bad = set(np.unique(label).tolist()) - set(range(len(CLASSES) + 1)) - {VOID}
    if bad:
        raise ValueError(f"{path}: indices {sorted(bad)} are neither 0..20 nor 255")
    return label


def _image_rel(image_id: str) -> str:
    return f"JPEGImages/{image_id}.jpg"


def _record(
    root: Path, image_id: str, size: tuple[int, int] | str, split: str, in_main: bool, in_seg: bool,
    quarantine: list[QuarantineEntry],
) -> ImageRecord | None:
    rel_image = _image_rel(image_id)
    if isinstance(size, str):
        quarantine.append(QuarantineEntry(rel_image, size))
        return None
    boxes: list[Box] = []
    names: set[str] = set()
    if in_main:
        rel_xml = f"Annotations/{image_id}.xml"
        try:
            xml_size, boxes, rejected = parse_annotation(root / rel_xml, rel_xml)
        except UnsafeXmlError:
            raise  # a hostile file means this is not the published dataset: stop
        except (AnnotationError, OSError) as exc:  # missing or malformed XML: this image's boxes are unusable
            quarantine.append(QuarantineEntry(rel_xml, f"unusable annotation ({type(exc).__name__}: {exc})"))
            return None
        if xml_size is not None and xml_size != size:
            reason = f"size {xml_size[0]}x{xml_size[1]} but the image is {size[0]}x{size[1]}"
            quarantine.append(QuarantineEntry(rel_xml, reason))
            return None
        quarantine += rejected  # unusable objects only: the image keeps its other boxes
        names |= {b.category for b in boxes}
    rel_mask = f"SegmentationClass/{image_id}.png" if in_seg else None
    if rel_mask is not None:
        try:
            label = load_label(root / rel_mask)
        except Exception as exc:
            quarantine.append(QuarantineEntry(rel_mask, f"unusable segmentation ({type(exc).__name__}: {exc})"))
            return None
        if label.shape != (size[1], size[0]):
            reason = f"mask is {label.shape[1]}x{label.shape[0]} but the image is {size[0]}x{size[1]}"
            quarantine.append(QuarantineEntry(rel_mask, reason))
            return None
        names |= {CLASSES[int(v) - 1] for v in np.unique(label) if 0 < v <= len(CLASSES)}
    return ImageRecord(
        dataset="voc",
        image_id=image_id,
        split=split,
        image_path=rel_image,
        width=size[0],
        height=size[1],
        categories=sorted(names),
        boxes=boxes,
        mask_path=rel_mask,
        mask_format="voc_palette" if rel_mask else None,
    )
