"""Evaluation planning, the trained-vs-untrained comparison, metric validity, and Tables 1-3."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from instructcv_core.benchmarks import BENCHMARKS, TABLE3_INSTRUCTIONS
from instructcv_core.data.records import Box, ImageRecord
from instructcv_core.evaluation import tables as T
from instructcv_core.evaluation.config import EvalConfig
from instructcv_core.evaluation.data import BenchmarkData, select_images
from instructcv_core.evaluation.planning import plan_queries, query_seed
from instructcv_core.evaluation.reporting import metrics_table
from instructcv_core.evaluation.scoring import invalid_metrics, primary_metric
from instructcv_core.inference.config import SamplerConfig


def bench(tmp_path: Path, name: str, task: str, dataset: str, rows: list[dict], records: list[ImageRecord],
          categories: list[str]) -> BenchmarkData:
    frame = pd.DataFrame(rows)
    manifest = tmp_path / f"{name}.parquet"
    frame.to_parquet(manifest)
    spec = BENCHMARKS[name]
    assert (spec.task, spec.dataset) == (task, dataset)
    return BenchmarkData(spec, frame, {r.image_id: r for r in records}, tmp_path, categories,
                         sorted({r["image_id"] for r in rows}), manifest)


def seg_bench(tmp_path) -> BenchmarkData:
    rows = [{"image_id": "a", "category": "cat", "input_original_digest": "da"},
            {"image_id": "a", "category": "dog", "input_original_digest": "da"},
            {"image_id": "b", "category": "sky", "input_original_digest": "db"}]
    records = [ImageRecord("ade20k", i, "val", f"{i}.jpg", 8, 8) for i in ("a", "b")]
    return bench(tmp_path, "ade20k", "segmentation", "ade20k", rows, records, ["wall", "cat", "dog", "sky", "tree"])


def test_segmentation_queries_are_shared_between_protocols(tmp_path):
    b = seg_bench(tmp_path)
    q = plan_queries(b, EvalConfig())
    # standard asks every category of the test split of every image; paper only the present ones
    assert list(zip(q["image_id"], q["category"], q["paper"], q["standard"])) == [
        ("a", "cat", True, True), ("a", "dog", True, True), ("a", "sky", False, True),
        ("b", "cat", False, True), ("b", "dog", False, True), ("b", "sky", True, True)]
    assert set(q["instruction"]) == {"Segment the cat.", "Segment the dog.", "Segment the sky."}
    assert q["query_id"].is_unique
    # "all" asks the dataset's whole category list; paper-only asks just the present ones
    assert len(plan_queries(b, EvalConfig(standard_classes="all"))) == 2 * 5
    paper_only = plan_queries(b, EvalConfig(protocols=("paper",)))
    assert list(zip(paper_only["image_id"], paper_only["category"])) == [("a", "cat"), ("a", "dog"), ("b", "sky")]
    assert not paper_only["standard"].any()


def test_seeds_depend_on_the_question_only(tmp_path):
    b = seg_bench(tmp_path)
    q1 = plan_queries(b, EvalConfig())
    q2 = plan_queries(b, EvalConfig(sampler=SamplerConfig(batch_size=1, steps=3)))
    assert q1["seed"].tolist() == q2["seed"].tolist()
    assert q1["seed"].is_unique
    assert query_seed(0, "ade20k", "a", "Segment the cat.") == q1["seed"].iloc[0]
    assert plan_queries(b, EvalConfig(seed=1))["seed"].tolist() != q1["seed"].tolist()


def test_pets_classification_questions(tmp_path):
    rows = [{"image_id": "Bengal_1", "category": "Bengal", "input_original_digest": "d1"}]
    records = [ImageRecord("pets", "Bengal_1", "test", "Bengal_1.jpg", 8, 8, label_name="Bengal", species="cat")]
    b = bench(tmp_path, "pets", "classification", "pets", rows, records, ["Bengal", "beagle", "pug"])
    q = plan_queries(b, EvalConfig())
    asked = dict(zip(q["category"], zip(q["paper"], q["standard"])))
    assert asked == {"Bengal": (False, True), "beagle": (False, True), "pug": (False, True),
                     "cat": (True, True), "dog": (True, True)}
    assert "Show red if the picture has cat, otherwise show green." in set(q["instruction"])
    assert set(q["colour"]) == {"red"} and set(q["colour2"]) == {"green"}


def test_detection_and_depth_questions(tmp_path):
    rows = [{"image_id": "1", "category": "cat", "input_original_digest": "d"}]
    records = [ImageRecord("coco", "1", "val", "1.jpg", 8, 8, boxes=[Box("cat", 17, 0, 0, 4, 4)])]
    q = plan_queries(bench(tmp_path, "coco", "detection", "coco", rows, records, ["person", "cat"]), EvalConfig())
    assert q["instruction"].tolist() == ["Detect the cat."]  # only split categories: 'person' never occurs
    rows = [{"image_id": i, "category": None, "input_original_digest": i} for i in ("x", "y")]
    records = [ImageRecord("nyuv2", i, "test", f"{i}.jpg", 8, 8) for i in ("x", "y")]
    q = plan_queries(bench(tmp_path, "nyuv2", "depth", "nyuv2", rows, records, []), EvalConfig())
    assert q["instruction"].tolist() == ["Estimate the depth of this image."] * 2 and q["paper"].all() and q["standard"].all()


def test_heldout_questions_use_every_phrasing(tmp_path):
    b = seg_bench(tmp_path)
    b.spec = BENCHMARKS["ade20k_heldout"]
    q = plan_queries(b, EvalConfig(), ["Segment %category%.", "Which image segments contain the %category%?"])
    assert len(q) == 3 * 2
    assert set(q["phrasing"]) == {"Segment %category%.", "Which image segments contain the %category%?"}
    assert "Which image segments contain the sky?" in set(q["instruction"])


def test_select_images_is_a_deterministic_prefix():
    ids = [f"img{i}" for i in range(20)]
    five = select_images(ids, 5, 0, "ade20k")
    assert five == select_images(list(reversed(ids)), 5, 0, "ade20k")
    assert select_images(ids, 8, 0, "ade20k")[:5] == five  # more images keep the first ones
    assert sorted(select_images(ids, None, 0, "ade20k")) == sorted(ids)
    assert select_images(ids, 5, 1, "ade20k") != five


def test_config_validation():
    with pytest.raises(ValueError, match="protocols"):
        EvalConfig(protocols=("official",))
    with pytest.raises(ValueError, match="standard_classes"):
        EvalConfig(standard_classes="some")
    with pytest.raises(ValueError, match="colour"):
        EvalConfig(positive_colour="teal")
    with pytest.raises(ValueError, match="differ"):
        EvalConfig(positive_colour="red", negative_colour="red")


def test_invalid_metrics():
    good = {"paper": {"miou": 40.0}, "standard": {"miou": 12.0, "pixel_acc": 80.0}}
    assert invalid_metrics("ade20k", good) == []
    bad = {"paper": {"miou": float("nan")}, "standard": {"miou": 120.0}}
    assert invalid_metrics("ade20k", bad) == ["paper/miou = nan (valid range 0..100)",
                                                "standard/miou = 120.0 (valid range 0..100)", "standard/pixel_acc: missing"]
    depth = {"standard": {"rmse": -1.0, "abs_rel": 0.1, "log10": 0.1, "delta1": 1.5, "delta2": 1, "delta3": 1}}
    assert invalid_metrics("nyuv2", depth) == ["standard/rmse = -1.0 (valid range 0..10)",
                                                 "standard/delta1 = 1.5 (valid range 0..1)"]
    # only Pets has a binary accuracy
    assert invalid_metrics("imagenet_sub", {"standard": {"accuracy": 50.0}}) == []
    assert invalid_metrics("pets", {"standard": {"accuracy": 50.0}}) == ["standard/binary_accuracy: missing"]


def test_primary_metrics():
    assert primary_metric("nyuv2", "standard") == ("rmse", False)
    assert primary_metric("coco", "paper") == ("map", True)
    assert primary_metric("voc_det", "standard") == ("ap", True)
    assert primary_metric("fss1000", "standard") == ("miou", True)
    assert BENCHMARKS["ade20k_heldout"].kind == "heldout"


def test_metrics_table_uses_fixed_mlflow_keys():
    frame = metrics_table("voc_seg", {"paper": {"miou": 1.0}, "standard": {"miou": 2.0, "pixel_acc": 3.0}})
    assert frame["mlflow_key"].tolist() == ["eval/voc_seg/paper/miou", "eval/voc_seg/standard/miou",
                                           "eval/voc_seg/standard/pixel_acc"]


# ------------------------------------------------------------------------------------------------
# Tables


def results_dir(tmp_path: Path) -> Path:
    for variant, offset in (("fp", 0.0), ("rp", 1.0)):
        for benchmark, metrics in {
            "nyuv2": {"paper": {"rmse": 0.3}, "standard": {"rmse": 0.9}},
            "coco": {"paper": {"map": 10.0, "map50": 20.0}, "standard": {"ap": 1.0, "ap50": 2.0}},
            "fss1000": {"paper": {"miou": 50.0}, "standard": {"miou": 40.0}},
        }.items():
            shifted = {p: {m: v + offset for m, v in values.items()} for p, values in metrics.items()}
            path = tmp_path / variant / benchmark / "metrics.parquet"
            path.parent.mkdir(parents=True)
            metrics_table(benchmark, shifted).to_parquet(path)
    return tmp_path


def test_table1_places_published_numbers_beside_ours(tmp_path):
    table = T.table1(T.read_results(results_dir(tmp_path)))
    nyu = table[table["benchmark"] == "nyuv2"].iloc[0]
    assert (nyu["FP published"], nyu["FP ours (paper)"], nyu["FP ours (standard)"]) == (0.275, 0.3, 0.9)
    assert (nyu["RP published"], nyu["RP ours (paper)"], nyu["RP ours (standard)"]) == (0.297, 1.3, 1.9)
    coco = table[(table["benchmark"] == "coco")].set_index("metric")
    assert coco.loc["det mAP ↑", "FP ours (paper)"] == 10.0 and coco.loc["det mAP ↑", "FP ours (standard)"] == 1.0
    assert coco.loc["det AP50 ↑", "RP ours (paper)"] == 21.0 and coco.loc["det AP50 ↑", "RP ours (standard)"] == 3.0
    assert math.isnan(table[table["benchmark"] == "ade20k"].iloc[0]["FP ours (paper)"])  # not evaluated: blank
    assert table["benchmark"].tolist()[:8] == ["nyuv2", "sunrgbd", "ade20k", "voc_seg", "pets", "imagenet_sub", "coco", "voc_det"]
    markdown = T.to_markdown(table)
    assert "| nyuv2 " in markdown and "0.275" in markdown and "nan" not in markdown


def test_table2_and_table3(tmp_path):
    t2 = T.table2(T.read_results(results_dir(tmp_path)))
    assert t2[t2["source"] == "published"]["mIoU"].tolist() == [58.5, 62.3, 69.8]
    ours = t2[t2["source"] == "ours"].set_index(["model", "protocol"])["mIoU"]
    assert ours[("InstructCV-RP (ours)", "standard")] == 41.0
    heldout = {"fp": {"paper": {"Segment %category%.": 12.5}}, "rp": {"standard": {"Segment the %category%.": 7.0}}}
    t3 = T.table3(heldout).set_index("instruction")
    assert t3.loc["Segment %category%.", "FP published"] == 36.315
    assert t3.loc["Segment %category%.", "FP ours (paper)"] == 12.5
    assert t3.loc["Segment the %category%.", "RP ours (standard)"] == 7.0
    assert len(t3) == 6 and math.isnan(t3.loc["Segment %category%.", "RP ours (paper)"])


def test_published_baselines_match_the_paper():
    baselines = T.table1_baselines().set_index("model")
    assert baselines.loc["Painter", "ade20k"] == 49.9
    assert baselines.loc["InstructCV-RP", "coco"] == 48.5
    assert baselines.loc["SSA", "voc_seg"] == "*"
    assert len(baselines) == 14
    assert np.isclose(sum(v[1] for v in TABLE3_INSTRUCTIONS.values()), 42.793 + 48.739 + 45.686 + 44.758 + 40.153 + 47.972)
