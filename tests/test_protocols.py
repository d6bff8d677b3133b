"""The two evaluation protocols: hand-computed values, and for every quirk of ``paper`` a case where
the quirk changes the number relative to ``standard``."""

from __future__ import annotations

import math

import numpy as np
import pytest

from instructcv_core.evaluation.metrics import binary_iou
from instructcv_core.evaluation.protocols import paper, standard

# ================================================================ helpers


def mask(rows: list[str]) -> np.ndarray:
    """Bool mask from strings: '#' = True, '.' = False."""
    return np.array([[c == "#" for c in row] for row in rows], dtype=bool)


def block(shape: tuple[int, int], rows: slice, cols: slice) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    out[rows, cols] = True
    return out


def scores_from_masks(masks: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Score maps a perfect decoder would give: 255 on the mask, 0 elsewhere."""
    return {c: m.astype(np.float32) * 255 for c, m in masks.items()}


def solid(rgb: tuple[int, int, int], size: int = 4) -> np.ndarray:
    out = np.empty((size, size, 3), dtype=np.uint8)
    out[:] = rgb
    return out


def gray(level: int, shape: tuple[int, int] = (2, 2)) -> np.ndarray:
    return np.full((*shape, 3), level, dtype=np.uint8)


def metres(level: int) -> float:
    return level * 10 / 255


RED, GREEN = (255, 0, 0), (0, 255, 0)


# ================================================================ paper: segmentation


def test_official_mask_iou_adds_epsilon_to_sums_of_0_255_values():
    pred = mask(["##..", "##..", "....", "...."])
    gt = mask(["#...", "#...", "#...", "...."])
    # |A ∩ B| = 2, |A ∪ B| = 5 pixels; the official sums 255-valued pixels
    assert paper.official_mask_iou(pred, gt) == (255 * 2 + 1e-6) / (255 * 5 + 1e-6)
    assert paper.official_mask_iou(pred, gt) == pytest.approx(binary_iou(pred, gt), abs=1e-9)


def test_official_mask_iou_counts_empty_vs_empty_as_perfect_where_the_iou_is_undefined():
    empty = np.zeros((4, 4), dtype=bool)
    assert paper.official_mask_iou(empty, empty) == 1.0
    assert math.isnan(binary_iou(empty, empty))


def test_official_gt_resize_with_gt_above_zero_dilates_the_ground_truth():
    # a 2x2 object in an 8x8 GT, prediction at 4x4: the exact downscale is one pixel, but the
    # antialiased bilinear resize spreads the object over 2x2 pixels, all > 0
    gt = block((8, 8), slice(3, 5), slice(3, 5))
    exact = block((4, 4), slice(1, 3), slice(1, 3))
    assert paper.official_mask_iou(exact, gt) == pytest.approx(1.0)
    one_pixel = block((4, 4), slice(1, 2), slice(1, 2))
    assert paper.official_mask_iou(one_pixel, gt) == pytest.approx(1 / 4)
    # a 16 -> 4 downscale of an 8x8 block (exactly 2x2 output pixels) claims all 16 pixels
    big = block((16, 16), slice(4, 12), slice(4, 12))
    assert paper.official_mask_iou(block((4, 4), slice(1, 3), slice(1, 3)), big) == pytest.approx(4 / 16)


def test_official_mask_iou_handles_non_square_predictions_with_the_right_size_order():
    gt = block((8, 12), slice(0, 4), slice(0, 6))  # top-left quarter
    pred = block((4, 6), slice(0, 2), slice(0, 3))
    iou = paper.official_mask_iou(pred, gt)
    assert 0.4 < iou <= 1.0  # the official transposed Resize would crash on this shape


def test_paper_segmentation_miou_is_the_mean_over_images_of_per_image_means():
    full = np.ones((4, 4), dtype=bool)
    half = block((4, 4), slice(0, 2), slice(None))
    samples = [
        ("img1", "cat", full, full),  # 1.0
        ("img1", "dog", half, full),  # 0.5
        ("img2", "cat", full, full),  # 1.0
    ]
    r = paper.segmentation_miou(samples)
    assert r["miou"] == pytest.approx(100 * ((1.0 + 0.5) / 2 + 1.0) / 2, abs=1e-6)
    assert r["images"] == 2 and r["pairs"] == 3
    assert r["per_image"]["img1"] == pytest.approx(75.0, abs=1e-6)


def test_paper_segmentation_skips_images_without_any_prediction():
    full = np.ones((4, 4), dtype=bool)
    r = paper.segmentation_miou([("a", "cat", full, full), ("b", "cat", None, full)])
    assert r["skipped_nan_images"] == 1 and r["missing_predictions"] == 1
    assert r["miou"] == pytest.approx(100.0)
    r = paper.segmentation_miou([("b", "cat", None, full)])
    assert math.isnan(r["miou"]) and r["warnings"]


def test_paper_segmentation_repeated_pair_overwrites_the_earlier_one():
    full, empty = np.ones((2, 2), bool), np.zeros((2, 2), bool)
    r = paper.segmentation_miou([("a", "cat", empty, full), ("a", "cat", full, full)])
    assert r["miou"] == pytest.approx(100.0) and r["overwritten_pairs"] == 1


def test_quirk_present_class_querying_hides_false_positive_classes():
    # GT: class 1 on the left half; the model also "sees" class 2 on the right half
    gt_labels = np.zeros((4, 4), dtype=np.int64)
    gt_labels[:, :2] = 1
    model_masks = {1: gt_labels == 1, 2: block((4, 4), slice(None), slice(2, 4))}
    # standard: every class queried (VOC-like: background 0 where no class claims the pixel)
    honest = standard.segmentation_miou([(scores_from_masks({1: model_masks[1]}), gt_labels)],
                                        num_classes=3, ignore_index=None, background=0)
    hallucinating = standard.segmentation_miou([(scores_from_masks(model_masks), gt_labels)],
                                               num_classes=3, ignore_index=None, background=0)
    assert honest["miou"] == pytest.approx(100.0)  # classes 0, 1 perfect; 2 absent everywhere
    # class 2 hallucinated over the background: class 0 IoU 0, class 2 IoU 0
    assert hallucinating["miou"] == pytest.approx(100 / 3)
    # paper: only GT-present classes (1) are queried, so the hallucination is never seen
    present = [c for c in np.unique(gt_labels) if c != 0]
    samples = [("img", str(c), model_masks[c], gt_labels == c) for c in present]
    assert paper.segmentation_miou(samples)["miou"] == pytest.approx(100.0)


def test_quirk_per_image_mean_differs_from_dataset_accumulated_iou():
    # image A: a 1-pixel object, missed; image B: a 63-pixel object, found exactly
    gt_a = np.zeros((8, 8), np.int64)
    gt_a[0, 0] = 1
    gt_b = np.ones((8, 8), np.int64)
    gt_b[0, 0] = 0
    pred_a = np.zeros((8, 8), bool)
    pred_b = gt_b == 1
    paper_r = paper.segmentation_miou([("A", "x", pred_a, gt_a == 1), ("B", "x", pred_b, gt_b == 1)])
    assert paper_r["miou"] == pytest.approx(50.0, abs=1e-6)  # (0 + 1) / 2
    std_r = standard.segmentation_miou(
        [({1: np.where(pred_a, 255.0, 0.0)}, gt_a), ({1: np.where(pred_b, 255.0, 0.0)}, gt_b)],
        num_classes=2, ignore_index=0)
    assert std_r["per_class_iou"][1] == pytest.approx(100 * 63 / 64)  # accumulated: 63 / 64


def test_official_seg_folder_fields_and_the_voc_folder_quirk():
    assert paper.official_seg_folder_fields("ADE_val_00000001.jpg_wall_seg") == ("00000001.jpg", "wall")
    assert paper.official_voc_image_key("2007_000033_cat_seg") == "cat"
    # VOC folders keyed the official way: all "cat" folders collapse into one entry, last one wins
    full, empty = np.ones((2, 2), bool), np.zeros((2, 2), bool)
    folders = [("2007_000033_cat_seg", full), ("2007_000042_cat_seg", empty), ("2008_000001_dog_seg", full)]
    official = paper.segmentation_miou(
        (paper.official_voc_image_key(f), paper.official_seg_folder_fields(f)[1], pred, full) for f, pred in folders)
    assert official["images"] == 2 and official["overwritten_pairs"] == 1
    assert official["miou"] == pytest.approx(100 * (0.0 + 1.0) / 2, abs=1e-6)  # cat = last folder only
    ours = paper.segmentation_miou((f.rsplit("_", 2)[0], f.split("_")[2], pred, full) for f, pred in folders)
    assert ours["images"] == 3 and ours["miou"] == pytest.approx(100 * 2 / 3, abs=1e-6)


def test_paper_fss_miou_is_the_segmentation_rule():
    full = np.ones((2, 2), bool)
    samples = [("1", "owl", full, full), ("2", "owl", block((2, 2), slice(0, 1), slice(None)), full)]
    assert paper.fss_miou(samples)["miou"] == paper.segmentation_miou(samples)["miou"]


# ================================================================ paper: detection


def test_gt_filter_iou_uses_plus_one_areas_but_not_plus_one_intersection():
    box = [0, 0, 100, 100]
    assert paper.gt_filter_iou(box, box) == 10000 / (2 * 101 * 101 - 10000 + 1e-6)
    assert paper.gt_filter_iou(box, box) < 1.0
    # a 2-px-wide exact copy can never exceed 0.5: 2H / (6(H+1) - 2H) < 0.5 for any H
    for h in (2, 10, 1000):
        thin = [0, 0, 2, h]
        assert paper.gt_filter_iou(thin, thin) < 0.5


def test_quirk_id_zero_two_perfect_boxes_score_25_25():
    gt = [[10, 10, 110, 110], [200, 200, 300, 300]]
    r = paper.detection_map([("139_dog_det", gt, gt)])
    assert r["map"] == pytest.approx(100 * 25.5 / 101)  # 25.2475...
    assert r["map50"] == pytest.approx(100 * 25.5 / 101)
    assert r["kept_boxes"] == 2
    s = standard.detection_ap([(139, 512, 512, [("dog", (x1, y1, x2 - x1, y2 - y1), 0) for x1, y1, x2, y2 in gt],
                                [("dog", (x1, y1, x2 - x1, y2 - y1), 1.0) for x1, y1, x2, y2 in gt])], ["dog"])
    assert s["ap"] == pytest.approx(100.0)


def test_quirk_gt_filter_removes_false_positives():
    gt = [[10, 10, 110, 110], [200, 200, 300, 300]]
    false_positive = [400, 400, 450, 450]
    without = paper.detection_map([("1_dog_det", gt, gt)])
    with_fp = paper.detection_map([("1_dog_det", gt, [false_positive] + gt)])
    assert with_fp["map"] == without["map"]  # the false positive is filtered out using the GT
    assert with_fp["kept_boxes"] == 2 and with_fp["pred_boxes"] == 3

    def xywh(b):
        return (b[0], b[1], b[2] - b[0], b[3] - b[1])

    gt_rows = [("dog", xywh(b), 0) for b in gt]
    std_without = standard.detection_ap([(1, 512, 512, gt_rows, [("dog", xywh(b), 1.0) for b in gt])], ["dog"])
    std_with = standard.detection_ap(
        [(1, 512, 512, gt_rows, [("dog", xywh(b), 1.0) for b in [false_positive] + gt])], ["dog"])
    assert std_without["ap"] == pytest.approx(100.0)
    # ranked first (equal scores, input order): precision 0, 1/2, 2/3 -> interpolated 2/3
    assert std_with["ap"] == pytest.approx(100 * 2 / 3, abs=1e-6)


def test_quirk_gt_filter_duplicates_a_box_that_is_best_for_two_gt_boxes():
    gt = [[0, 0, 100, 100], [0, 0, 100, 90]]
    kept = paper.gt_filter(gt, [[0, 0, 100, 95]])
    assert kept == [[0, 0, 100, 95], [0, 0, 100, 95]]


def test_quirk_plus_one_area_drops_small_boxes_that_standard_counts():
    small = [[20, 20, 22, 30]]  # 2 px wide: dropped even when predicted exactly
    big = [[100, 100, 200, 200], [300, 300, 400, 400]]
    r = paper.detection_map([("5_cup_det", small, small), ("5_dog_det", big, big)])
    assert r["per_category"]["cup"] == 0.0 and r["kept_boxes"] == 2
    s = standard.detection_ap([(5, 512, 512, [("cup", (20, 20, 2, 10), 0)], [("cup", (20, 20, 2, 10), 1.0)])],
                              ["cup"])
    assert s["ap"] == pytest.approx(100.0)
    # a 4x4 exact copy: 16 / (2 * 25 - 16) = 0.47 -> dropped too
    assert paper.gt_filter([[0, 0, 4, 4]], [[0, 0, 4, 4]]) == []
    assert paper.gt_filter([[0, 0, 5, 5]], [[0, 0, 5, 5]]) == [[0, 0, 5, 5]]


def test_quirk_folder_order_changes_the_score_when_all_scores_tie():
    exact = ([[0, 0, 100, 100]], [[0, 0, 100, 100]])
    loose = ([[0, 0, 100, 100]], [[0, 0, 100, 62]])  # COCO IoU 0.62, filter IoU 0.598: kept
    # the folder sorted first gets GT id 0: its detection is a false positive at every threshold
    loose_first = paper.detection_map([("a_dog_det", *loose), ("b_dog_det", *exact)])
    exact_first = paper.detection_map([("c_dog_det", *loose), ("b_dog_det", *exact)])
    assert loose_first["map"] == pytest.approx(100 * 25.5 / 101)
    # now the loose box is the only true positive, and only at IoU thresholds .50, .55, .60
    assert exact_first["map"] == pytest.approx(100 * 25.5 / 101 * 3 / 10)
    # the input order does not matter, only the sorted folder names
    shuffled = paper.detection_map([("b_dog_det", *exact), ("a_dog_det", *loose)])
    assert shuffled["map"] == loose_first["map"]


def test_quirk_crowd_boxes_count_as_normal_ground_truth():
    normal, crowd = [0, 0, 100, 100], [200, 200, 400, 400]
    # paper: the crowd box is an ordinary GT (id 0, listed first) that nothing detects
    r = paper.detection_map([("7_person_det", [crowd, normal], [normal])])
    assert r["map"] == pytest.approx(100 * 51 / 101)  # recall stops at 0.5 with precision 1
    s = standard.detection_ap([(7, 512, 512, [("person", (200, 200, 200, 200), 1), ("person", (0, 0, 100, 100), 0)],
                                [("person", (0, 0, 100, 100), 0.9)])], ["person"])
    assert s["ap"] == pytest.approx(100.0)


def test_paper_detection_reports_instead_of_crashing():
    # empty GT folder: official FileNotFoundError
    r = paper.detection_map([("1_cat_det", [], [[0, 0, 10, 10]]),
                             ("2_dog_det", [[0, 0, 9, 9], [50, 50, 90, 90]], [[0, 0, 9, 9], [50, 50, 90, 90]])])
    assert r["empty_gt_folders"] == 1 and any("FileNotFoundError" in w for w in r["warnings"])
    assert math.isnan(r["per_category"]["cat"]) and r["map"] == pytest.approx(100 * 25.5 / 101)
    # no surviving box: official IndexError in loadRes
    r = paper.detection_map([("3_dog_det", [[0, 0, 100, 100]], [[300, 300, 310, 310]])])
    assert r["map"] == 0.0 and any("IndexError" in w for w in r["warnings"])
    r = paper.detection_map([])
    assert math.isnan(r["map"]) and r["warnings"]
    # the official json builders skip any folder name containing '.'
    r = paper.detection_map([("139.jpg_dog_det", [[0, 0, 50, 50]], [[0, 0, 50, 50]])])
    assert r["folders"] == 0 and math.isnan(r["map"]) and "'.'" in r["warnings"][0]


def test_paper_detection_keeps_only_the_official_coco_names():
    # official Evaluate_AR(_voc).py: cocoEval.params.catIds = getCatIds(catNms=CLASSES_COCO), so a
    # VOC name COCO spells differently (aeroplane: COCO "airplane") counts in no AP. Sorted folders:
    # the aeroplane GT gets annotation id 0 (never matched by pycocotools), the dog GT id 1.
    box = [[10, 10, 60, 60]]
    folders = [("2007-000033_aeroplane_det", box, box), ("2007-000033_dog_det", box, box)]
    official = paper.detection_map(folders)
    assert list(official["per_category"]) == ["dog"]
    assert official["per_category"]["dog"] == pytest.approx(100.0) and official["map"] == pytest.approx(100.0)
    assert official["dropped_categories"] == ["aeroplane"]
    every = paper.detection_map(folders, category_names=None)  # every category: aeroplane AP 0 (id 0)
    assert every["map"] == pytest.approx(50.0)
    voc = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
           "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]
    assert set(voc) - set(paper.official_category_filter(voc)) == {
        "aeroplane", "diningtable", "motorbike", "pottedplant", "sofa", "tvmonitor"}
    assert paper.official_category_filter(["dining table", "dining-table"]) == ["dining table"]


def test_standard_detection_ignores_voc_difficult_boxes():
    # VOC convention (devkit VOCevalDet): difficult GT is neither required nor penalised. One normal
    # box found, one difficult box missed: ignored -> AP 100; counted -> recall 0.5 at precision 1,
    # 101-point AP = 51 / 101 = 50.50 at every IoU threshold.
    normal, hard = (10, 10, 40, 40), (100, 100, 40, 40)
    dets = [("dog", normal, 0.9)]
    ignored = standard.detection_ap([(1, 200, 200, [("dog", normal, False, False), ("dog", hard, False, True)], dets)], ["dog"])
    counted = standard.detection_ap([(1, 200, 200, [("dog", normal, False), ("dog", hard, False)], dets)], ["dog"])
    assert ignored["ap"] == pytest.approx(100.0) and ignored["ap50"] == pytest.approx(100.0)
    assert counted["ap"] == pytest.approx(100 * 51 / 101)
    # a detection on a difficult box is no false positive either (one match per box)
    both = standard.detection_ap([(1, 200, 200, [("dog", normal, False, False), ("dog", hard, False, True)],
                                   [("dog", hard, 0.95), ("dog", normal, 0.9)])], ["dog"])
    assert both["ap"] == pytest.approx(100.0)


def test_official_det_folder_fields():
    assert paper.official_det_folder_fields("000000000139_dining table_det") == ("000000000139", "dining table")
    assert paper.official_det_folder_fields("000000000139_det_dining table") == ("000000000139", "dining table")
    with pytest.raises(ValueError, match="three"):
        paper.official_det_folder_fields("000000000139_hair_drier_det")


# ================================================================ paper: depth


def test_quirk_odd_metre_mask_counts_masked_pixels_as_perfect():
    gt = gray(40)  # 1.569 m: floor 1, odd
    near = paper.depth_metrics([(gt, gray(45))])  # 1.765 m: floor 1, odd -> kept
    far = paper.depth_metrics([(gt, gray(60))])  # 2.353 m: floor 2, even -> masked
    assert near["delta1"] == 1.0 and near["rmse"] == pytest.approx(metres(5))
    assert near["valid_fraction"] == 1.0
    # the worse prediction (ratio 1.5) is "perfect": masked pixels have ratio 1 and error 0
    assert far["rmse"] == 0.0 and far["abs_rel"] == 0.0 and far["delta1"] == 1.0
    assert far["valid_fraction"] == 0.0
    honest = standard.depth_metrics([(np.full((2, 2), metres(60)), np.full((2, 2), metres(40)))], eigen_crop=False)
    assert honest["delta1"] == 0.0 and honest["rmse"] == pytest.approx(metres(20))


def test_abs_rel_is_divided_by_the_ground_truth_as_official_head():
    # official evaluate_depes.py at HEAD: `def compute_errors(pred, gt)` called as
    # `compute_errors(pred, gt)`; abs_rel = mean(|gt - pred| / gt). GT level 100 (3.92 m, floor 3),
    # output level 80 (3.14 m, floor 3): both odd, kept; |100 - 80| / 100 = 0.20 (the pre-b402562
    # argument swap gave 20 / 80 = 0.25)
    r = paper.depth_metrics([(gray(100), gray(80))])
    assert r["abs_rel"] == pytest.approx(0.20) and r["valid_fraction"] == 1.0
    r = paper.depth_metrics([(gray(40), gray(45))])
    assert r["abs_rel"] == pytest.approx(5 / 40)  # |p - g| / g
    s = standard.depth_metrics([(np.full((2, 2), metres(45)), np.full((2, 2), metres(40)))], eigen_crop=False)
    assert s["abs_rel"] == pytest.approx(5 / 40)  # |p - g| / g


def test_gt_metres_follow_the_official_order_of_operations():
    # official: gt = gt / 255 * 10 and pred = pred * 10 / 255. At GT level 36 and output level 45
    # (ratio 5:4) the official ratio (45*10/255) / (36/255*10) is 1.25 exactly in float64, so
    # delta1 = 0; computing the GT as 36*10/255 would give 1.2499999999999998 and delta1 = 1.
    assert paper.official_gt_metres(np.array([36.0]))[0] == 36 / 255 * 10
    assert paper.official_pred_metres(np.array([45.0]))[0] == 45 * 10 / 255
    r = paper.depth_metrics([(gray(36), gray(45))])  # 1.41 m and 1.76 m: both floor 1, kept
    assert r["valid_fraction"] == 1.0 and r["delta1"] == 0.0 and r["delta2"] == 1.0


def test_quirk_missing_depth_pixels_count_as_perfect_in_paper_and_are_excluded_in_standard():
    gt_level = np.array([[40, 40], [0, 0]], dtype=np.uint8)  # bottom row: no measurement (0)
    out_level = np.array([[45, 45], [200, 200]], dtype=np.uint8)
    gt_img = np.repeat(gt_level[:, :, None], 3, axis=2)
    out_img = np.repeat(out_level[:, :, None], 3, axis=2)
    p = paper.depth_metrics([(gt_img, out_img)])
    assert p["rmse"] == pytest.approx(math.sqrt(metres(5) ** 2 / 2))  # averaged over all 4 pixels
    assert p["abs_rel"] == pytest.approx((5 / 40) / 2)
    s = standard.depth_metrics([(out_level / 25.5, gt_level / 25.5)], eigen_crop=False)
    assert s["rmse"] == pytest.approx(metres(5)) and s["abs_rel"] == pytest.approx(5 / 40)


def test_paper_depth_reads_channel_0_and_resizes_the_output_to_the_gt_size():
    gt = gray(40, (4, 6))
    out = np.zeros((2, 3, 3), dtype=np.uint8)
    out[..., 0] = 45  # red carries the depth; green and blue are ignored
    out[..., 1] = 200
    r = paper.depth_metrics([(gt, out)])
    assert r["abs_rel"] == pytest.approx(5 / 40) and r["images"] == 1
    assert math.isnan(paper.depth_metrics([])["rmse"])


def test_quirk_uniform_random_prediction_scores_far_better_under_paper_than_standard():
    # Assumed GT: depth uniform over [1, 10] m, 8-bit encoded (levels 26..255); prediction: every
    # channel uniform over 0..255. Measured here: paper delta1 0.792, AbsRel 0.265, RMSE 2.07 m
    # (the reference reports 0.78, 0.28, 2.1); standard AbsRel 0.83, RMSE 3.92 m, delta1 0.22
    # (the reference reports AbsRel 1.11 and RMSE 3.9 for its own GT).
    rng = np.random.default_rng(0)
    paper_samples, standard_samples = [], []
    for _ in range(2):
        gt_level = np.floor(rng.uniform(1, 10, (480, 640)) * 25.5 + 0.5).astype(np.uint8)
        out = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
        paper_samples.append((np.repeat(gt_level[:, :, None], 3, axis=2), out))
        standard_samples.append((out[:, :, 0] / 25.5, gt_level / 25.5))  # metres
    p = paper.depth_metrics(paper_samples)
    s = standard.depth_metrics(standard_samples, eigen_crop=False)
    assert p["delta1"] == pytest.approx(0.78, abs=0.05)
    assert p["abs_rel"] == pytest.approx(0.28, abs=0.05)
    assert p["rmse"] == pytest.approx(2.1, abs=0.05)
    assert s["rmse"] == pytest.approx(3.9, abs=0.05)
    assert s["abs_rel"] > 3 * p["abs_rel"] and s["delta1"] < p["delta1"] / 3 and s["rmse"] > 1.8 * p["rmse"]


# ================================================================ paper: classification


def test_paper_classification_prompt_is_the_official_red_green_template():
    assert paper.paper_classification_prompt("cat") == "Show red if there exsits cat; if not, show green instead."


def test_mean_rgb_distance_is_the_mean_of_per_pixel_distances():
    img = np.zeros((2, 2, 3), dtype=np.uint8)
    img[1] = (255, 255, 0)  # half black, half yellow: both exactly 255 from green
    assert paper.mean_rgb_distance(img, GREEN) == pytest.approx(255.0)
    # the distance of the mean colour (127.5, 191.25, 0) would be about 142.5


def test_quirk_green_reference_scores_an_ideal_model_zero():
    # ideal model under the official prompt: red if the queried class is present, green if not
    ideal = [("Abyssinian_1", "cat", solid(RED), solid(GREEN)), ("pug_3", "dog", solid(GREEN), solid(RED))]
    assert paper.classification_accuracy(ideal)["accuracy"] == 0.0
    inverted = [(k, t, dog, cat) for k, t, cat, dog in ideal]
    assert paper.classification_accuracy(inverted)["accuracy"] == 100.0
    from instructcv_core.tasks.classification import classification_margin

    margins = [(t, {"cat": classification_margin(c, RED, GREEN), "dog": classification_margin(d, RED, GREEN)})
               for _, t, c, d in ideal]
    assert standard.classification_accuracy(margins)["accuracy"] == 100.0


def test_quirk_near_ties_count_as_correct():
    same = [("Abyssinian_1", "cat", solid((90, 90, 90)), solid((90, 90, 90)))]
    r = paper.classification_accuracy(same)
    assert r["accuracy"] == 100.0 and r["near_ties"] == 1
    assert any("NameError" in w for w in r["warnings"])  # every image a near-tie
    # distances to green 200 vs 202 (difference 2 <= 2.2): a tie, correct although "cat" is nearer
    close = paper.classification_accuracy([("x", "dog", solid((0, 0, 0)), solid((0, 0, 0))),
                                           ("y", "dog", solid((0, 255, 200)), solid((0, 255, 202)))])
    assert close["near_ties"] == 2 and close["accuracy"] == 100.0
    # 200 vs 203 (difference 3 > 2.2): decided by the nearer output, the cat query -> wrong for a dog
    decided = paper.classification_accuracy([("z", "dog", solid((0, 255, 200)), solid((0, 255, 203)))])
    assert decided["accuracy"] == 0.0 and decided["near_ties"] == 0
    # standard: equal margins go to the first class name in sorted order
    assert standard.classification_accuracy([("dog", {"dog": 0.0, "cat": 0.0})])["accuracy"] == 0.0


def test_paper_classification_empty_and_unknown_classes_are_reported():
    assert math.isnan(paper.classification_accuracy([])["accuracy"])
    r = paper.classification_accuracy([("k", "horse", solid(RED), solid(GREEN))])
    assert r["accuracy"] == 0.0 and any("cat/dog" in w for w in r["warnings"])


def test_official_pets_label_puts_bengal_among_dogs():
    assert paper.official_pets_label("Abyssinian_201") == "cat"
    assert paper.official_pets_label("Bengal_10") == "dog"
    assert paper.official_pets_label("american_pit_bull_terrier_7") == "dog"
    assert paper.official_pets_label("unknown_1") is None


# ================================================================ standard


def test_combine_class_scores_threshold_argmax_and_background():
    a = np.array([[200.0, 100.0, 150.0, 0.0]], dtype=np.float32)
    b = np.array([[150.0, 120.0, 150.0, 0.0]], dtype=np.float32)
    assert standard.combine_class_scores({3: a, 1: b}, (1, 4)).tolist() == [[3, -1, 1, -1]]
    assert standard.combine_class_scores({3: a, 1: b}, (1, 4), background=0).tolist() == [[3, 0, 1, 0]]
    assert standard.combine_class_scores({}, (1, 2)).tolist() == [[-1, -1]]


def test_standard_segmentation_no_prediction_is_a_miss_without_background():
    gt = np.array([[1, 1, 2, 2]])
    scores = {1: np.array([[255, 0, 0, 0]], np.float32), 2: np.array([[0, 0, 255, 255]], np.float32)}
    r = standard.segmentation_miou([(scores, gt)], num_classes=3, ignore_index=None)
    assert r["per_class_iou"][1] == pytest.approx(50.0)  # one pixel unclaimed -> miss
    assert r["per_class_iou"][2] == pytest.approx(100.0)
    assert math.isnan(r["per_class_iou"][0]) and r["classes_evaluated"] == 2
    assert r["miou"] == pytest.approx(75.0) and r["pixel_acc"] == pytest.approx(75.0)
    assert r["warnings"]  # class 0 was not queried


def test_ade20k_reduce_zero_label():
    labels = np.array([[0, 1, 150]], dtype=np.uint8)
    assert standard.ade20k_reduce_zero_label(labels).tolist() == [[255, 0, 149]]
    gt = standard.ade20k_reduce_zero_label(np.array([[0, 1, 1, 2]]))
    scores = {0: np.array([[255, 255, 255, 0]], np.float32), 1: np.array([[0, 0, 0, 255]], np.float32)}
    r = standard.segmentation_miou([(scores, gt)], num_classes=150, ignore_index=255)
    assert r["miou"] == pytest.approx(100.0) and r["classes_evaluated"] == 2


def test_standard_fss_miou_accumulates_per_class_then_averages_classes():
    owl_gt_1 = mask(["##", ".."])
    owl_gt_2 = mask(["##", "##"])
    samples = [
        ("owl", mask(["#.", ".."]), owl_gt_1),  # I 1, U 2
        ("owl", mask(["##", "##"]), owl_gt_2),  # I 4, U 4
        ("cup", mask([".#", ".."]), mask(["#.", ".."])),  # I 0, U 2
    ]
    r = standard.fss_miou(samples)
    assert r["per_class"]["owl"] == pytest.approx(100 * 5 / 6)  # not (0.5 + 1) / 2
    assert r["per_class"]["cup"] == 0.0
    assert r["miou"] == pytest.approx(100 * 5 / 12) and r["classes"] == 2 and r["images"] == 3


def test_standard_depth_excludes_invalid_pixels_applies_eigen_crop_and_clips():
    gt = np.zeros((480, 640), np.float32)
    gt[100:110, 100:110] = 2.0
    gt[0:5, 0:5] = 5.0  # outside the Eigen crop
    pred = np.full((480, 640), 2.0, np.float32)
    pred[0:5, 0:5] = 4.0
    with_crop = standard.depth_metrics([(pred, gt)], eigen_crop=True)
    without = standard.depth_metrics([(pred, gt)], eigen_crop=False)
    assert with_crop["rmse"] == 0.0 and with_crop["delta1"] == 1.0
    assert without["rmse"] == pytest.approx(math.sqrt(25 * 1.0 / 125))
    # clipping: a prediction beyond max_depth counts as max_depth; no valid pixel -> skipped
    clipped = standard.depth_metrics([(np.full((2, 2), 50.0), np.full((2, 2), 9.0)),
                                      (np.ones((2, 2)), np.zeros((2, 2)))], eigen_crop=False)
    assert clipped["rmse"] == pytest.approx(1.0)
    assert clipped["images"] == 1 and clipped["skipped_images"] == 1


def test_standard_depth_averages_metrics_over_images():
    r = standard.depth_metrics([(np.full((1, 4), 2.0), np.full((1, 4), 1.0)),
                                (np.full((1, 1), 1.0), np.full((1, 1), 1.0))], eigen_crop=False)
    assert r["abs_rel"] == pytest.approx((1.0 + 0.0) / 2)  # per image, not per pixel (0.8)


def test_standard_classification_argmax_of_margins():
    samples = [("cat", {"cat": 10.0, "dog": -5.0}), ("dog", {"cat": 3.0, "dog": 1.0}), ("dog", {"dog": 2.0})]
    r = standard.classification_accuracy(samples)
    assert r["accuracy"] == pytest.approx(200 / 3) and r["images"] == 3 and r["correct"] == 2
