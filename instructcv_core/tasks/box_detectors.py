"""Boxes out of a generated detection image: the official detectors, and a confidence score of ours.

Detection follows the official code (AlaaLab/InstructCV, evaluate/postproc_det2.py): its
contour detector ``postDet.extract_bbox`` (:func:`detect_boxes`, which adds a confidence score
of our own) and its corner-template detector ``ext_coor`` (:func:`corner_boxes`);
:func:`paper_boxes` concatenates the two as the official script does. Each docstring says
which parts follow the official code and which are ours. Images are uint8 RGB ``(H, W, 3)``;
boxes ``(x, y, w, h)`` in pixel-edge coordinates unless a function says it returns
``(x0, y0, x1, y1)``; sizes are ``(width, height)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from instructcv_core.tasks.arrays import Size, check_image
from instructcv_core.tasks.colours import Colour, rgb

HsvRange = tuple[tuple[int, int, int], tuple[int, int, int]]

#: Outline colour of detection targets. The official COCO builder draws ``outline="blue"``
#: (0, 0, 255); the paper's text says red. Both work: pass ``colour=``.
DEFAULT_BOX_COLOUR: tuple[int, int, int] = (0, 0, 255)
#: OpenCV HSV range of the official contour detector (``extract_bbox``), blue outlines.
OFFICIAL_BLUE_HSV: HsvRange = ((100, 130, 50), (125, 255, 255))
#: OpenCV HSV range of the official corner-template detector (``ext_coor``).
CORNER_BLUE_HSV: HsvRange = ((100, 110, 70), (140, 255, 255))


# --------------------------------------------------------------------------------------------
# detection: helpers


@dataclass(frozen=True)
class Detection:
    """One detected box, ``(x, y, w, h)`` pixel-edge coordinates, with a score in [0, 1]."""

    x: float
    y: float
    w: float
    h: float
    score: float

    def xyxy(self) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1) = (x, y, x + w, y + h)``."""
        return (self.x, self.y, self.x + self.w, self.y + self.h)


def _to_bgr(output: np.ndarray, size: Size | None) -> np.ndarray:
    """RGB output -> BGR, resized with ``cv2.resize`` (INTER_LINEAR) like the official code."""
    bgr = cv2.cvtColor(check_image(output, "output"), cv2.COLOR_RGB2BGR)
    if size is not None:
        width, height = (int(v) for v in size)
        if bgr.shape[:2] != (height, width):
            bgr = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_LINEAR)
    return bgr


def colour_hsv_ranges(
    colour: Colour, hue_tolerance: int = 12, min_saturation: int = 130, min_value: int = 50
) -> list[HsvRange]:
    """OpenCV HSV ranges (H in 0..179) that select outlines of ``colour``.

    Blue (0, 0, 255) gets the official range :data:`OFFICIAL_BLUE_HSV`. Other colours (ours):
    the colour's hue +- ``hue_tolerance``, S >= ``min_saturation``, V >= ``min_value``; a range
    crossing hue 0/180 (red) is split in two. Colours too grey or dark to be told by hue raise
    ``ValueError`` (pass ``hsv_range`` to :func:`detect_boxes` instead).
    """
    value = rgb(colour)
    if value == (0, 0, 255):
        return [OFFICIAL_BLUE_HSV]
    hue, sat, val = (int(v) for v in cv2.cvtColor(np.uint8([[value[::-1]]]), cv2.COLOR_BGR2HSV)[0, 0])
    if sat < min_saturation or val < min_value:
        raise ValueError(f"colour {colour!r} (HSV {hue}, {sat}, {val}) is too grey or dark for a hue range")
    low, high = hue - hue_tolerance, hue + hue_tolerance
    if low < 0:
        hues = [(0, high), (180 + low, 179)]
    elif high > 179:
        hues = [(low, 179), (0, high - 180)]
    else:
        hues = [(low, high)]
    return [((h0, min_saturation, min_value), (h1, 255, 255)) for h0, h1 in hues]


def _normalise_ranges(hsv_range) -> list[HsvRange]:
    """One ``(low, high)`` pair or a sequence of pairs -> list of pairs."""
    arr = np.asarray(hsv_range)
    if arr.shape == (2, 3):
        return [tuple(tuple(int(v) for v in row) for row in arr)]  # type: ignore[list-item]
    if arr.ndim == 3 and arr.shape[1:] == (2, 3):
        return [tuple(tuple(int(v) for v in row) for row in pair) for pair in arr]  # type: ignore[misc]
    raise ValueError(f"hsv_range must be (low, high) HSV triples or a list of them, got {hsv_range!r}")


def _in_range(hsv: np.ndarray, ranges: Sequence[HsvRange]) -> np.ndarray:
    """uint8 0/255 mask: union of ``cv2.inRange`` over ``ranges``."""
    mask = np.zeros(hsv.shape[:2], dtype=np.uint8)
    for low, high in ranges:
        mask |= cv2.inRange(hsv, np.array(low, dtype=np.uint8), np.array(high, dtype=np.uint8))
    return mask


def _official_contour_boxes(
    bgr: np.ndarray, ranges: Sequence[HsvRange], min_perimeter: float
) -> list[tuple[int, int, int, int]]:
    """Boxes ``(x, y, w, h)`` of the official ``extract_bbox`` in its order (contour area ascending).

    ``bgr`` is already resized. medianBlur 3 -> ``bilateralFilter(img, 0, 0, 30)`` -> HSV
    ``inRange`` (pixels outside set to 0) -> gray -> Otsu -> Canny(50, 150) -> threshold
    (BINARY | TRIANGLE) -> external contours -> ``boundingRect(approxPolyDP(c, 0.02 * perimeter))``,
    dropping contours with ``arcLength < min_perimeter``.
    """
    filtered = cv2.bilateralFilter(cv2.medianBlur(bgr, 3), 0, 0, 30)
    keep = _in_range(cv2.cvtColor(filtered, cv2.COLOR_BGR2HSV), ranges)
    filtered[keep == 0] = 0
    gray = cv2.cvtColor(filtered, cv2.COLOR_BGR2GRAY)
    _, otsu = cv2.threshold(gray, 0, 255, cv2.THRESH_OTSU)
    edges = cv2.Canny(otsu, 50, 150, apertureSize=3)
    _, binary = cv2.threshold(edges, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_TRIANGLE)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    boxes = []
    for contour in sorted(contours, key=cv2.contourArea):  # stable sort, as the official list.sort
        perimeter = cv2.arcLength(contour, True)
        if perimeter < min_perimeter:
            continue
        approx = cv2.approxPolyDP(contour, 0.02 * perimeter, True)
        boxes.append(tuple(int(v) for v in cv2.boundingRect(approx)))
    return boxes


def _outline_strength(bgr: np.ndarray, ranges: Sequence[HsvRange]) -> tuple[np.ndarray, np.ndarray]:
    """``(strength, hit)``: float32 ``S * V / 255**2`` where the pixel is in ``ranges`` (else 0),
    and the in-range indicator as float32 0/1."""
    hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)
    hit = (_in_range(hsv, ranges) > 0).astype(np.float32)
    strength = hsv[:, :, 1].astype(np.float32) * hsv[:, :, 2].astype(np.float32) / 255.0**2
    return strength * hit, hit


def _side_max(values: np.ndarray, lo: int, hi: int, span: slice, axis: int) -> np.ndarray:
    """Max over rows (``axis=0``) or columns (``axis=1``) ``lo..hi`` inclusive (clipped to the
    image; 0 where nothing is left) of ``values``, for the positions ``span`` along the side."""
    limit = values.shape[axis]
    cut = slice(min(max(lo, 0), limit), min(max(hi + 1, 0), limit))
    block = values[cut, span] if axis == 0 else values[span, cut]
    return block.max(axis=axis, initial=0.0)


def _outline_score(strength: np.ndarray, hit: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """Ours: mean over the positions along the box outline (each column of the top and bottom
    side, each row of the left and right side) of ``band * (1 - outside)``.

    ``band`` is the best in-range strength across the outline band: ``t = max(1, round(0.02 *
    min(w, h)))`` px inward from the box edge plus 1 px slack each side. ``outside`` is 1 when
    one of the 2 px just beyond that band, outside the box, is in range too. So a crisp complete
    outline scores 1; faded (lower S*V) or partial outlines score less; and the inner ring of a
    thick outline (which the contour detector can report when the outer ring has a gap) scores
    about 0, since the outline itself lies just outside it.
    """
    x, y, w, h = box
    t = max(1, int(0.02 * min(w, h) + 0.5))
    cols, rows = slice(x, x + w), slice(y, y + h)
    x1, y1 = x + w - 1, y + h - 1  # last column / row inside the box
    sides = [  # (band lo, band hi, outside lo, outside hi, span, axis)
        (y - 1, y + t, y - 3, y - 2, cols, 0),  # top
        (y1 - t, y1 + 1, y1 + 2, y1 + 3, cols, 0),  # bottom
        (x - 1, x + t, x - 3, x - 2, rows, 1),  # left
        (x1 - t, x1 + 1, x1 + 2, x1 + 3, rows, 1),  # right
    ]
    values = np.concatenate([
        _side_max(strength, b0, b1, span, axis) * (1.0 - _side_max(hit, o0, o1, span, axis))
        for b0, b1, o0, o1, span, axis in sides
    ])
    return float(np.clip(values.mean(), 0.0, 1.0)) if values.size else 0.0


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two ``(x, y, w, h)`` pixel-edge boxes (plain areas, no +1)."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def _dedup(detections: list[Detection], iou_threshold: float) -> list[Detection]:
    """Sort by score desc then (y, x, w, h); drop boxes with IoU > threshold to a kept one."""
    kept: list[Detection] = []
    for det in sorted(detections, key=lambda d: (-d.score, d.y, d.x, d.w, d.h)):
        box = (det.x, det.y, det.w, det.h)
        if all(box_iou(box, (k.x, k.y, k.w, k.h)) <= iou_threshold for k in kept):
            kept.append(det)
    return kept


# --------------------------------------------------------------------------------------------
# detection: public


def detect_boxes(
    output: np.ndarray,
    size: Size | None = None,
    colour: Colour = DEFAULT_BOX_COLOUR,
    min_perimeter: float = 10.0,
    hsv_range=None,
) -> list[Detection]:
    """Outline boxes in a generated detection image, with a confidence score each.

    Boxes follow the official ``postDet.extract_bbox`` (paper Appendix A.3): resize the output
    to ``size = (width, height)`` (the original image size) with ``cv2.resize`` INTER_LINEAR,
    median blur 3, ``cv2.bilateralFilter(img, 0, 0, 30)``, OpenCV HSV ``inRange``, gray, Otsu,
    Canny(50, 150), threshold, external contours, ``approxPolyDP(0.02 * perimeter)``,
    ``boundingRect``; contours with ``cv2.arcLength < min_perimeter`` are dropped. The HSV range
    is ``hsv_range`` if given (one ``(low, high)`` pair or a list of pairs), else
    :func:`colour_hsv_ranges` (the official range for blue).

    Ours, not official: the score (see :func:`_outline_score`, computed on the resized output
    before filtering, in [0, 1]) and de-duplication (IoU > 0.9 keeps the higher score). The
    result is sorted by score descending, then ``(y, x)``. Returns ``[]`` when nothing is found.
    """
    ranges = _normalise_ranges(hsv_range) if hsv_range is not None else colour_hsv_ranges(colour)
    bgr = _to_bgr(output, size)
    strength, hit = _outline_strength(bgr, ranges)
    detections = [
        Detection(float(x), float(y), float(w), float(h), _outline_score(strength, hit, (x, y, w, h)))
        for x, y, w, h in _official_contour_boxes(bgr, ranges, min_perimeter)
    ]
    return _dedup(detections, 0.9)


def _block_sums(
    integral: np.ndarray, shape: tuple[int, int], pad: int, r0: int, r1: int, c0: int, c1: int
) -> np.ndarray:
    """For every image pixel (i, j): sum of ``mask[pad+i+r0 : pad+i+r1, pad+j+c0 : pad+j+c1]``."""
    h, w = shape

    def at(r: int, c: int) -> np.ndarray:
        return integral[pad + r : pad + r + h, pad + c : pad + c + w]

    return at(r1, c1) - at(r0, c1) - at(r1, c0) + at(r0, c0)


def _official_corner_dedup(points: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The official ``delete``: drop points within 5 px (both axes) of the first point, move
    the first point to the end, and repeat while a pass removed something.

    It stops at the first pass that removes nothing, so near-duplicates of later points can
    survive; this quirk is kept on purpose.
    """
    while True:
        first = points[0]
        rest = [p for p in points[1:] if abs(first[0] - p[0]) > 5 or abs(first[1] - p[1]) > 5]
        goal = rest + [first]
        if len(goal) == len(points):
            return goal
        points = goal


def corner_boxes(output: np.ndarray, size: Size | None = None) -> list[tuple[int, int, int, int]]:
    """Boxes ``(x0, y0, x1, y1)`` (ints) of the official corner-template detector ``ext_coor``.

    Follows the official code: resize to ``size`` (``cv2.resize`` INTER_LINEAR, no blur), HSV
    :data:`CORNER_BLUE_HSV`, 3x3 morphological close, 50-px zero pad. Pixel (i, j) is a
    top-left corner if ``mask[i, j:j+20]`` and ``mask[i:i+20, j]`` are all on, a bottom-right
    corner if ``mask[i, j-20:j]`` and ``mask[i-20:i, j]`` are all on (the pixel itself excluded,
    as in the official slices); both also need each of the four 10x10 blocks touching (i, j)
    (``[i-10:i]`` / ``[i:i+10]`` x ``[j-10:j]`` / ``[j:j+10]``) to have < 50 pixels on. Corners
    are listed in row-major scan order (top-left test first), de-duplicated by the official
    ``delete`` (:func:`_official_corner_dedup`), sorted by (row, col); then every pair
    ``i < j`` with ``col_i < col_j`` gives ``(col_i, row_i, col_j, row_j)``, whatever the corner
    types: O(n^2) boxes, no scores. Coordinates are those of the resized image (pad removed).
    Always blue (the official code has no colour option).
    """
    bgr = _to_bgr(output, size)
    mask = _in_range(cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV), [CORNER_BLUE_HSV])
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8), iterations=1)
    pad = 50
    on = cv2.copyMakeBorder((mask > 0).astype(np.uint8), pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    integral = cv2.integral(on)  # (H+2pad+1, W+2pad+1), integral[r, c] = on[:r, :c].sum()
    shape = mask.shape

    def block(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        return _block_sums(integral, shape, pad, r0, r1, c0, c1)

    sparse = (
        (block(-10, 0, -10, 0) < 50)
        & (block(-10, 0, 0, 10) < 50)
        & (block(0, 10, -10, 0) < 50)
        & (block(0, 10, 0, 10) < 50)
    )
    top_left = sparse & (block(0, 1, 0, 20) == 20) & (block(0, 20, 0, 1) == 20)
    bottom_right = sparse & (block(0, 1, -20, 0) == 20) & (block(-20, 0, 0, 1) == 20)
    rows, cols = np.nonzero(top_left | bottom_right)  # row-major order
    repeats = top_left[rows, cols].astype(int) + bottom_right[rows, cols].astype(int)
    points = [(int(r), int(c)) for r, c, n in zip(rows, cols, repeats) for _ in range(n)]
    if not points:
        return []
    corners = sorted(_official_corner_dedup(points))
    return [
        (ci, ri, cj, rj)
        for k, (ri, ci) in enumerate(corners)
        for rj, cj in corners[k + 1 :]
        if ci < cj
    ]


def paper_boxes(output: np.ndarray, size: Size | None) -> list[tuple[float, float, float, float]]:
    """The official ``pred_bbox.json`` list: ``extract_bbox`` boxes as ``(x0, y0, x1, y1)`` in
    its order (contour area ascending, blue, perimeter >= 10, no scores, no de-duplication),
    followed by :func:`corner_boxes`. The same boxes as :func:`detect_boxes` gives unless that
    removed near-duplicates, but in the official order."""
    bgr = _to_bgr(output, size)
    contour = [
        (float(x), float(y), float(x + w), float(y + h))
        for x, y, w, h in _official_contour_boxes(bgr, [OFFICIAL_BLUE_HSV], 10.0)
    ]
    return contour + [tuple(float(v) for v in b) for b in corner_boxes(output, size)]


__all__ = [
    "CORNER_BLUE_HSV",
    "DEFAULT_BOX_COLOUR",
    "OFFICIAL_BLUE_HSV",
    "Detection",
    "box_iou",
    "colour_hsv_ranges",
    "corner_boxes",
    "detect_boxes",
    "paper_boxes",
]
