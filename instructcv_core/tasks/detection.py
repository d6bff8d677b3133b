"""Object detection: per (image, category), the input with an outline around every instance.

Target ``v(y)``: a copy of the input with an unfilled rectangle (blue, 4 px, as the official COCO
builder) drawn inside each box of the category. Post-processing finds the outlines again
(:mod:`instructcv_core.tasks.box_detectors`); the `paper` protocol scores the official GT-filtered
boxes with COCOeval, the `standard` one scored boxes with COCO AP.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from instructcv_core.instructions.templates import FP_TEMPLATES, render
from instructcv_core.tasks.arrays import check_image, round_half_up
from instructcv_core.tasks.base import (
    OVERLAY_RGB,
    MetricSpec,
    Prediction,
    Target,
    per_image,
    record_size,
    region_iou,
    standard_categories,
    swap_probe,
)
from instructcv_core.tasks.box_detectors import DEFAULT_BOX_COLOUR, detect_boxes, paper_boxes
from instructcv_core.tasks.category_names import prompt_name
from instructcv_core.tasks.colours import PALETTE, Colour, rgb
from instructcv_core.tasks.segmentation import (
    closed_set_query_counts,
    closed_set_questions,
    closed_set_swap_candidates,
    expected_target,
)

#: Outline width in pixels (official COCO setting; VOC used 5, Pets 6).
DEFAULT_BOX_WIDTH = 4

Box = tuple[float, float, float, float]


# --------------------------------------------------------------------------------------------
# encoding and decoding


def box_pixel_edges(box: Box, image_size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """Integer pixel edges ``(x0, y0, x1, y1)`` of a box, clipped to an image of ``(width, height)``.

    Each *edge* is rounded to the nearest pixel edge, halves up: ``x0 = floor(x + 0.5)``,
    ``x1 = floor(x + w + 0.5)`` (likewise for y). Rounding the edges, not the width, keeps a box's
    two sides where they are (``x=10.5, w=9`` covers edges 11..20, columns 11..19). The result
    covers columns ``x0..x1-1`` and rows ``y0..y1-1``; edges are then clipped to ``[0, W]`` and
    ``[0, H]``. Returns ``None`` when nothing of the box is left (zero area after rounding or
    clipping). Negative or non-finite ``w``/``h`` raise ``ValueError``.
    """
    x, y, w, h = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise ValueError(f"box has non-finite values: {box!r}")
    if w < 0 or h < 0:
        raise ValueError(f"box has negative size: {box!r}")
    width, height = image_size
    x0 = min(max(round_half_up(x), 0), width)
    y0 = min(max(round_half_up(y), 0), height)
    x1 = min(max(round_half_up(x + w), 0), width)
    y1 = min(max(round_half_up(y + h), 0), height)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def encode_detection(
    image: np.ndarray,
    boxes: Iterable[Box],
    colour: Colour = DEFAULT_BOX_COLOUR,
    width: int = DEFAULT_BOX_WIDTH,
) -> np.ndarray:
    """Input image + boxes -> a copy with an unfilled rectangle outline around every box.

    Each box ``(x, y, w, h)`` (pixel-edge coordinates, floats allowed) is converted to integer
    pixel edges by :func:`box_pixel_edges`: every edge rounded to the nearest pixel edge with halves
    up (``floor(v + 0.5)``), then clipped to the image. The outline is ``width`` pixels thick and
    lies *inside* the box: the outer edge of the outline is exactly the box edge, so the drawn
    pixels cover columns ``x0..x1-1`` and rows ``y0..y1-1`` and nothing outside. A clipped box gets
    its outline along the image border (the outline of the visible part). A box whose side is at
    most ``2 * width`` pixels has no interior left and comes out filled solid. Boxes with nothing
    left after rounding and clipping are skipped. Later boxes are drawn over earlier ones.

    ``colour`` is an (r, g, b) tuple or a :data:`PALETTE` name; default blue (0, 0, 255), the
    official COCO setting (the paper text says red: pass ``colour=(255, 0, 0)``).

    Difference from the official ``get_bbox_img``: PIL's ``rectangle([x, y, x+w, y+h])`` includes
    the pixel at ``x+w``, so the official outline reaches one pixel beyond the COCO box on the
    right and bottom; here the box edge is respected exactly.
    """
    image = check_image(image)
    value = np.array(rgb(colour), dtype=np.uint8)
    width = int(width)
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    out = image.copy()
    height_px, width_px = image.shape[:2]
    for box in boxes:
        edges = box_pixel_edges(box, (width_px, height_px))
        if edges is None:
            continue
        x0, y0, x1, y1 = edges
        out[y0:min(y0 + width, y1), x0:x1] = value  # top band
        out[max(y1 - width, y0):y1, x0:x1] = value  # bottom band
        out[y0:y1, x0:min(x0 + width, x1)] = value  # left band
        out[y0:y1, max(x1 - width, x0):x1] = value  # right band
    return out


def decode_detection(
    image: np.ndarray,
    colour: Colour = DEFAULT_BOX_COLOUR,
    tolerance: int = 60,
    min_perimeter: int = 10,
) -> list[tuple[int, int, int, int]]:
    """Image with drawn outlines -> boxes ``(x, y, w, h)`` (ints, pixel-edge coordinates).

    1. A pixel is "box colour" when ``max_c |image[..., c] - colour[c]| <= tolerance``.
    2. Those pixels are grouped into 8-connected components (``cv2.connectedComponentsWithStats``).
    3. Each component gives its bounding rectangle ``(x, y, w, h)``: leftmost column, top row,
       number of columns, number of rows spanned (same as ``cv2.boundingRect``).
    4. Rectangles with perimeter ``2 * (w + h) < min_perimeter`` are dropped (specks).
    5. The list is sorted by ``(y, x, w, h)``.

    This is the exact inverse of :func:`encode_detection` for boxes (after its rounding and
    clipping) that neither overlap nor touch (8-connected) each other, drawn on an image with no
    pixel within ``tolerance`` of the colour, and with ``2 * (w + h) >= min_perimeter``. A box lying
    wholly inside another's hollow interior without touching it is recovered too. Overlapping or
    touching boxes merge into one. The official post-processing of generated images (blur, HSV
    range, Otsu, Canny, ``approxPolyDP``; and the corner-template detector) is
    :mod:`instructcv_core.tasks.box_detectors`; note it measures perimeter with ``cv2.arcLength``
    on the contour, not as here.
    """
    image = check_image(image)
    value = np.array(rgb(colour), dtype=np.int16)
    diff = np.abs(image.astype(np.int16) - value).max(axis=2)
    hits = (diff <= tolerance).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(hits, connectivity=8)
    boxes = []
    for i in range(1, n):  # 0 is the background component
        x, y, w, h = (int(v) for v in stats[i, :4])
        if 2 * (w + h) < min_perimeter:
            continue
        boxes.append((x, y, w, h))
    boxes.sort(key=lambda b: (b[1], b[0], b[2], b[3]))
    return boxes


# --------------------------------------------------------------------------------------------
# evaluation


#: The last field of the official detection folders, ``{image}_{category}_det`` (``genGT.generate_coco_gt``).
OFFICIAL_FOLDER_TAG = "det"


def _folder_name(image_id: str, category: str) -> str:
    """The official ``{image}_{category}_det`` folder name ('_' inside names becomes '-'; spaces stay, as the
    official folders keep 'dining table', which its COCO name filter matches)."""
    clean = lambda text: str(text).strip().replace("_", "-")  # noqa: E731
    return f"{clean(image_id)}_{clean(category)}_{OFFICIAL_FOLDER_TAG}"


def filled_boxes(boxes, size: tuple[int, int]) -> np.ndarray:
    """bool ``(height, width)`` mask of ``size = (width, height)`` with every ``(x, y, w, h)`` box filled
    (corners rounded to whole pixels)."""
    width, height = size
    mask = np.zeros((height, width), bool)
    for x, y, w, h in boxes:
        x0, y0 = max(int(round(x)), 0), max(int(round(y)), 0)
        mask[y0:max(int(round(y + h)), y0), x0:max(int(round(x + w)), x0)] = True
    return mask


def _xyxy(box) -> tuple[float, float, float, float]:
    return float(box.x), float(box.y), float(box.x + box.w), float(box.y + box.h)


class DetectionEvaluation:
    """COCO, VOC: the official GT-filtered COCOeval mAP (paper); COCO AP with scores (standard)."""

    kind = "detection"
    metrics = MetricSpec(
        {"paper": {"map": (0, 100, True), "map50": (0, 100, True)},
         "standard": {"ap": (0, 100, True), "ap50": (0, 100, True), "ap75": (0, 100, True)}},
        {"paper": "map", "standard": "ap"})

    def metric_ranges(self, benchmark):
        return self.metrics.ranges

    def questions(self, bench, config, phrasings=None):
        return closed_set_questions(bench, config, "detection")

    def query_counts(self, benchmark, images, classes, present, phrasings):
        return closed_set_query_counts(images, classes, present)

    def swap_candidates(self, bench, config, rank):
        return closed_set_swap_candidates(bench)

    def swap_asks(self, asked, other):
        return [(asked, "asked")]

    def judge_swap(self, bench, pair, output_image, config, cache):
        """The boxes found in the output for A, filled, against the filled ground-truth boxes of A and of B."""
        asked = swap_probe(pair)
        record = bench.records[asked.image_id]
        size = record_size(record)
        answer = filled_boxes([(d.x, d.y, d.w, d.h) for d in detect_boxes(output_image(asked.output_digest), size=size)], size)

        def truth(category):
            return filled_boxes([(b.x, b.y, b.w, b.h) for b in record.boxes if b.category == category], size)

        return region_iou(answer, truth(asked.category)), region_iou(answer, truth(asked.other))

    def score(self, bench, outputs, output_image, target_image, config):
        from instructcv_core.evaluation.protocols import paper, standard

        predictions, folders, images = [], [], []
        for image_id, group in outputs.groupby("image_id", sort=False):
            record = bench.records[image_id]
            size = record_size(record)
            detections = []
            for row in group.itertuples():
                output = output_image(row.output_digest)
                found = detect_boxes(output, size=size)
                if row.paper:
                    gt = [_xyxy(b) for b in record.boxes if b.category == row.category]  # crowd boxes count (official)
                    folders.append((_folder_name(image_id, row.category), gt, paper_boxes(output, size)))
                if row.standard:
                    detections += [(row.category, (d.x, d.y, d.w, d.h), d.score) for d in found]
                predictions.append({"query_id": row.query_id,
                                    "boxes": json.dumps([[d.x, d.y, d.w, d.h, d.score] for d in found])})
            if group["standard"].any():  # images outside the standard subset are not its images
                gt_boxes = [(b.category, (b.x, b.y, b.w, b.h), bool(b.iscrowd), bool(b.difficult)) for b in record.boxes]
                images.append((image_id, size[0], size[1], gt_boxes, detections))
        out = {"predictions": pd.DataFrame(predictions)}
        if "paper" in config.protocols:
            out["paper"] = paper.detection_map(folders)
        if "standard" in config.protocols:
            categories = standard_categories(bench, config)
            det = lambda items: standard.detection_ap(items, categories)  # noqa: E731
            out["standard"] = {**det(images), "per_image": per_image(det, [i[0] for i in images], images, "ap")}
        return out


# --------------------------------------------------------------------------------------------
# the task


class DetectionTask:
    name = "detection"
    evaluations = {"detection": DetectionEvaluation()}
    instruction_hint = "detect/box/locate/find"
    decisive = False
    draws = "boxes"
    official_folder_tag = OFFICIAL_FOLDER_TAG
    _keywords = re.compile(r"\b(detect\w*|box\w*|bounding|locat\w*|find\w*|rectangle\w*)\b", re.IGNORECASE)

    def has_labels(self, record) -> bool:
        return bool(record.boxes)

    def targets(self, record, root: Path, image, class_names, config) -> list[Target]:
        """One outlined copy per category with a box (crowd boxes left out unless configured)."""
        by_category: dict[str, list[tuple[float, float, float, float]]] = {}
        for box in record.boxes:
            if box.iscrowd and not config.include_crowd:
                continue
            by_category.setdefault(box.category, []).append((box.x, box.y, box.w, box.h))
        colour = PALETTE[config.box_colour]
        return [
            Target(encode_detection(image, boxes, colour, config.box_width), name,
                   prompt_name(record.dataset, name), boxes=boxes)
            for name, boxes in sorted(by_category.items())
        ]

    def expected_pairs(self, record, class_names, config) -> int:
        return len({b.category for b in record.boxes if config.include_crowd or not b.iscrowd})

    def instruction_slots(self, row) -> dict[str, str]:
        return {"category": row.category_text}

    def recognise(self, instruction: str) -> str | None:
        match = self._keywords.search(instruction)
        return match.group(0) if match else None

    def instruction_arguments(self, instruction: str) -> dict:
        return {}

    def describe(self, output, image, arguments) -> Prediction:
        """The input with the found boxes and their scores drawn, and the boxes as JSON."""
        height, width = image.shape[:2]
        detections = detect_boxes(output, size=(width, height))
        thickness = max(2, round(min(width, height) / 150))
        drawn = encode_detection(image, [(d.x, d.y, d.w, d.h) for d in detections], colour=OVERLAY_RGB, width=thickness)
        scale = max(0.35, min(width, height) / 600)
        for d in detections:
            cv2.putText(drawn, f"{d.score:.2f}", (int(d.x), max(int(d.y) - 3, int(12 * scale) + 2)),
                        cv2.FONT_HERSHEY_SIMPLEX, scale, OVERLAY_RGB, max(1, thickness // 2), cv2.LINE_AA)
        boxes = [{"x": d.x, "y": d.y, "w": d.w, "h": d.h, "score": round(d.score, 6)} for d in detections]
        best = f" (best score {boxes[0]['score']:.2f})" if boxes else ""
        return Prediction(
            files={"boxes": (".boxes.png", drawn), "boxes_json": (".boxes.json", json.dumps(boxes, indent=1) + "\n")},
            fields={"boxes": boxes}, text=f"{len(boxes)} box{'es' if len(boxes) != 1 else ''}{best}")

    def preview(self, output, image, colour, colour2, config) -> np.ndarray:
        found = detect_boxes(output, size=(image.shape[1], image.shape[0]))
        return encode_detection(image, [(d.x, d.y, d.w, d.h) for d in found], (255, 0, 0), 2)

    def truth_preview(self, bench, row, target_image) -> np.ndarray:
        return expected_target(bench, row, target_image)

    def reconstruction_metrics(self, originals, round_trips) -> dict[str, float]:
        """``outline_iou``: IoU of the box-colour pixels (within 60 per channel of blue)."""
        blue = np.array(DEFAULT_BOX_COLOUR, dtype=np.int16)
        a = np.abs(originals.astype(np.int16) - blue).max(axis=3) <= 60
        b = np.abs(round_trips.astype(np.int16) - blue).max(axis=3) <= 60
        return {"outline_iou": float((a & b).sum() / max((a | b).sum(), 1))}

    def probe_instruction(self, bench, category, config) -> str:
        return render(FP_TEMPLATES[self.name], category=prompt_name(bench.dataset, category) if category else "object")


TASK = DetectionTask()

__all__ = ["DEFAULT_BOX_COLOUR", "DEFAULT_BOX_WIDTH", "OFFICIAL_FOLDER_TAG", "TASK", "DetectionEvaluation", "DetectionTask",
           "box_pixel_edges", "decode_detection", "encode_detection", "filled_boxes"]
