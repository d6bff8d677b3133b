"""Evaluation planning, the trained-vs-untrained comparison, metric validity, and Tables 1-3."""

import json
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


def pets_bench(tmp_path):
    rows = [{"image_id": "Bengal_1", "category": "Bengal", "input_original_digest": "d1"}]
    records = [ImageRecord("pets", "Bengal_1", "test", "Bengal_1.jpg", 8, 8, label_name="Bengal", species="cat")]
    return bench(tmp_path, "pets", "classification", "pets", rows, records, ["Bengal", "beagle", "pug"])


def test_pets_classification_questions(tmp_path):
    q = plan_queries(pets_bench(tmp_path), EvalConfig())
    standard_asked = q[q["standard"]]
    assert sorted(standard_asked["category"]) == ["Bengal", "beagle", "cat", "dog", "pug"]
    assert "Show red if the picture has cat, otherwise show green." in set(standard_asked["instruction"])
    # paper: the official inference instruction of infer/edit_cli_cls.py (typo kept), cat and dog
    paper_asked = q[q["paper"]]
    assert sorted(paper_asked["instruction"]) == ["Show red if there exsits cat; if not, show green instead.",
                                                  "Show red if there exsits dog; if not, show green instead."]
    assert not (q["paper"] & q["standard"]).any()
    assert set(q["colour"]) == {"red"} and set(q["colour2"]) == {"green"}


def test_paper_pets_label_comes_from_the_breed_as_official(tmp_path):
    # Official evaluate_cls.py (5814835): the label is looked up from the breed in the file name,
    # cat set first, then the dog set; "Bengal" is in both, so Bengal_1 is a dog. An ideal model
    # answers red (present) to "cat" and green (absent) to "dog"; the scorer picks the query nearer
    # green (dog), which matches the official label: 100 % (with the record's species, cat: 0 %).
    from instructcv_core.evaluation.scoring import score

    b = pets_bench(tmp_path)
    q = plan_queries(b, EvalConfig())
    colour = {"cat": (255, 0, 0), "dog": (0, 255, 0)}
    images = {row.query_id: np.full((4, 4, 3), colour.get(row.category, (0, 0, 255)), dtype=np.uint8)
              for row in q.itertuples()}
    outputs = q.assign(output_digest=q["query_id"])
    result = score(b, outputs, lambda digest: images[digest], lambda digest: None, EvalConfig())
    assert result.metrics["paper"]["accuracy"] == 100.0
    assert result.details["paper"]["images"] == 1 and result.details["paper"]["near_ties"] == 0


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


OFFICIAL_SEG_POOL = [  # infer/edit_cli_seg.py, inference_seg, `if rephrase:` (verbatim)
    "Could someone please break down the % \\into individual parts?", "Can you provide me with a segment of the %?",
    "Please divide the % \\into smaller parts", "Segment the %", "Can you provide me with a segment of the %?",
    "Help me segment the %", "Would you be willing to split the % with me?"]


def test_each_checkpoint_is_asked_as_the_paper_asked_it(tmp_path):
    # as_paper: FP (and the untrained base) get the fixed templates, RP the official --rephrase pool
    config = EvalConfig()
    assert config.instructions == "as_paper"
    assert [config.for_checkpoint(v).instruction_mode() for v in ("fp", "rp", "untrained")] == ["fp", "rp_pool", "fp"]
    assert EvalConfig(instructions="fp").for_checkpoint("rp").instruction_mode() == "fp"
    with pytest.raises(ValueError, match="instructions"):
        EvalConfig(instructions="rp")
    b = seg_bench(tmp_path)
    rp = plan_queries(b, config.for_checkpoint("rp"))
    fp = plan_queries(b, config.for_checkpoint("fp"))
    assert fp["instruction"].str.match(r"^Segment the \w+\.$").all()
    allowed = {(c, t.replace("%", c)) for c in ("wall", "cat", "dog", "sky", "tree") for t in OFFICIAL_SEG_POOL}
    assert set(zip(rp["category"], rp["instruction"])) <= allowed
    assert len(set(rp["instruction"].str.replace(r"(wall|cat|dog|sky|tree)", "%", regex=True))) > 1  # drawn per question
    assert rp["instruction"].tolist() == plan_queries(b, config.for_checkpoint("rp"))["instruction"].tolist()  # seeded
    key = ["image_id", "category", "paper", "standard"]
    assert rp[key].sort_values(key).values.tolist() == fp[key].sort_values(key).values.tolist()  # the same questions
    # no official pool for detection: RP is asked the fixed template there too
    from instructcv_core.instructions.templates import test_instruction

    assert test_instruction("detection", "rp_pool", 0, "k", category="cat") == "Detect the cat."
    # Table 3's held-out phrasings stay the separate robustness test, whatever the mode
    b.spec = BENCHMARKS["ade20k_heldout"]
    heldout = plan_queries(b, config.for_checkpoint("rp"), ["Segment %category%."])
    assert set(heldout["instruction"]) == {"Segment cat.", "Segment dog.", "Segment sky."}


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


SAMPLER = {"steps": 100, "text_guidance": 7.5, "image_guidance": 1.5, "scheduler": "euler_ancestral",
           "resolution": 256, "batch_size": 16, "dtype": "float16", "device": "auto"}


def write_result(folder: Path, benchmark: str, metrics: dict, images=("a", "b"), sampler=None, ci: float | None = None,
                 checkpoint: str = "ckpt@0123") -> Path:
    """A synthetic evaluation results folder: metrics.parquet (with CI columns when ``ci`` is given),
    identity.json and queries.parquet, as `evaluate_benchmark` writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    frame = metrics_table(benchmark, metrics).drop(columns=["n", "ci_low", "ci_high"])  # as written before intervals
    if ci is not None:
        frame = frame.assign(n=len(images), ci_low=frame["value"] - ci, ci_high=frame["value"] + ci)
    frame.to_parquet(folder / "metrics.parquet")
    (folder / "identity.json").write_text(json.dumps({"checkpoint": checkpoint, "manifest": "m" * 64, "queries": "q",
                                                      "sampler": sampler or SAMPLER, "instructions": "fp"}))
    pd.DataFrame({"query_id": [f"q{i}" for i in range(len(images))], "image_id": list(images)}).to_parquet(folder / "queries.parquet")
    return folder


def results_dir(tmp_path: Path) -> dict:
    sources = {}
    for variant, offset in (("fp", 0.0), ("rp", 1.0)):
        for benchmark, metrics in {
            "nyuv2": {"paper": {"rmse": 0.3}, "standard": {"rmse": 0.9}},
            "coco": {"paper": {"map": 10.0, "map50": 20.0}, "standard": {"ap": 1.0, "ap50": 2.0}},
            "fss1000": {"paper": {"miou": 50.0}, "standard": {"miou": 40.0}},
        }.items():
            shifted = {p: {m: v + offset for m, v in values.items()} for p, values in metrics.items()}
            sources[(variant, benchmark)] = write_result(tmp_path / variant / benchmark, benchmark, shifted)
    return sources


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
    assert "| nyuv2 " in markdown and "0.275" in markdown and "nan" not in markdown and "ci_low" not in markdown


def test_tables_read_exactly_their_sources_and_record_each_cell(tmp_path):
    sources = results_dir(tmp_path)
    # a stray result in the evaluation folder (another sampler) is not picked up: no glob
    write_result(tmp_path / "fp" / "nyuv2_old", "nyuv2", {"paper": {"rmse": 9.0}, "standard": {"rmse": 9.0}},
                 sampler={**SAMPLER, "steps": 8})
    results = T.read_results(sources)
    assert set(results["source"]) == {str(path) for path in sources.values()}
    cell = results[(results["variant"] == "rp") & (results["benchmark"] == "nyuv2") & (results["protocol"] == "paper")].iloc[0]
    assert (cell["value"], cell["n"], cell["checkpoint"], cell["instructions"]) == (1.3, 2, "ckpt@0123", "fp")
    assert cell["sampler"] == ("paper: scheduler euler_ancestral, steps 100, text_guidance 7.5, image_guidance 1.5, "
                              "resolution 256, dtype float16")
    assert cell["image_set"].startswith("2 images #")
    assert T.read_results({("fp", "nyuv2"): None}).empty
    with pytest.raises(ValueError, match="holds results of coco, expected nyuv2"):
        T.read_results({("fp", "nyuv2"): sources[("fp", "coco")]})
    with pytest.raises(FileNotFoundError, match="identity.json: missing"):
        (sources[("fp", "coco")] / "identity.json").unlink()
        T.read_results(sources)


def test_tables_refuse_fp_and_rp_cells_computed_on_different_terms(tmp_path):
    sources = results_dir(tmp_path)
    metrics = {"paper": {"rmse": 1.0}, "standard": {"rmse": 2.0}}
    sources[("rp", "nyuv2")] = write_result(tmp_path / "rp2" / "nyuv2", "nyuv2", metrics, sampler={**SAMPLER, "steps": 50})
    with pytest.raises(T.IncomparableCells, match=r"nyuv2: the FP and RP results differ in sampler"):
        T.table1(T.read_results(sources))
    sources[("rp", "nyuv2")] = write_result(tmp_path / "rp3" / "nyuv2", "nyuv2", metrics, images=("a", "c"))
    with pytest.raises(T.IncomparableCells, match=r"differ in image set"):
        T.table1(T.read_results(sources))
    # batch size and device do not change the outputs (each has its own seed): comparable
    sources[("rp", "nyuv2")] = write_result(tmp_path / "rp4" / "nyuv2", "nyuv2", metrics,
                                            sampler={**SAMPLER, "batch_size": 4, "device": "cuda"})
    assert T.table1(T.read_results(sources)) is not None
    fss = {"paper": {"miou": 1.0}, "standard": {"miou": 2.0}}
    sources[("rp", "fss1000")] = write_result(tmp_path / "rp5" / "fss1000", "fss1000", fss, images=("z",))
    with pytest.raises(T.IncomparableCells, match="fss1000"):
        T.table2(T.read_results(sources))


def test_tables_show_the_confidence_interval_where_the_results_have_one(tmp_path):
    sources = results_dir(tmp_path)
    sources[("fp", "ade20k")] = write_result(tmp_path / "fp" / "ade20k", "ade20k",
                                             {"paper": {"miou": 52.1}, "standard": {"miou": 40.0, "pixel_acc": 70.0}}, ci=4.2)
    results = T.read_results(sources)
    table = T.table1(results)
    ade = table[table["benchmark"] == "ade20k"].iloc[0]
    assert (ade["FP ours (paper) ci_low"], ade["FP ours (paper) ci_high"]) == pytest.approx((47.9, 56.3))
    markdown = T.to_markdown(table)
    assert "52.100 [47.900, 56.300]" in markdown and "40.000 [35.800, 44.200]" in markdown
    assert "| 0.300 " in markdown or " 0.300 |" in markdown  # nyuv2: no CI in its results, the value alone
    notes = T.table_notes(results, ["nyuv2", "ade20k"], {"raw_nyuv2": "INCOMPLETE: sync.zip unavailable", "raw_coco": "complete"})
    bare = [n for n in notes if n.startswith("no 95 % CI")]
    assert len(bare) == 1 and "of FP nyuv2, RP nyuv2 (" in bare[0]  # not ade20k, which has its CIs
    assert "raw_nyuv2 is INCOMPLETE: sync.zip unavailable" in notes and not any("raw_coco" in n for n in notes)
    # cells: the provenance of what the table shows
    cells = T.cells_table(results, ["ade20k"])
    assert cells["n"].tolist() == [2, 2, 2] and set(cells["protocol"]) == {"paper", "standard"}


def test_the_paper_classification_column_carries_its_inversion_note(tmp_path):
    table = T.table1(T.read_results(results_dir(tmp_path)))
    notes = table.drop_duplicates("benchmark").set_index("benchmark")["note"]
    assert "inverted" in notes["pets"] and "inverted" in notes["imagenet_sub"]
    assert notes["nyuv2"] == "" and notes["coco"] == ""


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
