"""Visual target encodings v(y) and their inverses: exact values on tiny explicit arrays."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest

from instructcv_core.tasks import TASK_NAMES as TASKS
from instructcv_core.tasks.arrays import round_half_up
from instructcv_core.tasks.classification import classification_margin, decode_classification, encode_classification
from instructcv_core.tasks.colours import PALETTE, draw_colour_pair
from instructcv_core.tasks.depth import DEPTH_MAX_M, decode_depth, depth_from_png_mm, encode_depth
from instructcv_core.tasks.detection import (
    DEFAULT_BOX_COLOUR,
    DEFAULT_BOX_WIDTH,
    box_pixel_edges,
    decode_detection,
    encode_detection,
)
from instructcv_core.tasks.segmentation import decode_segmentation, encode_segmentation

BLUE = (0, 0, 255)
RED = (255, 0, 0)
GREEN = (0, 255, 0)


# ---------------------------------------------------------------- constants


def test_tasks_are_the_four_instructcv_tasks():
    assert TASKS == ("segmentation", "detection", "depth", "classification")


def test_palette_has_the_16_official_colours_in_order():
    assert list(PALETTE.items()) == [
        ("red", (255, 0, 0)), ("green", (0, 255, 0)), ("blue", (0, 0, 255)), ("purple", (128, 0, 128)),
        ("white", (255, 255, 255)), ("brown", (165, 42, 42)), ("gold", (255, 215, 0)),
        ("beige", (245, 245, 220)), ("violet", (238, 130, 238)), ("orange", (255, 128, 0)),
        ("maroon", (128, 0, 0)), ("indigo", (75, 0, 130)), ("aqua", (0, 255, 255)),
        ("coral", (255, 127, 80)), ("rosy brown", (188, 143, 143)), ("peru", (205, 133, 63)),
    ]


def test_defaults_are_official_blue_4px_and_10m():
    assert DEFAULT_BOX_COLOUR == (0, 0, 255)
    assert DEFAULT_BOX_WIDTH == 4
    assert DEPTH_MAX_M == 10.0


# ---------------------------------------------------------------- segmentation

SEG_MASKS = {
    "empty": np.zeros((3, 4), bool),
    "full": np.ones((3, 4), bool),
    "single_pixel": np.array([[0, 0, 0], [0, 1, 0]], bool),
    "checkerboard": (np.indices((5, 6)).sum(axis=0) % 2).astype(bool),
    "one_row": np.array([[1, 0, 1, 1, 0]], bool),
}


def test_segmentation_encoding_is_white_on_black():
    mask = np.array([[True, False], [False, True]])
    img = encode_segmentation(mask)
    assert img.dtype == np.uint8 and img.shape == (2, 2, 3)
    expected = np.array([[[255] * 3, [0] * 3], [[0] * 3, [255] * 3]], np.uint8)
    np.testing.assert_array_equal(img, expected)


@pytest.mark.parametrize("name", sorted(SEG_MASKS))
def test_segmentation_round_trip_is_exact(name):
    mask = SEG_MASKS[name]
    back = decode_segmentation(encode_segmentation(mask))
    assert back.dtype == np.bool_
    np.testing.assert_array_equal(back, mask)


@pytest.mark.parametrize("name", sorted(SEG_MASKS))
def test_segmentation_round_trip_is_exact_with_official_blue_channel_threshold_10(name):
    mask = SEG_MASKS[name]
    np.testing.assert_array_equal(decode_segmentation(encode_segmentation(mask), threshold=10, channel=2), mask)


def test_segmentation_encoding_rejects_non_bool_masks():
    with pytest.raises(TypeError):
        encode_segmentation(np.array([[0, 255]], np.uint8))


def test_segmentation_decode_threshold_is_strictly_greater():
    gray = np.array([[126, 127, 128]], np.uint8)
    img = np.repeat(gray[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(decode_segmentation(img), [[False, False, True]])
    np.testing.assert_array_equal(decode_segmentation(img, threshold=126), [[False, True, True]])


def test_segmentation_decode_mean_uses_average_of_rgb():
    # means: (30+0+0)/3=10, (200+200+0)/3=133.3, (128+127+127)/3=127.33
    img = np.array([[[30, 0, 0], [200, 200, 0], [128, 127, 127]]], np.uint8)
    np.testing.assert_array_equal(decode_segmentation(img), [[False, True, True]])
    np.testing.assert_array_equal(decode_segmentation(img, threshold=9), [[True, True, True]])


def test_segmentation_decode_single_channel_option_expresses_the_official_cv2_channel0_gt_10():
    # the official eval reads BGR with cv2 and keeps channel 0 (blue) > 10: on RGB that is channel 2
    rgb = np.array([[[255, 255, 10], [0, 0, 11], [200, 0, 0]]], np.uint8)
    np.testing.assert_array_equal(decode_segmentation(rgb, threshold=10, channel=2), [[False, True, False]])
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    official = bgr[:, :, 0] > 10
    np.testing.assert_array_equal(decode_segmentation(rgb, threshold=10, channel=2), official)
    np.testing.assert_array_equal(decode_segmentation(rgb, threshold=10, channel=0), [[True, False, True]])


def test_segmentation_decode_rejects_bad_channel():
    img = np.zeros((2, 2, 3), np.uint8)
    with pytest.raises(ValueError):
        decode_segmentation(img, channel=3)
    with pytest.raises(ValueError):
        decode_segmentation(img, channel="max")


# ---------------------------------------------------------------- detection


def _gray(h, w, v=100):
    return np.full((h, w, 3), v, np.uint8)


def test_detection_outline_is_width_px_inside_the_box_edge():
    img = _gray(20, 30)
    out = encode_detection(img, [(5, 3, 12, 10)])  # columns 5..16, rows 3..12
    assert out is not img and out.dtype == np.uint8
    drawn = np.all(out == BLUE, axis=2)
    expected = np.zeros((20, 30), bool)
    expected[3:13, 5:17] = True
    expected[7:9, 9:13] = False  # interior: rows 3+4..12-4, columns 5+4..16-4
    np.testing.assert_array_equal(drawn, expected)
    # border pixels are blue, pixels just outside the box keep the input value
    assert tuple(out[3, 5]) == BLUE and tuple(out[12, 16]) == BLUE
    assert tuple(out[2, 5]) == (100, 100, 100) and tuple(out[3, 4]) == (100, 100, 100)
    assert tuple(out[13, 16]) == (100, 100, 100) and tuple(out[12, 17]) == (100, 100, 100)
    # 4th pixel inward is drawn, 5th is the untouched interior
    assert tuple(out[8, 8]) == BLUE and tuple(out[8, 9]) == (100, 100, 100)
    # everything off the outline is unchanged
    np.testing.assert_array_equal(out[~drawn], img[~drawn])


def test_detection_does_not_modify_input():
    img = _gray(10, 10)
    encode_detection(img, [(1, 1, 8, 8)])
    assert np.all(img == 100)


def test_detection_colour_and_width_are_configurable_red_5px():
    img = _gray(30, 30)
    out = encode_detection(img, [(2, 4, 20, 15)], colour=RED, width=5)  # cols 2..21, rows 4..18
    drawn = np.all(out == RED, axis=2)
    expected = np.zeros((30, 30), bool)
    expected[4:19, 2:22] = True
    expected[9:14, 7:17] = False
    np.testing.assert_array_equal(drawn, expected)
    assert not np.any(np.all(out == BLUE, axis=2))
    assert decode_detection(out, colour=RED) == [(2, 4, 20, 15)]


def test_detection_colour_can_be_a_palette_name():
    img = _gray(20, 20)
    np.testing.assert_array_equal(encode_detection(img, [(1, 1, 12, 12)], colour="red"),
                                  encode_detection(img, [(1, 1, 12, 12)], colour=RED))


def test_detection_box_not_wider_than_twice_width_is_filled_solid():
    img = _gray(20, 20)
    out = encode_detection(img, [(2, 2, 8, 8), (12, 2, 5, 3)])  # 8 = 2*4 and 5x3 < 8
    drawn = np.all(out == BLUE, axis=2)
    expected = np.zeros((20, 20), bool)
    expected[2:10, 2:10] = True
    expected[2:5, 12:17] = True
    np.testing.assert_array_equal(drawn, expected)


def test_detection_boxes_are_clipped_to_the_image():
    img = _gray(10, 12)
    out = encode_detection(img, [(-5, 6, 10, 20)])  # clipped to columns 0..4, rows 6..9
    drawn = np.all(out == BLUE, axis=2)
    expected = np.zeros((10, 12), bool)
    expected[6:10, 0:5] = True  # 4 rows high: no interior left
    np.testing.assert_array_equal(drawn, expected)

    out = encode_detection(_gray(20, 20), [(8, -3, 30, 16)])  # columns 8..19, rows 0..12
    drawn = np.all(out == BLUE, axis=2)
    expected = np.zeros((20, 20), bool)
    expected[0:13, 8:20] = True
    expected[4:9, 12:16] = False
    np.testing.assert_array_equal(drawn, expected)
    assert decode_detection(out) == [(8, 0, 12, 13)]


def test_detection_box_entirely_outside_or_empty_draws_nothing():
    img = _gray(10, 10)
    out = encode_detection(img, [(20, 20, 5, 5), (3, 3, 0, 4), (-9, 2, 4, 4)])
    np.testing.assert_array_equal(out, img)


def test_detection_rejects_negative_size():
    with pytest.raises(ValueError):
        encode_detection(_gray(10, 10), [(5, 5, -2, 3)])


def test_detection_float_box_edges_round_to_nearest_pixel_edge_halves_up():
    # edges: x0 = floor(2.5+.5)=3, x1 = floor(2.5+9.9+.5)=12, y0 = floor(1.4+.5)=1, y1 = floor(1.4+10.1+.5)=12
    assert box_pixel_edges((2.5, 1.4, 9.9, 10.1), (20, 20)) == (3, 1, 12, 12)
    # rounding the edges, not the width: x=10.5, w=9 -> edges 11 and 20 (width 9)
    assert box_pixel_edges((10.5, 0.49, 9, 9.0), (30, 30)) == (11, 0, 20, 9)
    img = _gray(20, 20)
    out = encode_detection(img, [(2.5, 1.4, 9.9, 10.1)])
    np.testing.assert_array_equal(out, encode_detection(img, [(3, 1, 9, 11)]))
    assert decode_detection(out) == [(3, 1, 9, 11)]


def _random_boxes(rng, h, w, n, margin=2, min_side=10, max_side=40):
    """Non-overlapping boxes with at least `margin` px of free space between them."""
    boxes = []
    for _ in range(1000):
        if len(boxes) == n:
            break
        bw, bh = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
        x, y = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
        if all(x + bw + margin <= ox or ox + ow + margin <= x or y + bh + margin <= oy or oy + oh + margin <= y
               for ox, oy, ow, oh in boxes):
            boxes.append((x, y, bw, bh))
    return boxes


def _random_image_avoiding(rng, h, w, colour, tolerance):
    img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    near = np.abs(img.astype(int) - np.array(colour)).max(axis=2) <= tolerance
    img[near] = (128, 128, 128)  # max abs difference from any pure palette primary is >= 127
    assert not np.any(np.abs(img.astype(int) - np.array(colour)).max(axis=2) <= tolerance)
    return img


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("colour,width", [(BLUE, 4), (RED, 5)])
def test_detection_round_trip_recovers_random_non_touching_boxes_exactly(seed, colour, width):
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(60, 120)), int(rng.integers(60, 120))
    img = _random_image_avoiding(rng, h, w, colour, 60)
    boxes = _random_boxes(rng, h, w, n=int(rng.integers(1, 7)))
    assert boxes
    out = encode_detection(img, boxes, colour=colour, width=width)
    assert decode_detection(out, colour=colour) == sorted(boxes, key=lambda b: (b[1], b[0], b[2], b[3]))


def test_detection_decode_sorts_by_y_then_x_and_recovers_nested_box():
    img = _gray(50, 50)
    boxes = [(30, 2, 12, 12), (2, 2, 12, 12), (2, 20, 28, 28), (12, 30, 8, 8)]  # last one nested, not touching
    assert decode_detection(encode_detection(img, boxes)) == [(2, 2, 12, 12), (30, 2, 12, 12), (2, 20, 28, 28),
                                                              (12, 30, 8, 8)]


def test_detection_decode_drops_components_with_perimeter_below_minimum():
    img = _gray(20, 20)
    out = encode_detection(img, [(1, 1, 2, 2), (5, 5, 2, 3), (10, 10, 8, 8)])  # perimeters 8, 10, 32
    assert decode_detection(out) == [(5, 5, 2, 3), (10, 10, 8, 8)]
    assert decode_detection(out, min_perimeter=11) == [(10, 10, 8, 8)]
    assert decode_detection(out, min_perimeter=0) == [(1, 1, 2, 2), (5, 5, 2, 3), (10, 10, 8, 8)]


def test_detection_decode_tolerance_is_max_abs_channel_difference_inclusive():
    img = _gray(12, 12, v=0)
    img[2:8, 2:8] = (60, 0, 195)   # max diff 60 from blue: kept at tolerance 60
    assert decode_detection(img) == [(2, 2, 6, 6)]
    assert decode_detection(img, tolerance=59) == []


def test_detection_decode_of_image_without_the_colour_is_empty():
    assert decode_detection(_gray(10, 10)) == []


# ---------------------------------------------------------------- depth


def _levels(depth):
    img = encode_depth(np.array([depth], np.float32))
    assert img.shape == (1, len(depth), 3) and img.dtype == np.uint8
    assert np.all(img[..., 0] == img[..., 1]) and np.all(img[..., 0] == img[..., 2])
    return img[0, :, 0].tolist()


def test_depth_encoding_maps_0m_to_0():
    assert _levels([0.0]) == [0]


def test_depth_encoding_maps_10m_to_255():
    assert _levels([10.0]) == [255]


def test_depth_encoding_clips_12m_to_255():
    assert _levels([12.0]) == [255]


def test_depth_encoding_maps_5m_to_128_rounding_half_up():
    # 5 / 10 * 255 = 127.5 exactly; halves round up (floor(x + 0.5))
    assert _levels([5.0]) == [128]
    # 2.5 m -> 63.75 -> 64; 7.5 m -> 191.25 -> 191; 1 m -> 25.5 -> 26; one level (10/255 m) -> 1
    assert _levels([2.5, 7.5, 1.0, 10 / 255]) == [64, 191, 26, 1]
    # just under half a level is 0, indistinguishable from "no measurement"
    assert _levels([10 / 255 / 2 - 1e-4]) == [0]


def test_round_half_up_differs_from_python_and_numpy_round_half_to_even():
    assert [round_half_up(v) for v in (0.5, 1.5, 2.5, 127.5, -0.5, -1.5, 2.4999)] == [1, 2, 3, 128, 0, -1, 2]
    assert round(2.5) == 2 and np.round(2.5) == 2.0  # why they are not used


def test_depth_encoding_maps_invalid_values_to_0():
    assert _levels([np.nan, -1.0, np.inf, 0.0]) == [0, 0, 0, 0]


def test_depth_encoding_respects_max_depth():
    img = encode_depth(np.array([[0.0, 4.0, 8.0, 9.0]]), max_depth_m=8.0)
    assert img[0, :, 0].tolist() == [0, 128, 255, 255]


def test_depth_decoding_maps_255_to_10m_and_uses_channel_mean():
    img = np.array([[[255, 255, 255], [0, 0, 0], [10, 20, 30]]], np.uint8)
    d = decode_depth(img)
    assert d.dtype == np.float32
    np.testing.assert_allclose(d, [[10.0, 0.0, 20 * 10 / 255]], rtol=0, atol=1e-6)


def test_depth_round_trip_error_is_at_most_half_a_level():
    rng = np.random.default_rng(0)
    depth = rng.uniform(0, 10, size=(64, 64)).astype(np.float32)
    depth[0, :4] = [0.0, 10.0, 5.0, 10 / 255 / 2]
    back = decode_depth(encode_depth(depth))
    assert back.dtype == np.float32 and back.shape == depth.shape
    assert np.abs(back - depth).max() <= 10 / 255 / 2 + 1e-6


def test_depth_from_png_mm_reads_uint16_millimetres_as_metres():
    raw = np.array([[0, 1000, 5000, 65535]], np.uint16)
    d = depth_from_png_mm(raw)
    assert d.dtype == np.float32
    np.testing.assert_allclose(d, [[0.0, 1.0, 5.0, 65.535]], rtol=1e-7)


def test_depth_from_png_mm_accepts_pillow_int32_and_float_metres_unchanged():
    np.testing.assert_allclose(depth_from_png_mm(np.array([[2500]], np.int32)), [[2.5]])
    metres = np.array([[0.0, 1.25, 3.5]], np.float64)
    out = depth_from_png_mm(metres)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, metres.astype(np.float32))


def test_depth_png_round_trip_through_a_real_16bit_png(tmp_path):
    raw = np.array([[0, 1000, 5000, 65535]], np.uint16)
    path = tmp_path / "depth.png"
    assert cv2.imwrite(str(path), raw)
    loaded = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert loaded.dtype == np.uint16
    np.testing.assert_allclose(depth_from_png_mm(loaded), [[0.0, 1.0, 5.0, 65.535]], rtol=1e-7)


def test_depth_official_8bit_read_keeps_high_byte_and_gives_near_black_targets(tmp_path):
    """Documents the official bug we avoid: cv2.imread(path, 0) on a 16-bit mm PNG."""
    raw = np.array([[0, 1000, 5000, 65535]], np.uint16)
    path = tmp_path / "depth.png"
    assert cv2.imwrite(str(path), raw)
    naive = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert naive.dtype == np.uint8
    assert naive.tolist() == [[0, 3, 19, 255]]  # the high byte: v >> 8
    # the official target uint8(mm / 1000 * 255 / 10) on these values: 1 m and 5 m come out as level 0
    official_levels = (naive.astype(np.float64) / 1000 * 255 / 10).astype(np.uint8)
    assert official_levels.tolist() == [[0, 0, 0, 6]]
    # ours: 1 m -> 26 (= round(25.5)), 5 m -> 128
    ours = encode_depth(depth_from_png_mm(cv2.imread(str(path), cv2.IMREAD_UNCHANGED)))
    assert ours[0, :, 0].tolist() == [0, 26, 128, 255]
    # and the mistake is caught rather than silently accepted
    with pytest.raises(ValueError, match="IMREAD_UNCHANGED"):
        depth_from_png_mm(naive)


# ---------------------------------------------------------------- classification


def test_classification_encoding_is_an_exact_solid_block_of_width_by_height():
    img = encode_classification((255, 128, 0), (3, 2))
    assert img.dtype == np.uint8 and img.shape == (2, 3, 3)
    np.testing.assert_array_equal(img, np.array([[[255, 128, 0]] * 3] * 2, np.uint8))


def test_classification_encoding_accepts_palette_names():
    np.testing.assert_array_equal(encode_classification("rosy brown", (2, 2)),
                                  np.full((2, 2, 3), (188, 143, 143), np.uint8))


def test_classification_decode_picks_the_nearer_colour():
    assert decode_classification(encode_classification(RED, (4, 4)), RED, GREEN) is True
    assert decode_classification(encode_classification(GREEN, (4, 4)), RED, GREEN) is False
    # a noisy reddish block
    img = np.full((4, 4, 3), (200, 60, 40), np.uint8)
    assert decode_classification(img, "red", "green") is True
    assert decode_classification(img, "green", "red") is False


def test_classification_decode_uses_the_mean_colour_of_the_whole_image():
    img = np.zeros((2, 2, 3), np.uint8)
    img[0, 0] = RED  # mean = (63.75, 0, 0): nearer black than red
    assert decode_classification(img, (0, 0, 0), RED) is True
    img[:, :1] = RED  # half red, half black: mean (127.5, 0, 0) is equidistant -> tie -> False
    assert classification_margin(img, RED, (0, 0, 0)) == 0.0
    assert decode_classification(img, RED, (0, 0, 0)) is False


def test_classification_margin_is_distance_to_negative_minus_distance_to_positive():
    img = encode_classification(RED, (2, 2))
    d = float(np.hypot(255, 255))
    assert classification_margin(img, RED, GREEN) == pytest.approx(d)
    assert classification_margin(img, GREEN, RED) == pytest.approx(-d)
    img = np.full((1, 1, 3), (100, 0, 0), np.uint8)  # 155 from red, 100 from black
    assert classification_margin(img, RED, (0, 0, 0)) == pytest.approx(100 - 155)


def test_draw_colour_pair_returns_two_distinct_palette_names():
    rng = np.random.default_rng(1)
    for _ in range(500):
        a, b = draw_colour_pair(rng)
        assert a != b and a in PALETTE and b in PALETTE


def test_draw_colour_pair_is_deterministic_for_a_seed():
    seq1 = [draw_colour_pair(np.random.default_rng(7)) for _ in range(3)]
    rng_a, rng_b = np.random.default_rng(42), np.random.default_rng(42)
    assert [draw_colour_pair(rng_a) for _ in range(50)] == [draw_colour_pair(rng_b) for _ in range(50)]
    assert len(set(seq1)) == 1
    rng_c = np.random.default_rng(43)
    rng_a = np.random.default_rng(42)
    assert [draw_colour_pair(rng_a) for _ in range(50)] != [draw_colour_pair(rng_c) for _ in range(50)]


def test_draw_colour_pair_reaches_every_ordered_pair_roughly_uniformly():
    rng = np.random.default_rng(0)
    n_draws = 24000  # 100 per pair on average
    counts: dict[tuple[str, str], int] = {}
    for _ in range(n_draws):
        pair = draw_colour_pair(rng)
        counts[pair] = counts.get(pair, 0) + 1
    all_pairs = set(itertools.permutations(PALETTE, 2))
    assert len(all_pairs) == 240
    assert set(counts) == all_pairs
    # binomial(24000, 1/240): mean 100, sd ~10; a 5-sd band
    assert 50 <= min(counts.values()) and max(counts.values()) <= 150


def test_draw_colour_pair_accepts_a_custom_palette():
    rng = np.random.default_rng(3)
    pairs = {draw_colour_pair(rng, palette=["red", "green"]) for _ in range(50)}
    assert pairs == {("red", "green"), ("green", "red")}
