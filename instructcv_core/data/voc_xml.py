"""PASCAL VOC annotation XML (VOC 2012 ``Annotations/``, Oxford-IIIT Pet ``xmls/``): parse and validate.

Schema of one file::

    <annotation>
      <size><width>W</width><height>H</height>...</size>      optional; when present W, H >= 1
      <object>                                                  direct children only (a person's
        <name>class</name>                                      <part>s have boxes of their own)
        <difficult>0|1</difficult>                              optional, absent = 0
        <bndbox><xmin/><ymin/><xmax/><ymax/></bndbox>           required: 1-based inclusive pixel
      </object>                                                 indices, xmin <= xmax, ymin <= ymax,
    </annotation>                                               within the image (1 px tolerance)

A file that declares a DTD or entities is refused whole (`UnsafeXmlError`), never parsed: the
published annotations have none, and entity expansion is the classic way to make a parser
allocate without bound. A problem with the whole file (not well-formed, a bad ``size``) is an
`AnnotationError` naming the file and every bad field. A problem confined to one ``<object>``
(no ``bndbox``, an inverted or out-of-image box, a missing name) rejects that object only
(`VocAnnotation.rejected`, every problem of it named: ``object[2].bndbox.xmax``); the others stay.
An object is identified by `object_id`: ``object<k>:<name>``, k its 0-based position among the
file's ``<object>`` elements (VOC objects carry no id of their own; the position is stable
because the published files never change).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from instructcv_core.data.schema import AnnotationError, FieldErrors, parse_int, parse_number

MAX_XML_BYTES = 1 << 20  # a VOC annotation is a few KB; anything larger is not one
BOX_TOLERANCE_PX = 1.0
_DECLARATION = re.compile(rb"<!(DOCTYPE|ENTITY)", re.IGNORECASE)


class UnsafeXmlError(AnnotationError):
    """An annotation XML with a DTD, entity declarations, or of implausible size: refused, not parsed."""


@dataclass(frozen=True)
class VocObject:
    name: str
    xmin: float
    ymin: float
    xmax: float
    ymax: float
    difficult: bool
    index: int = 0  # position among the file's <object> elements (see `object_id`)


@dataclass(frozen=True)
class RejectedObject:
    """An ``<object>`` that cannot be used: its `object_id` and every problem it has."""

    object_id: str
    error: AnnotationError
    index: int  # position among the file's <object> elements


@dataclass(frozen=True)
class VocAnnotation:
    size: tuple[int, int] | None  # (width, height) when the file states one
    objects: list[VocObject]
    rejected: list[RejectedObject] = field(default_factory=list)


def object_id(index: int, name: str) -> str:
    """How reports name the ``index``-th (0-based) ``<object>`` of a file: ``object3:cat``."""
    return f"object{index}:{name}" if name else f"object{index}"


def parse_voc_xml(path: Path, label: str | None = None) -> VocAnnotation:
    """Parse and validate one annotation file; ``label`` is how errors name it (default: the path)."""
    label = label or str(path)
    data = Path(path).read_bytes()
    if len(data) > MAX_XML_BYTES:
        raise UnsafeXmlError(label, "", f"{len(data):,} bytes; an annotation XML is at most {MAX_XML_BYTES:,}")
    if _DECLARATION.search(data):
        raise UnsafeXmlError(label, "", "declares a DTD or entities; refused without parsing")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise AnnotationError(label, "", f"not well-formed XML ({exc})") from None
    size = None
    if root.find("size") is not None:
        errors = FieldErrors(label)
        width = errors.check(parse_int, root.findtext("size/width"), label, "size.width", lo=1)
        height = errors.check(parse_int, root.findtext("size/height"), label, "size.height", lo=1)
        errors.raise_if_any()
        size = (width, height)
    objects, rejected = [], []
    for i, obj in enumerate(root.findall("object")):
        parsed = _object(obj, label, i, size)
        (rejected if isinstance(parsed, RejectedObject) else objects).append(parsed)
    return VocAnnotation(size, objects, rejected)


def _object(obj: ET.Element, label: str, index: int, size: tuple[int, int] | None) -> VocObject | RejectedObject:
    where = f"object[{index}]"
    errors = FieldErrors(label)
    name = (obj.findtext("name") or "").strip()
    if not name:
        errors.add(f"{where}.name", "missing")
    coords = {}
    if obj.find("bndbox") is None:
        errors.add(f"{where}.bndbox", "missing")
    else:
        coords = {k: errors.check(parse_number, obj.findtext(f"bndbox/{k}"), label, f"{where}.bndbox.{k}")
                  for k in ("xmin", "ymin", "xmax", "ymax")}
    for lo, hi, extent in (("xmin", "xmax", 0), ("ymin", "ymax", 1)):
        if coords.get(lo) is None or coords.get(hi) is None:
            continue
        if coords[lo] > coords[hi]:
            errors.add(f"{where}.bndbox", f"inverted box: {lo} {coords[lo]} > {hi} {coords[hi]}")
        elif coords[lo] < 1 - BOX_TOLERANCE_PX or (size is not None and coords[hi] > size[extent] + BOX_TOLERANCE_PX):
            limit = f"1..{size[extent]}" if size is not None else ">= 1"
            errors.add(f"{where}.bndbox", f"{lo}..{hi} = {coords[lo]}..{coords[hi]} outside {limit}")
    difficult_text = (obj.findtext("difficult") or "").strip()
    difficult = errors.check(parse_int, difficult_text, label, f"{where}.difficult", lo=0, hi=1) if difficult_text else 0
    if errors.errors:
        problem = "; ".join(f"{e.field}: {e.problem}" for e in errors.errors)
        return RejectedObject(object_id(index, name), AnnotationError(label, "", problem), index)
    return VocObject(name, coords["xmin"], coords["ymin"], coords["xmax"], coords["ymax"], bool(difficult), index)
