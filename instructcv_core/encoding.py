"""Visual target encodings v(y) of the four InstructCV tasks, and their inverses.

InstructCV turns every vision task into image-to-image generation: the label ``y`` of a task is
drawn as an RGB image ``v(y)`` the diffusion model learns to output. This module holds one
``encode_*`` / ``decode_*`` pair per task. The ``decode_*`` functions are the simple, exact
inverses used for round-trip checks and quick inspection. The paper's full post-processing of
*generated* images (blur, HSV filters, corner templates, ...) lives elsewhere.

Array conventions (shared by every function here):

* images: ``uint8`` RGB, shape ``(H, W, 3)`` (RGB, not OpenCV's BGR);
* masks: ``bool``, shape ``(H, W)``;
* depth: ``float32`` metres, shape ``(H, W)``; 0 means "no measurement";
* boxes: ``(x, y, w, h)`` in *pixel-edge* coordinates: a box over columns 10..19 inclusive has
  ``x = 10, w = 10``; its right edge is ``x + w = 20``. This is the convention of COCO's ``bbox``
  and of ``cv2.boundingRect``.
* colours: ``(r, g, b)`` tuples of ints in 0..255, or a name of :data:`PALETTE`.

Where the official code (AlaaLab/InstructCV) differs from what is done here, the docstring says
so; the differences are also listed in ``docs/protocols.md``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import cv2
import numpy as np

TASKS = ("segmentation", "detection", "depth", "classification")

#: The 16 named colours of the official classification builder (``proc_oxford_pets_binary_ifelse``),
#: in its order. Names are lower case with spaces, as they appear in instructions
#: (the official dict spells some ``Brown``, ``RosyBrown``; its orange is (255, 128, 0), not CSS's).
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "purple": (128, 0, 128),
    "white": (255, 255, 255),
    "brown": (165, 42, 42),
    "gold": (255, 215, 0),
    "beige": (245, 245, 220),
    "violet": (238, 130, 238),
    "orange": (255, 128, 0),
    "maroon": (128, 0, 0),
    "indigo": (75, 0, 130),
    "aqua": (0, 255, 255),
    "coral": (255, 127, 80),
    "rosy brown": (188, 143, 143),
    "peru": (205, 133, 63),
}

#: Outline colour of detection targets. The official COCO builder draws ``outline="blue"``
#: (0, 0, 255); the paper's text says red. Both work: pass ``colour=``.
DEFAULT_BOX_COLOUR: tuple[int, int, int] = (0, 0, 255)
#: Outline width in pixels (official COCO setting; VOC used 5, Pets 6).
DEFAULT_BOX_WIDTH = 4
#: Depth that maps to gray level 255 (official: 255 = 10 m).
DEPTH_MAX_M = 10.0

Colour = tuple[int, int, int] | str
Box = tuple[float, float, float, float]


# --------------------------------------------------------------------------------------------
# helpers


def _rgb(colour: Colour) -> tuple[int, int, int]:
    """A colour as an (r, g, b) tuple of ints in 0..255; names are looked up in PALETTE."""
    if isinstance(colour, str):
        try:
            return PALETTE[colour.strip().lower()]
        except KeyError:
            raise ValueError(f"unknown colour name {colour!r}; known: {list(PALETTE)}") from None
    values = tuple(int(c) for c in colour)
    if len(values) != 3 or any(not 0 <= c <= 255 for c in values):
        raise ValueError(f"colour must be three ints in 0..255, got {colour!r}")
    return values  # type: ignore[return-value]


def _check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name} must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    return image


def round_half_up(v: float) -> int:
    """Round to the nearest integer, halves up (``floor(v + 0.5)``): 2.5 -> 3, -2.5 -> -2.

    Used for box edges and depth levels. Python's ``round`` and ``np.round`` round halves to even
    (``round(2.5) == 2``), which is why they are not used.
    """
    return int(math.floor(v + 0.5))


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


# --------------------------------------------------------------------------------------------
# segmentation


def encode_segmentation(mask: np.ndarray) -> np.ndarray:
    """Binary mask -> white-on-black RGB image (official per-class target).

    Pixel ``(i, j)`` is (255, 255, 255) where ``mask[i, j]`` is True and (0, 0, 0) elsewhere;
    output shape ``(H, W, 3)``, uint8. ``mask`` must be a bool array (build it as
    ``labels == class_id``); other dtypes raise ``TypeError`` so that a 0/255 label image or a
    label map cannot be passed by mistake.

    Void / ignore pixels (ADE20K 0 "other", VOC 255 boundary, Pets trimap border) are simply not
    the category: they are black, exactly like background. The encoding cannot mark them; an
    evaluation that should ignore them needs the void mask separately.
    """
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise TypeError(f"mask must be bool (e.g. labels == class_id), got {mask.dtype}")
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got {mask.shape}")
    image = np.zeros((*mask.shape, 3), dtype=np.uint8)
    image[mask] = 255
    return image


def decode_segmentation(image: np.ndarray, threshold: int = 127, channel: str | int = "mean") -> np.ndarray:
    """RGB image -> bool mask: foreground where the chosen channel value is ``> threshold``.

    ``channel="mean"`` uses the mean of the three channels (a float in 0..255); an int uses that
    channel of the array *as passed* (0 = R, 1 = G, 2 = B for the RGB images of this project).
    A 2-D (H, W) gray image is accepted too; ``channel`` is then ignored.

    The official evaluation reads predictions with ``cv2.imread`` (BGR) and keeps channel 0 > 10,
    i.e. the *blue* channel with threshold 10: on an RGB array that is
    ``decode_segmentation(image, threshold=10, channel=2)``. The default (mean > 127) is the exact
    inverse of :func:`encode_segmentation` and is robust to colour casts.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        values = image.astype(np.float32)
    elif image.ndim == 3:
        if channel == "mean":
            values = image.astype(np.float32).mean(axis=2)
        elif isinstance(channel, (int, np.integer)) and not isinstance(channel, bool):
            if not 0 <= channel < image.shape[2]:
                raise ValueError(f"channel {channel} out of range for {image.shape[2]} channels")
            values = image[:, :, int(channel)]
        else:
            raise ValueError(f"channel must be 'mean' or an int, got {channel!r}")
    else:
        raise ValueError(f"image must be (H, W) or (H, W, C), got {image.shape}")
    return values > threshold


# --------------------------------------------------------------------------------------------
# detection


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
    image = _check_image(image)
    rgb = np.array(_rgb(colour), dtype=np.uint8)
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
        out[y0:min(y0 + width, y1), x0:x1] = rgb  # top band
        out[max(y1 - width, y0):y1, x0:x1] = rgb  # bottom band
        out[y0:y1, x0:min(x0 + width, x1)] = rgb  # left band
        out[y0:y1, max(x1 - width, x0):x1] = rgb  # right band
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
    touching boxes merge into one. The official post-processing (``postDet.extract_bbox``: blur,
    HSV range, Otsu, Canny, ``approxPolyDP``; and the corner-template detector) is implemented
    elsewhere; note it measures perimeter with ``cv2.arcLength`` on the contour, not as here.
    """
    image = _check_image(image)
    rgb = np.array(_rgb(colour), dtype=np.int16)
    diff = np.abs(image.astype(np.int16) - rgb).max(axis=2)
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
# depth


def encode_depth(depth_m: np.ndarray, max_depth_m: float = DEPTH_MAX_M) -> np.ndarray:
    """Metric depth -> 8-bit gray image replicated to 3 channels (official: 255 = 10 m).

    ``gray = floor(clip(d, 0, max_depth_m) / max_depth_m * 255 + 0.5)``: linear, 0 m -> 0,
    ``max_depth_m`` -> 255, deeper values clipped to 255, rounded to the nearest level with halves
    up (5 m -> 127.5 -> 128). One level is ``max_depth_m / 255`` m (10/255 m = 3.92 cm by default),
    so the quantisation error is at most half a level (1.96 cm).

    Invalid depths (0 = no measurement, negative, NaN, inf) encode as 0, the same level as 0 m;
    depths below half a level (< 1.96 cm) are also 0. The encoding cannot tell them apart: keep
    the validity mask of the source depth for evaluation.

    Differences from the official (deleted) ``preprocess_nyuv2_mdet_.py``: it computed
    ``uint8(depth_mm / 1000 * 255 / 10)`` (truncation instead of rounding, no clipping) on depth
    mis-read as 8-bit (see :func:`depth_from_png_mm`).
    """
    depth = np.asarray(depth_m, dtype=np.float64)
    if depth.ndim != 2:
        raise ValueError(f"depth must be (H, W), got {depth.shape}")
    if not max_depth_m > 0:
        raise ValueError(f"max_depth_m must be > 0, got {max_depth_m}")
    valid = np.isfinite(depth) & (depth > 0)
    scaled = np.where(valid, np.clip(depth, 0.0, max_depth_m), 0.0) / max_depth_m * 255.0
    gray = np.floor(scaled + 0.5).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


def decode_depth(image: np.ndarray, max_depth_m: float = DEPTH_MAX_M) -> np.ndarray:
    """Gray (or colour) image -> float32 metres: ``mean(R, G, B) * max_depth_m / 255``.

    Exact inverse of :func:`encode_depth` up to quantisation (error <= ``max_depth_m / 510`` m for
    depths in ``[0, max_depth_m]``). Level 0 decodes to 0 m (= "no measurement"). Averaging the
    channels makes the decoder tolerant to slight colour casts in generated images; the official
    evaluation instead reads channel 0 (red) of the PIL image: ``image[..., 0] * 10 / 255``.
    A 2-D (H, W) gray image is accepted too.
    """
    image = np.asarray(image)
    if image.ndim == 3:
        values = image.astype(np.float64).mean(axis=2)
    elif image.ndim == 2:
        values = image.astype(np.float64)
    else:
        raise ValueError(f"image must be (H, W) or (H, W, C), got {image.shape}")
    return (values * (max_depth_m / 255.0)).astype(np.float32)


def depth_from_png_mm(raw: np.ndarray) -> np.ndarray:
    """Raw depth as read from a 16-bit millimetre PNG -> float32 metres (0 stays 0 = invalid).

    Integer input (uint16 from ``cv2.imread(path, cv2.IMREAD_UNCHANGED)``, or the int32 that
    Pillow gives for 16-bit PNGs) is divided by 1000: 1000 -> 1.0 m, 65535 -> 65.535 m. Floating
    input is taken to be metres already and returned as float32, unchanged.

    The official preprocessing read these PNGs with ``cv2.imread(path, 0)`` (IMREAD_GRAYSCALE),
    which converts 16-bit data to 8-bit by keeping the high byte (``v >> 8``): 1000 mm -> 3,
    5000 mm -> 19, so its depth targets came out near-black. To catch that mistake, uint8 and int8
    input raise ``ValueError``: real millimetre depth does not fit in 8 bits.
    """
    raw = np.asarray(raw)
    if np.issubdtype(raw.dtype, np.floating):
        return raw.astype(np.float32)
    if raw.dtype == np.bool_ or not np.issubdtype(raw.dtype, np.integer):
        raise TypeError(f"raw depth must be an integer (mm) or float (m) array, got {raw.dtype}")
    if raw.dtype.itemsize < 2:
        raise ValueError(
            f"raw depth is {raw.dtype}: a 16-bit millimetre PNG read as 8-bit keeps only its high "
            "byte (1000 mm -> 3); read it with cv2.IMREAD_UNCHANGED"
        )
    if raw.size and raw.min() < 0:
        raise ValueError("raw millimetre depth has negative values")
    return (raw.astype(np.float64) / 1000.0).astype(np.float32)


# --------------------------------------------------------------------------------------------
# classification


def encode_classification(colour: Colour, size: tuple[int, int]) -> np.ndarray:
    """A solid block of ``colour``: uint8 RGB of shape ``(height, width, 3)`` for ``size=(width, height)``.

    ``colour`` is an (r, g, b) tuple or a :data:`PALETTE` name. The official builder fills the
    target with the positive colour when the queried class is present and with the negative colour
    when it is absent (the absent class is named in the prompt).
    """
    width, height = (int(v) for v in size)
    if width < 1 or height < 1:
        raise ValueError(f"size must be positive (width, height), got {size!r}")
    out = np.empty((height, width, 3), dtype=np.uint8)
    out[:] = np.array(_rgb(colour), dtype=np.uint8)
    return out


def _mean_rgb(image: np.ndarray) -> np.ndarray:
    image = _check_image(image)
    return image.reshape(-1, 3).astype(np.float64).mean(axis=0)


def classification_margin(image: np.ndarray, positive: Colour, negative: Colour) -> float:
    """``dist(mean, negative) - dist(mean, positive)``, Euclidean in RGB (0..255 units).

    ``mean`` is the mean RGB colour over all pixels. Positive margin: the image is nearer the
    positive colour (class present); negative: nearer the negative colour; 0: a tie. Its absolute
    value serves as a confidence, and as input to the official near-tie rule.
    """
    mean = _mean_rgb(image)
    pos = np.array(_rgb(positive), dtype=np.float64)
    neg = np.array(_rgb(negative), dtype=np.float64)
    return float(np.linalg.norm(mean - neg) - np.linalg.norm(mean - pos))


def decode_classification(image: np.ndarray, positive: Colour, negative: Colour) -> bool:
    """True iff the image's mean RGB colour is strictly nearer (Euclidean) to ``positive`` than to
    ``negative``, i.e. ``classification_margin(...) > 0``; an exact tie gives False."""
    return classification_margin(image, positive, negative) > 0


def draw_colour_pair(
    rng: np.random.Generator, palette: Mapping[str, object] | Sequence[str] = PALETTE
) -> tuple[str, str]:
    """Two distinct colour names ``(positive, negative)`` from ``palette``, uniform over the
    ``n * (n - 1)`` ordered pairs (n = 16 for :data:`PALETTE`: 240 pairs).

    Draws ``i ~ U{0..n-1}`` then ``j ~ U{0..n-2}``, shifting ``j`` up by one when ``j >= i``;
    deterministic for a given generator state. (The official builder drew two distinct names
    with Python's ``random``; its sequence is not reproduced.)
    """
    names = list(palette)
    n = len(names)
    if n < 2:
        raise ValueError("palette needs at least two colours")
    i = int(rng.integers(n))
    j = int(rng.integers(n - 1))
    if j >= i:
        j += 1
    return names[i], names[j]


__all__ = [
    "DEFAULT_BOX_COLOUR",
    "DEFAULT_BOX_WIDTH",
    "DEPTH_MAX_M",
    "PALETTE",
    "TASKS",
    "box_pixel_edges",
    "classification_margin",
    "decode_classification",
    "decode_depth",
    "decode_detection",
    "decode_segmentation",
    "depth_from_png_mm",
    "draw_colour_pair",
    "encode_classification",
    "encode_depth",
    "encode_detection",
    "encode_segmentation",
    "round_half_up",
]
