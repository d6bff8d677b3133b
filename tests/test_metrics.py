"""Generic metrics: exact values on tiny hand-computed cases, COCO AP against pycocotools itself."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from instructcv_core.evaluation.metrics import (
    EIGEN_CROP_480x640,
    ConfusionMatrix,
    accuracy,
    binary_iou,
    coco_detection_ap,
    depth_errors,
    eigen_crop,
    run_coco_bbox_eval,
)


def mask(rows: list[str]) -> np.ndarray:
    """Bool mask from strings: '#' = True, '.' = False."""
    return np.array([[c == "#" for c in row] for row in rows], dtype=bool)


# ---------------------------------------------------------------- binary IoU


def test_binary_iou_is_intersection_over_union():
    pred = mask(["##.", "#..", "..."])  # 3 pixels
    gt = mask(["#..", "##.", "..."])  # 3 pixels, 2 shared
    assert binary_iou(pred, gt) == pytest.approx(2 / 4)


def test_binary_iou_is_nan_when_both_masks_are_empty():
    empty = np.zeros((3, 3), dtype=bool)
    assert math.isnan(binary_iou(empty, empty))


def test_binary_iou_is_zero_when_one_mask_is_empty():
    empty = np.zeros((2, 2), dtype=bool)
    assert binary_iou(empty, mask(["#.", ".."])) == 0.0
    assert binary_iou(mask(["#.", ".."]), empty) == 0.0


def test_binary_iou_rejects_non_bool_masks_and_shape_mismatch():
    with pytest.raises(TypeError):
        binary_iou(np.zeros((2, 2), np.uint8), np.zeros((2, 2), bool))
    with pytest.raises(ValueError):
        binary_iou(np.zeros((2, 2), bool), np.zeros((2, 3), bool))


# ---------------------------------------------------------------- confusion matrix


def test_confusion_matrix_iou_counts_no_prediction_as_a_miss_and_skips_ignored_pixels():
    cm = ConfusionMatrix(num_classes=3, ignore_index=255)
    gt = np.array([[0, 0, 1, 1], [1, 255, 255, 0]])
    pred = np.array([[0, 1, 1, -1], [1, 2, 0, 0]])
    cm.update(gt, pred)
    # counted pixels (gt, pred): (0,0) (0,1) (1,1) (1,-1) (1,1) (0,0); the two 255 pixels skipped
    # class 0: TP 2, FP 0, FN 1 (predicted 1) -> 2/3
    # class 1: TP 2, FP 1 (gt 0), FN 1 (no prediction) -> 2/4
    # class 2: absent from GT and from the counted predictions -> NaN
    iou = cm.iou()
    assert iou[0] == pytest.approx(2 / 3)
    assert iou[1] == pytest.approx(2 / 4)
    assert math.isnan(iou[2])
    assert cm.miou() == pytest.approx((2 / 3 + 2 / 4) / 2)
    assert cm.pixel_accuracy() == pytest.approx(4 / 6)


def test_confusion_matrix_class_predicted_but_absent_from_gt_has_iou_zero():
    cm = ConfusionMatrix(num_classes=3)
    cm.update(np.array([0, 0, 1, 1]), np.array([0, 2, 1, 1]))
    iou = cm.iou()
    assert iou[2] == 0.0  # one false positive, no GT: counts in the mean
    assert cm.miou() == pytest.approx((1 / 2 + 1 + 0) / 3)


def test_confusion_matrix_accumulates_over_updates():
    cm = ConfusionMatrix(num_classes=2)
    cm.update(np.array([1, 1, 0]), np.array([1, 0, 0]))
    cm.update(np.array([1]), np.array([1]))
    assert cm.iou()[1] == pytest.approx(2 / 3)  # TP 2, FN 1
    assert cm.matrix.sum() == 4


def test_confusion_matrix_empty_gives_nan():
    cm = ConfusionMatrix(num_classes=2)
    assert math.isnan(cm.miou()) and math.isnan(cm.pixel_accuracy())


def test_confusion_matrix_rejects_labels_out_of_range():
    cm = ConfusionMatrix(num_classes=2, ignore_index=255)
    with pytest.raises(ValueError, match="gt label 7"):
        cm.update(np.array([7]), np.array([0]))
    with pytest.raises(ValueError, match="predicted label 2"):
        cm.update(np.array([0]), np.array([2]))
    with pytest.raises(ValueError):
        cm.update(np.array([0, 1]), np.array([0]))


# ---------------------------------------------------------------- depth


def test_depth_errors_hand_computed():
    gt = np.array([[1.0, 2.0, 4.0, 0.0]])
    pred = np.array([[1.0, 1.0, 5.0, 3.0]])
    valid = gt > 0  # the 0 (no measurement) pixel is excluded
    e = depth_errors(pred, gt, valid)
    assert e["rmse"] == pytest.approx(math.sqrt(2 / 3))
    assert e["abs_rel"] == pytest.approx((0 + 1 / 2 + 1 / 4) / 3)
    assert e["sq_rel"] == pytest.approx((0 + 1 / 2 + 1 / 4) / 3)
    assert e["log10"] == pytest.approx((0 + math.log10(2) + math.log10(1.25)) / 3)
    assert e["rmse_log"] == pytest.approx(math.sqrt((math.log(2) ** 2 + math.log(1.25) ** 2) / 3))
    # ratios 1, 2, 1.25: < 1.25 only the first; < 1.5625 and < 1.953 also the third
    assert e["delta1"] == pytest.approx(1 / 3)
    assert e["delta2"] == pytest.approx(2 / 3)
    assert e["delta3"] == pytest.approx(2 / 3)


def test_depth_errors_without_valid_pixels_are_nan():
    e = depth_errors(np.ones((2, 2)), np.zeros((2, 2)), np.zeros((2, 2), bool))
    assert all(math.isnan(v) for v in e.values())


def test_depth_errors_reject_non_positive_predictions_on_valid_pixels():
    with pytest.raises(ValueError, match="clip"):
        depth_errors(np.array([[0.0]]), np.array([[1.0]]), np.array([[True]]))


def test_eigen_crop_at_480x640_is_rows_45_to_470_and_columns_41_to_600():
    crop = eigen_crop((480, 640))
    assert EIGEN_CROP_480x640 == (45, 471, 41, 601)
    rows = np.flatnonzero(crop.any(axis=1))
    cols = np.flatnonzero(crop.any(axis=0))
    assert (rows[0], rows[-1], cols[0], cols[-1]) == (45, 470, 41, 600)
    assert crop.sum() == 426 * 560


def test_eigen_crop_scales_proportionally_rounding_halves_up():
    crop = eigen_crop((240, 320, 3))
    rows = np.flatnonzero(crop.any(axis=1))
    cols = np.flatnonzero(crop.any(axis=0))
    # 22.5 -> 23, 235.5 -> 236 (exclusive), 20.5 -> 21, 300.5 -> 301 (exclusive)
    assert (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1) == (23, 236, 21, 301)


# ---------------------------------------------------------------- COCO AP


def _pycocotools_stats(dataset: dict, results: list[dict]) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = dataset
        gt.createIndex()
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def test_coco_detection_ap_matches_pycocotools_called_directly():
    images = [(1, 100, 80), (2, 120, 90)]
    ground_truth = [
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 20], "iscrowd": 0},
        {"image_id": 1, "category_id": 1, "bbox": [50, 40, 20, 30], "iscrowd": 0},
        {"image_id": 1, "category_id": 2, "bbox": [0, 0, 60, 60], "iscrowd": 1},
        {"image_id": 2, "category_id": 2, "bbox": [20, 20, 40, 40], "iscrowd": 0},
        {"image_id": 2, "category_id": 1, "bbox": [70, 10, 10, 10], "iscrowd": 0},
    ]
    detections = [
        (1, 1, [11, 10, 30, 21], 0.9),
        (1, 1, [50, 45, 20, 30], 0.6),
        (1, 1, [0, 60, 10, 10], 0.8),
        (1, 2, [5, 5, 50, 50], 0.7),
        (2, 2, [22, 18, 40, 44], 0.95),
        (2, 1, [60, 10, 20, 10], 0.3),
    ]
    ours = coco_detection_ap(images, ground_truth, detections, [1, 2])

    dataset = {
        "images": [{"id": i, "width": w, "height": h} for i, w, h in images],
        "annotations": [
            {**g, "id": n, "area": g["bbox"][2] * g["bbox"][3]} for n, g in enumerate(ground_truth, start=1)
        ],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }
    results = [{"image_id": i, "category_id": c, "bbox": b, "score": s} for i, c, b, s in detections]
    stats = _pycocotools_stats(dataset, results)
    assert ours["AP"] == pytest.approx(100 * stats[0])
    assert ours["AP50"] == pytest.approx(100 * stats[1])
    assert ours["AP75"] == pytest.approx(100 * stats[2])
    assert ours["AR100"] == pytest.approx(100 * stats[8])
    for key, index in (("APs", 3), ("APm", 4), ("APl", 5)):
        expected = math.nan if stats[index] < 0 else 100 * stats[index]
        assert ours[key] == pytest.approx(expected, nan_ok=True)
    assert 0 < ours["AP"] < 100


def test_coco_detection_ap_perfect_boxes_score_100():
    r = coco_detection_ap(
        [(1, 50, 50)],
        [{"image_id": 1, "category_id": 3, "bbox": [5, 5, 20, 20], "iscrowd": 0}],
        [(1, 3, [5, 5, 20, 20], 1.0)],
        [3],
    )
    assert r["AP"] == pytest.approx(100.0) and r["AP50"] == pytest.approx(100.0)
    assert r["AR100"] == pytest.approx(100.0)


def test_coco_detection_ap_without_detections_is_zero_not_a_crash():
    r = coco_detection_ap(
        [(1, 50, 50)], [{"image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 20], "iscrowd": 0}], [], [1]
    )
    assert r["AP"] == 0.0 and r["AR100"] == 0.0


def test_coco_detection_ap_excludes_categories_without_gt():
    r = coco_detection_ap(
        [(1, 50, 50)],
        [{"image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 20], "iscrowd": 0}],
        [(1, 1, [5, 5, 20, 20], 1.0), (1, 2, [30, 30, 10, 10], 0.9)],
        [1, 2],
    )
    assert math.isnan(r["per_category"][2])
    assert r["AP"] == pytest.approx(100.0)  # category 2 (no GT) is not averaged in as 0


def test_coco_detection_ap_ignores_detections_on_crowd_regions():
    gt = [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20], "iscrowd": 0},
        {"image_id": 1, "category_id": 1, "bbox": [40, 40, 50, 50], "iscrowd": 1},
    ]
    dets = [(1, 1, [45, 45, 20, 20], 0.99), (1, 1, [0, 0, 20, 20], 0.5)]
    assert coco_detection_ap([(1, 100, 100)], gt, dets, [1])["AP"] == pytest.approx(100.0)
    # the same box as ordinary GT: the first-ranked detection misses it -> a false positive, a miss
    gt_plain = [dict(g, iscrowd=0) for g in gt]
    assert coco_detection_ap([(1, 100, 100)], gt_plain, dets, [1])["AP"] < 50


def test_coco_detection_ap_rejects_annotation_id_zero_and_unknown_ids():
    gt = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "iscrowd": 0, "id": 0}]
    with pytest.raises(ValueError, match="id 0"):
        coco_detection_ap([(1, 10, 10)], gt, [], [1])
    with pytest.raises(ValueError, match="image_id 9"):
        coco_detection_ap([(1, 10, 10)], [], [(9, 1, [0, 0, 1, 1], 1.0)], [1])
    with pytest.raises(ValueError, match="category_id 5"):
        coco_detection_ap([(1, 10, 10)], [], [(1, 5, [0, 0, 1, 1], 1.0)], [1])


def test_run_coco_bbox_eval_prints_nothing(capsys):
    dataset = {"images": [{"id": 1}], "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "x"}]}
    run_coco_bbox_eval(dataset, [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 1}])
    assert capsys.readouterr().out == ""


# ---------------------------------------------------------------- accuracy


def test_accuracy_is_a_percentage():
    assert accuracy([True, False, True, True]) == 75.0
    assert math.isnan(accuracy([]))
