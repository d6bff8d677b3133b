"""Post-processing of generated outputs: exact values on small arrays, round trips through the
encodings of :mod:`instructcv_core.tasks`, and the official detectors on synthetic images."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from PIL import Image

from instructcv_core.tasks.arrays import resize_to
from instructcv_core.tasks.box_detectors import (
    CORNER_BLUE_HSV,
    OFFICIAL_BLUE_HSV,
    Detection,
    _dedup,
    _in_range,
    _official_corner_dedup,
    box_iou,
    colour_hsv_ranges,
    corner_boxes,
    detect_boxes,
    paper_boxes,
)
from instructcv_core.tasks.classification import classification_scores
from instructcv_core.tasks.depth import depth_metres, encode_depth
from instructcv_core.tasks.detection import encode_detection
from instructcv_core.tasks.segmentation import segmentation_mask, segmentation_scores

# --------------------------------------------------------------------------------------------
# synthetic images (none has a pixel in the blue or red HSV ranges)


def gray_image(width: int, height: int) -> np.ndarray:
    return np.full((height, width, 3), 128, dtype=np.uint8)


def noise_image(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Random R, G; B = min(R, G) // 2, so every hue lies between red-orange and green."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    image[..., 0] = np.maximum(image[..., 0], 40)  # keep hue away from pure red (0)
    image[..., 1] = np.maximum(image[..., 1], image[..., 0] // 2 + 30)
    image[..., 2] = np.minimum(image[..., 0], image[..., 1]) // 2
    return image


def gradient_image(width: int, height: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, 40)], axis=-1).astype(np.uint8)


def match_all(truth, detections, min_iou):
    """Greedy matching: each true (x, y, w, h) box takes its best unused detection."""
    left = [(d.x, d.y, d.w, d.h) for d in detections]
    ious = []
    for box in truth:
        assert left, f"no detection left for {box}"
        best = max(range(len(left)), key=lambda k: box_iou(box, left[k]))
        ious.append(box_iou(box, left.pop(best)))
    assert min(ious) > min_iou, ious
    return ious


# --------------------------------------------------------------------------------------------
# resize_to, segmentation


def test_resize_to_none_same_size_and_dtypes():
    rgb = noise_image(5, 4)
    assert resize_to(rgb, None) is rgb
    assert resize_to(rgb, (5, 4)) is rgb
    out = resize_to(rgb, (10, 8))
    assert out.shape == (8, 10, 3) and out.dtype == np.uint8
    pil = Image.fromarray(rgb).resize((10, 8), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(out, np.asarray(pil))
    assert resize_to(rgb[..., 0], (3, 2)).shape == (2, 3)
    flat = resize_to(np.full((4, 5), 7.25, dtype=np.float64), (9, 3))
    assert flat.dtype == np.float32 and flat.shape == (3, 9)
    np.testing.assert_allclose(flat, 7.25, rtol=0, atol=1e-5)
    with pytest.raises(TypeError):
        resize_to(np.zeros((4, 4), dtype=bool), (2, 2))


SEG = np.array(
    [[[0, 0, 0], [30, 0, 0]],
     [[0, 0, 20], [200, 200, 200]]],
    dtype=np.uint8,
)


def test_segmentation_scores_exact():
    np.testing.assert_allclose(segmentation_scores(SEG), [[0, 10], [20 / 3, 200]], rtol=1e-6)
    np.testing.assert_array_equal(segmentation_scores(SEG, channel=2), [[0, 0], [20, 200]])
    np.testing.assert_array_equal(segmentation_scores(SEG, channel=0), [[0, 30], [0, 200]])
    assert segmentation_scores(SEG).dtype == np.float32
    with pytest.raises(ValueError):
        segmentation_scores(SEG, channel=3)
    with pytest.raises(ValueError):
        segmentation_scores(SEG, channel="max")


def test_segmentation_mask_threshold_and_channel():
    np.testing.assert_array_equal(segmentation_mask(SEG), [[False, False], [False, True]])
    # mean 10 is not > 10; blue 20 is
    np.testing.assert_array_equal(segmentation_mask(SEG, threshold=10), [[False, False], [False, True]])
    # official paper protocol: blue channel > 10
    blue = segmentation_mask(SEG, threshold=10, channel=2)
    red = segmentation_mask(SEG, threshold=10, channel=0)
    np.testing.assert_array_equal(blue, [[False, False], [True, True]])
    np.testing.assert_array_equal(red, [[False, True], [False, True]])


def test_segmentation_resize_bilinear():
    # 2x2: left column black, right column white; width 2 -> 4 (Pillow bilinear, pixel centres)
    image = np.zeros((2, 2, 3), dtype=np.uint8)
    image[:, 1] = 255
    scores = segmentation_scores(image, size=(4, 2))
    np.testing.assert_allclose(scores, [[0, 63.75, 191.25, 255]] * 2, atol=1e-3)
    np.testing.assert_array_equal(segmentation_mask(image, size=(4, 2)), [[False, False, True, True]] * 2)
    assert segmentation_mask(image, size=(3, 5)).shape == (5, 3)


# --------------------------------------------------------------------------------------------
# detect_boxes


def test_colour_hsv_ranges():
    assert colour_hsv_ranges((0, 0, 255)) == [OFFICIAL_BLUE_HSV]
    assert colour_hsv_ranges("blue") == [OFFICIAL_BLUE_HSV]
    assert colour_hsv_ranges("red") == [((0, 130, 50), (12, 255, 255)), ((168, 130, 50), (179, 255, 255))]
    assert colour_hsv_ranges((0, 255, 0)) == [((48, 130, 50), (72, 255, 255))]
    assert colour_hsv_ranges((255, 0, 255)) == [((138, 130, 50), (162, 255, 255))]
    # hue 350.6 deg -> OpenCV 175; 175 + 12 wraps to 7
    assert colour_hsv_ranges((255, 0, 40)) == [
        ((163, 130, 50), (179, 255, 255)),
        ((0, 130, 50), (7, 255, 255)),
    ]
    with pytest.raises(ValueError):
        colour_hsv_ranges("white")


BOXES_256 = [
    [(70, 60, 120, 100)],
    [(10, 20, 60, 40), (100, 100, 120, 80)],
    [(10, 20, 60, 40), (100, 100, 120, 80), (30, 150, 50, 90)],
    [(10, 20, 60, 40), (100, 100, 120, 80), (30, 150, 50, 90), (180, 10, 60, 60)],
]


@pytest.mark.parametrize("background", [gray_image, noise_image, gradient_image])
@pytest.mark.parametrize("boxes", BOXES_256, ids=lambda b: f"{len(b)}box")
def test_detect_boxes_round_trip_256(background, boxes):
    encoded = encode_detection(background(256, 256), boxes)
    detections = detect_boxes(encoded)
    # the len(boxes) best-scored detections are the true boxes (extra ones, e.g. the inner ring
    # of an outline, score near 0)
    match_all(boxes, detections[: len(boxes)], 0.9)
    assert all(d.score > 0.9 for d in detections[: len(boxes)])
    assert all(d.score < 0.1 for d in detections[len(boxes):])
    if background is gray_image:  # clean: exact boxes, no extras
        assert sorted((d.x, d.y, d.w, d.h) for d in detections) == sorted(boxes)


@pytest.mark.parametrize(
    ("generation", "width", "min_iou"), [((256, 256), 4, 0.9), ((64, 64), 10, 0.9)]
)
def test_detect_boxes_resized_output(generation, width, min_iou):
    """Target drawn at original size 320x240, squashed to the generation size, detected at the
    original size again (``size=``)."""
    boxes = [(20, 30, 100, 80), (150, 40, 140, 150), (40, 150, 70, 60)]
    encoded = encode_detection(gradient_image(320, 240), boxes, width=width)
    output = resize_to(encoded, generation)
    detections = detect_boxes(output, size=(320, 240))
    match_all(boxes, detections[: len(boxes)], min_iou)
    for d in detections:
        assert 0 <= d.x and d.x + d.w <= 320 and 0 <= d.y and d.y + d.h <= 240


def test_detect_boxes_red_outline():
    boxes = [(10, 20, 60, 40), (100, 100, 120, 80)]
    encoded = encode_detection(gray_image(256, 256), boxes, colour="red")
    detections = detect_boxes(encoded, colour=(255, 0, 0))
    assert sorted((d.x, d.y, d.w, d.h) for d in detections) == sorted(boxes)
    assert detect_boxes(encoded) == []  # blue finds nothing
    # explicit ranges give the same result
    ranges = colour_hsv_ranges("red")
    assert detect_boxes(encoded, hsv_range=ranges) == detections
    assert detect_boxes(encoded, hsv_range=ranges[0]) == detections  # a single pair also works


def test_detect_boxes_empty_and_specks():
    assert detect_boxes(gray_image(64, 64)) == []
    assert detect_boxes(noise_image(64, 64)) == []
    image = encode_detection(gray_image(128, 128), [(40, 40, 60, 50)])
    image[10:13, 10:13] = (0, 0, 255)  # a 3x3 speck: contour perimeter < 10
    assert [(d.x, d.y, d.w, d.h) for d in detect_boxes(image)] == [(40, 40, 60, 50)]
    kept = detect_boxes(image, min_perimeter=0)
    assert sorted((d.x, d.y, d.w, d.h) for d in kept) == [(10, 10, 3, 3), (40, 40, 60, 50)]


def test_detect_boxes_scores_crisp_faded_partial():
    background = gray_image(256, 256)
    box = (60, 50, 120, 100)
    crisp = encode_detection(background, [box])
    faded = ((crisp.astype(np.float64) + 128) / 2).round().astype(np.uint8)  # 50% towards gray
    partial = crisp.copy()
    partial[100:, :] = background[100:, :]  # erase the lower half: bottom side and half the verticals
    partial[:, 120:] = background[:, 120:]  # and the right half
    scores = {}
    for name, image in [("crisp", crisp), ("faded", faded), ("partial", partial)]:
        detections = detect_boxes(image)
        assert len(detections) == 1, name
        assert all(0.0 <= d.score <= 1.0 for d in detections)
        scores[name] = detections[0].score
    assert scores["crisp"] == 1.0
    assert scores["crisp"] > scores["faded"] > 0.3
    assert scores["crisp"] > scores["partial"] > 0.1
    # deterministic
    assert detect_boxes(faded) == detect_boxes(faded)


def test_dedup_keeps_higher_score():
    a = Detection(10, 10, 100, 100, 0.5)
    b = Detection(11, 10, 100, 100, 0.9)  # IoU 99/101 with a
    c = Detection(10, 10, 80, 100, 0.7)  # IoU 0.8 with a
    d = Detection(200, 200, 10, 10, 0.7)
    assert _dedup([a, b, c, d], 0.9) == [b, c, d]  # score desc, then (y, x)
    assert a.xyxy() == (10, 10, 110, 110)


def test_box_iou():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (10, 0, 10, 10)) == 0.0


# --------------------------------------------------------------------------------------------
# corner_boxes, paper_boxes


def official_corners_loop(mask: np.ndarray) -> list[tuple[int, int]]:
    """Literal per-pixel loop of the official ``ext_coor`` templates (0/255 mask before padding)."""
    m = np.pad(mask, 50)
    points = []
    for i in range(mask.shape[0]):
        for j in range(mask.shape[1]):
            I, J = i + 50, j + 50
            blocks = [m[I:I + 10, J - 10:J], m[I - 10:I, J:J + 10],
                      m[I - 10:I, J - 10:J], m[I:I + 10, J:J + 10]]
            sparse = all(int(b.sum()) < 255 * 50 for b in blocks)
            if int(m[I, J:J + 20].sum()) == 255 * 20 and int(m[I:I + 20, J].sum()) == 255 * 20 and sparse:
                points.append((i, j))
            if int(m[I, J - 20:J].sum()) == 255 * 20 and int(m[I - 20:I, J].sum()) == 255 * 20 and sparse:
                points.append((i, j))
    return points


def test_corner_templates_match_official_loop():
    image = encode_detection(noise_image(96, 80, seed=3), [(5, 4, 50, 40), (40, 30, 50, 45)], width=3)
    image[60:70, 5:8] = (0, 0, 255)
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    mask = _in_range(cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV), [CORNER_BLUE_HSV])
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8), iterations=1)
    points = official_corners_loop(mask)
    assert len(points) > 2
    corners = sorted(_official_corner_dedup(points))
    expected = [
        (ci, ri, cj, rj) for k, (ri, ci) in enumerate(corners) for rj, cj in corners[k + 1:] if ci < cj
    ]
    assert corner_boxes(image) == expected


def test_official_corner_dedup_quirk():
    assert _official_corner_dedup([(0, 0)]) == [(0, 0)]
    # pass 1 drops (3, 5) and rotates; pass 2 drops nothing and rotates again
    assert _official_corner_dedup([(0, 0), (3, 5), (20, 20)]) == [(0, 0), (20, 20)]
    # stops after the first pass that removes nothing: (50, 50) and (52, 52) both survive
    assert _official_corner_dedup([(0, 0), (50, 50), (52, 52)]) == [(50, 50), (52, 52), (0, 0)]
    # (5, 5) is a duplicate of (0, 0), (6, 0) is not
    assert _official_corner_dedup([(0, 0), (5, 5), (6, 0)]) == [(0, 0), (6, 0)]


def test_corner_boxes_clean_rectangle():
    box = (70, 60, 120, 100)
    image = encode_detection(gray_image(256, 256), [box], width=4)
    found = corner_boxes(image)
    assert found and all(isinstance(v, int) for b in found for v in b)
    best = max(box_iou(box, (x0, y0, x1 - x0, y1 - y0)) for x0, y0, x1, y1 in found)
    assert best > 0.8
    assert corner_boxes(gray_image(256, 256)) == []
    assert corner_boxes(noise_image(128, 128)) == []
    # size=: coordinates of the resized image
    small = resize_to(encode_detection(gray_image(320, 240), [(40, 30, 200, 150)], width=4), (256, 256))
    found = corner_boxes(small, size=(320, 240))
    best = max(box_iou((40, 30, 200, 150), (x0, y0, x1 - x0, y1 - y0)) for x0, y0, x1, y1 in found)
    assert best > 0.8


def test_paper_boxes_concatenation():
    boxes = [(10, 20, 60, 40), (100, 100, 120, 80), (30, 150, 50, 90)]
    output = resize_to(encode_detection(noise_image(320, 240), boxes), (256, 256))
    size = (320, 240)
    paper = paper_boxes(output, size)
    corners = corner_boxes(output, size)
    contour = [d.xyxy() for d in detect_boxes(output, size=size)]
    assert len(corners) > 0 and len(contour) >= 3
    assert paper[len(paper) - len(corners):] == [tuple(float(v) for v in b) for b in corners]
    assert sorted(paper[: len(paper) - len(corners)]) == sorted(contour)  # no near-duplicates here
    assert paper_boxes(gray_image(64, 64), None) == []


# --------------------------------------------------------------------------------------------
# depth, classification


def test_depth_round_trip():
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.05, 10.0, (20, 30))
    decoded = depth_metres(encode_depth(depth))
    assert decoded.dtype == np.float32 and decoded.shape == (20, 30)
    assert np.abs(decoded - depth).max() <= 10 / 510 + 1e-6
    assert np.abs(depth_metres(encode_depth(depth), channel=0) - depth).max() <= 10 / 510 + 1e-6


def test_depth_channel_and_resize():
    image = np.zeros((4, 6, 3), dtype=np.uint8)
    image[:] = (51, 0, 255)
    np.testing.assert_allclose(depth_metres(image, channel=0), 2.0, rtol=1e-6)
    np.testing.assert_allclose(depth_metres(image), 4.0, rtol=1e-6)  # (51 + 0 + 255) / 3 / 25.5
    np.testing.assert_allclose(depth_metres(image, channel=2, max_depth_m=5.0), 5.0, rtol=1e-6)
    resized = depth_metres(image, size=(12, 3), channel=0)
    assert resized.shape == (3, 12) and resized.dtype == np.float32
    np.testing.assert_allclose(resized, 2.0, rtol=1e-6)
    ramp = np.zeros((1, 2, 3), dtype=np.uint8)
    ramp[0, 1] = 255
    np.testing.assert_allclose(depth_metres(ramp, size=(4, 1)), [[0, 2.5, 7.5, 10]], atol=1e-5)


def test_classification_scores_exact():
    red = np.zeros((4, 4, 3), dtype=np.uint8)
    red[:] = (255, 0, 0)
    scores = classification_scores(red, {"cat": "red", "dog": (0, 255, 0), "x": (255, 0, 3)})
    assert scores == {"cat": 0.0, "dog": pytest.approx(255 * math.sqrt(2), abs=1e-9), "x": 3.0}
    half = red.copy()
    half[:, 2:] = (0, 255, 0)  # mean (127.5, 127.5, 0)
    scores = classification_scores(half, {"red": "red", "green": "green"})
    assert scores["red"] == scores["green"] == pytest.approx(127.5 * math.sqrt(2), abs=1e-9)
