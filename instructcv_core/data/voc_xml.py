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
allocate without bound. Any other problem is an `AnnotationError` naming the file and the field
path (``object[2].bndbox.xmax``).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from instructcv_core.data.schema import AnnotationError, parse_int, parse_number

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


@dataclass(frozen=True)
class VocAnnotation:
    size: tuple[int, int] | None  # (width, height) when the file states one
    objects: list[VocObject]


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
        size = (
            parse_int(root.findtext("size/width"), label, "size.width", lo=1),
            parse_int(root.findtext("size/height"), label, "size.height", lo=1),
        )
    objects = [_object(obj, label, f"object[{i}]", size) for i, obj in enumerate(root.findall("object"))]
    return VocAnnotation(size, objects)


def _object(obj: ET.Element, label: str, where: str, size: tuple[int, int] | None) -> VocObject:
    name = (obj.findtext("name") or "").strip()
    if not name:
        raise AnnotationError(label, f"{where}.name", "missing")
    if obj.find("bndbox") is None:
        raise AnnotationError(label, f"{where}.bndbox", "missing")
    coords = {k: parse_number(obj.findtext(f"bndbox/{k}"), label, f"{where}.bndbox.{k}") for k in ("xmin", "ymin", "xmax", "ymax")}
    for lo, hi, extent in (("xmin", "xmax", 0), ("ymin", "ymax", 1)):
        if coords[lo] > coords[hi]:
            raise AnnotationError(label, f"{where}.bndbox", f"inverted box: {lo} {coords[lo]} > {hi} {coords[hi]}")
        if coords[lo] < 1 - BOX_TOLERANCE_PX or (size is not None and coords[hi] > size[extent] + BOX_TOLERANCE_PX):
            limit = f"1..{size[extent]}" if size is not None else ">= 1"
            raise AnnotationError(label, f"{where}.bndbox", f"{lo}..{hi} = {coords[lo]}..{coords[hi]} outside {limit}")
    difficult_text = (obj.findtext("difficult") or "").strip()
    difficult = bool(parse_int(difficult_text, label, f"{where}.difficult", lo=0, hi=1)) if difficult_text else False
    return VocObject(name, coords["xmin"], coords["ymin"], coords["xmax"], coords["ymax"], difficult)
