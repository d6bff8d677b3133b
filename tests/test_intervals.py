"""95 % bootstrap intervals over images: hand-computed cases for every kind of statistic."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from instructcv_core.evaluation.intervals import (
    CocoAP,
    CocoPrecision,
    Interval,
    MeanOf,
    PerImageMean,
    PooledIoU,
    bootstrap_interval,
    resample_counts,
    resample_indices,
)
from instructcv_core.evaluation.protocols import paper, standard
from instructcv_core.evaluation.reporting import METRICS_COLUMNS, metrics_table


def test_identical_images_give_a_zero_width_interval_at_the_value():
    stat = PerImageMean({f"im{i}": 42.0 for i in range(7)})
    assert bootstrap_interval(stat) == Interval(7, 42.0, 42.0)


def test_two_images_interval_matches_the_enumerated_bootstrap_distribution():
    # two images, 0 and 100: a resample is {a,a} (mean 0), {a,b}/{b,a} (50) or {b,b} (100), with
    # probabilities 1/4, 1/2, 1/4: the 2.5th percentile is 0 and the 97.5th is 100 for any
    # reasonable number of resamples; the share of each outcome is near its probability.
    stat = PerImageMean({"a": 0.0, "b": 100.0})
    indices = resample_indices(2, 4000, seed=0)
    values = stat.resampled(["a", "b"], indices)
    assert set(np.unique(values)) == {0.0, 50.0, 100.0}
    shares = {v: float(np.mean(values == v)) for v in (0.0, 50.0, 100.0)}
    assert shares[0.0] == pytest.approx(0.25, abs=0.03) and shares[50.0] == pytest.approx(0.5, abs=0.03)
    assert bootstrap_interval(stat) == Interval(2, 0.0, 100.0)


def test_resampling_is_seeded_and_counts_match_the_indices():
    a, b = resample_indices(5, 10, seed=3), resample_indices(5, 10, seed=3)
    assert np.array_equal(a, b) and not np.array_equal(a, resample_indices(5, 10, seed=4))
    counts = resample_counts(a, 5)
    assert counts.shape == (10, 5) and np.all(counts.sum(axis=1) == 5)
    for row, idx in zip(counts, a):
        assert np.array_equal(row, np.bincount(idx, minlength=5))


def test_per_image_mean_leaves_out_undefined_images():
    stat = PerImageMean({"a": 10.0, "b": math.nan, "c": 30.0})
    assert stat.images == {"a", "c"}
    values = stat.resampled(["a", "b", "c"], np.array([[0, 2, 1], [1, 1, 1]]))
    assert values[0] == pytest.approx(20.0) and math.isnan(values[1])


def test_pooled_iou_recomputes_the_dataset_level_miou_of_a_resample():
    # image a: class 1 I=2 U=4; image b: class 1 I=1 U=1, class 2 I=0 U=3
    stat = PooledIoU({"a": {1: 2}, "b": {1: 1, 2: 0}}, {"a": {1: 4}, "b": {1: 1, 2: 3}})
    values = stat.resampled(["a", "b"], np.array([[0, 1], [0, 0], [1, 1]]))
    assert values[0] == pytest.approx(100 * (3 / 5 + 0 / 3) / 2)
    assert values[1] == pytest.approx(100 * 2 / 4)  # class 2 absent from the resample: left out
    assert values[2] == pytest.approx(100 * (2 / 2 + 0 / 6) / 2)


def test_pooled_iou_equals_the_standard_protocols_miou_on_the_full_set():
    rng = np.random.default_rng(0)
    images = []
    for _ in range(4):
        gt = rng.integers(0, 3, size=(6, 6))
        scores = {c: rng.uniform(0, 255, size=(6, 6)).astype(np.float32) for c in range(3)}
        images.append((scores, gt))
    seg = lambda items: standard.segmentation_miou(items, num_classes=3, ignore_index=None)  # noqa: E731
    each = {str(i): seg([im]) for i, im in enumerate(images)}
    stat = PooledIoU({i: r["intersection"] for i, r in each.items()}, {i: r["union"] for i, r in each.items()})
    identity = np.arange(4)[None]
    assert stat.resampled([str(i) for i in range(4)], identity)[0] == pytest.approx(seg(images)["miou"])
    pixels = PooledIoU({i: {0: r["pixels_correct"]} for i, r in each.items()}, {i: {0: r["pixels"]} for i, r in each.items()})
    assert pixels.resampled([str(i) for i in range(4)], identity)[0] == pytest.approx(seg(images)["pixel_acc"])


def _detection_images():
    # image 1: a perfect box; image 2: the box missed, a false positive elsewhere
    return [(1, 100, 100, [("dog", (10, 10, 20, 20), 0)], [("dog", (10, 10, 20, 20), 0.9)]),
            (2, 100, 100, [("dog", (50, 50, 20, 20), 0)], [("dog", (0, 0, 10, 10), 0.8)])]


def test_coco_ap_of_a_resample_matches_a_fresh_cocoeval_on_the_drawn_images():
    result = standard.detection_ap(_detection_images(), ["dog"])
    stat = result["bootstrap"]["ap50"]
    assert stat.value(["1", "2"]) == pytest.approx(result["ap50"])
    # only image 1 (twice): every GT found with the top score -> 100; only image 2: 0
    assert stat.value(["1", "1"]) == pytest.approx(100.0)
    assert stat.value(["2", "2"]) == pytest.approx(0.0)
    only_first = standard.detection_ap(_detection_images()[:1], ["dog"])
    assert result["bootstrap"]["ap"].value(["1"]) == pytest.approx(only_first["ap"])
    # the enumerated bootstrap distribution of two images: {1,1} 100, {2,2} 0, mixed: the full-set AP
    values = stat.resampled(["1", "2"], np.array(list(itertools.product([0, 1], repeat=2))))
    assert values.tolist() == pytest.approx([100.0, result["ap50"], result["ap50"], 0.0])


def test_coco_precision_rejects_an_unevaluated_max_dets():
    from instructcv_core.evaluation.metrics import coco_detection_ap

    evaluator = coco_detection_ap([(1, 10, 10)], [], [], [1])["evaluator"]
    with pytest.raises(ValueError, match="maxDets"):
        CocoPrecision(evaluator, {"1": 1}, 7)


def _pycocotools_precision(evaluator, images, max_det):
    """pycocotools' own ``accumulate`` on a list of COCO image ids (duplicates allowed), area "all"."""
    import contextlib
    import copy
    import io

    p = evaluator._paramsEval
    n_area, n_img = len(p.areaRng), len(p.imgIds)
    position = {img: i for i, img in enumerate(p.imgIds)}
    chosen = [position[i] for i in images]
    sub = copy.copy(evaluator)
    sub.params = params = copy.deepcopy(p)
    params.imgIds = [p.imgIds[i] for i in chosen]
    params.areaRng, params.areaRngLbl, params.maxDets = [p.areaRng[0]], [p.areaRngLbl[0]], [max_det]
    sub.evalImgs = [evaluator.evalImgs[k * n_area * n_img + i] for k in range(len(p.catIds)) for i in chosen]
    sub._paramsEval = copy.deepcopy(params)
    with contextlib.redirect_stdout(io.StringIO()):
        sub.accumulate(params)
    return sub.eval["precision"][:, :, :, 0, 0]


@pytest.mark.parametrize("scores", ["random", "tied"])
def test_coco_precision_equals_pycocotools_accumulate_on_resamples(scores):
    from instructcv_core.evaluation.metrics import coco_detection_ap

    rng = np.random.default_rng(1)
    images, gt, dets = [], [], []
    for i in range(1, 13):
        images.append((i, 100, 100))
        for _ in range(int(rng.integers(0, 4))):
            box = [float(v) for v in rng.uniform(0, 70, 2)] + [20.0, 20.0]
            gt.append({"image_id": i, "category_id": int(rng.integers(1, 4)), "bbox": box, "iscrowd": int(rng.uniform() < 0.1)})
            dets.append((i, gt[-1]["category_id"], [box[0] + rng.normal(0, 4), box[1] + rng.normal(0, 4), 20, 20],
                         1.0 if scores == "tied" else float(rng.uniform())))
        for _ in range(int(rng.integers(0, 3))):
            dets.append((i, int(rng.integers(1, 4)), [float(v) for v in rng.uniform(0, 80, 2)] + [15.0, 15.0],
                         1.0 if scores == "tied" else float(rng.uniform())))
    evaluator = coco_detection_ap(images, gt, dets, [1, 2, 3])["evaluator"]
    source = CocoPrecision(evaluator, {str(i): i for i, _, _ in images}, max_det=100)
    for row in resample_indices(12, 25, seed=2):
        drawn = [images[j][0] for j in row]
        ours = source.precision([str(i) for i in drawn])
        assert np.array_equal(ours, _pycocotools_precision(evaluator, drawn, 100))


def test_paper_detection_map_resamples_its_own_image_keys():
    gt = [(10, 10, 30, 30), (40, 40, 60, 60)]
    result = paper.detection_map([("1_dog_det", gt, gt), ("2_dog_det", gt[:1], [])])
    stat = result["bootstrap"]["map"]
    assert stat.images == {"1", "2"}
    assert stat.value(["1", "2"]) == pytest.approx(result["map"])


def test_mean_of_shares_each_resample():
    a, b = PerImageMean({"x": 0.0, "y": 10.0}), PerImageMean({"x": 20.0, "y": 30.0})
    values = MeanOf([a, b]).resampled(["x", "y"], np.array([[0, 0], [1, 1], [0, 1]]))
    assert values.tolist() == pytest.approx([10.0, 20.0, 15.0])


def test_empty_statistic_has_no_interval():
    interval = bootstrap_interval(PerImageMean({}))
    assert interval.n == 0 and math.isnan(interval.low) and math.isnan(interval.high)


def test_metrics_table_carries_n_and_the_interval():
    frame = metrics_table("ade20k", {"standard": {"miou": 50.0, "pixel_acc": 70.0}},
                          {"standard": {"miou": Interval(60, 45.0, 55.0)}})
    assert list(frame.columns) == METRICS_COLUMNS
    row = frame.set_index("metric").loc["miou"]
    assert (row["n"], row["ci_low"], row["ci_high"]) == (60, 45.0, 55.0)
    missing = frame.set_index("metric").loc["pixel_acc"]
    assert missing["n"] == 0 and math.isnan(missing["ci_low"])
    assert frame["n"].dtype == np.int64 and isinstance(frame, pd.DataFrame)
