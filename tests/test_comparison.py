"""The trained-vs-untrained check: significantly better, or it fails (no tolerance, no evidence = fail)."""

import json

import dagster as dg
import pytest

from assets.evaluate import beats_untrained_check
from instructcv_core.evaluation.comparison import paired_comparison

UNTRAINED = {"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0}


def test_consistently_better_passes_and_matches_scipy():
    from scipy import stats

    trained = {"a": 0.2, "b": 0.3, "c": 0.25, "d": 0.1}  # RMSE, lower is better
    result = paired_comparison(trained, UNTRAINED, higher_is_better=False)
    assert result["trained_better"] and result["images"] == 4 and result["mean_difference"] == pytest.approx(0.7875)
    expected = stats.ttest_rel([1.0 - v for v in trained.values()], [0.0] * 4, alternative="greater")
    assert result["t"] == pytest.approx(expected.statistic) and result["p_value"] == pytest.approx(expected.pvalue)


def test_noisy_or_worse_is_not_better():
    noisy = {"a": 0.2, "b": 2.5, "c": 0.3, "d": 1.6}
    assert not paired_comparison(noisy, UNTRAINED, higher_is_better=False)["trained_better"]
    worse = {"a": 2.0, "b": 2.1, "c": 1.9, "d": 2.2}
    assert not paired_comparison(worse, UNTRAINED, higher_is_better=False)["trained_better"]


def test_a_tiny_consistent_gain_counts_there_is_no_tolerance_either_way():
    tiny = {"a": 1.01, "b": 1.02, "c": 1.01, "d": 1.03}
    assert paired_comparison(tiny, UNTRAINED, higher_is_better=True)["trained_better"]
    uniform = {k: v + 0.5 for k, v in UNTRAINED.items()}  # sd 0: a positive mean is better
    assert paired_comparison(uniform, UNTRAINED, higher_is_better=True)["trained_better"]


def test_identical_to_the_untrained_model_fails():
    result = paired_comparison(dict(UNTRAINED), UNTRAINED, higher_is_better=True)
    assert not result["trained_better"] and result["mean_difference"] == 0.0 and "identical" in result["reason"]


def test_no_per_image_evidence_fails():
    for trained, untrained in (({}, UNTRAINED), (UNTRAINED, {}), ({"x": 5.0}, {"y": 1.0}),
                               ({"a": 90.0, "b": None}, {"a": 1.0, "b": 1.0})):  # one image in common
        result = paired_comparison(trained, untrained, higher_is_better=True)
        assert not result["trained_better"] and "no per-image evidence" in result["reason"], (trained, untrained)


def _check(tmp_path, name, ours, theirs, severity=dg.AssetCheckSeverity.ERROR):
    reference = tmp_path / "details.json"
    reference.write_text(json.dumps(theirs))
    return beats_untrained_check(dg.AssetKey(f"eval_{name}_fp"), name, ours, reference, severity)


def test_check_fails_on_paper_only_depth_detection_classification(tmp_path):
    # the paper protocol keeps no per-image values for these tasks: no evidence, a failure
    for name, metric in (("nyuv2", "rmse"), ("coco", "map"), ("pets", "accuracy")):
        ours = {"paper": {metric: 1.0}}
        theirs = {"paper": {metric: 2.0}}
        result = _check(tmp_path, name, ours, theirs)
        assert not result.passed and result.severity == dg.AssetCheckSeverity.ERROR
        assert result.metadata["images"].value == 0 and "no per-image evidence" in result.description


def test_check_fails_for_a_model_identical_to_the_base_and_passes_when_better(tmp_path):
    per_image = {str(i): float(v) for i, v in enumerate([10, 20, 30, 15, 25])}
    same = _check(tmp_path, "ade20k", {"standard": {"per_image": per_image}}, {"standard": {"per_image": per_image}})
    assert not same.passed
    better = {k: v + 20 + (int(k) % 2) for k, v in per_image.items()}
    passed = _check(tmp_path, "ade20k", {"standard": {"per_image": better}}, {"standard": {"per_image": per_image}})
    assert passed.passed and passed.metadata["trained_mean"].value > passed.metadata["untrained_mean"].value


def test_check_without_the_untrained_results_fails(tmp_path):
    result = beats_untrained_check(dg.AssetKey("eval_ade20k_fp"), "ade20k", {"standard": {"per_image": {}}},
                                   tmp_path / "missing.json")
    assert not result.passed and "missing" in result.metadata["error"].value
