"""Subset mode of the standard protocol (`evaluation.subset`): seeded, nested, scored only on the subset,
marked in metrics.parquet and labelled in the results tables."""

from types import SimpleNamespace

import numpy as np
import pandas as pd

from instructcv_core.evaluation.config import EvalConfig
from instructcv_core.evaluation.reporting import metrics_table
from instructcv_core.evaluation.subset import apply_standard_subset, standard_subset_images, subset_protocols
from instructcv_core.evaluation import tables

IDS = [f"img{i:03d}" for i in range(40)]


def test_subset_is_seeded_nested_and_off_when_not_smaller():
    small = standard_subset_images(IDS, EvalConfig(standard_subset=5), "ade20k")
    large = standard_subset_images(IDS, EvalConfig(standard_subset=12), "ade20k")
    assert len(small) == 5 and small == large[:5]
    assert small == standard_subset_images(IDS, EvalConfig(standard_subset=5), "ade20k")  # deterministic
    assert small != standard_subset_images(IDS, EvalConfig(standard_subset=5, seed=1), "ade20k")
    assert standard_subset_images(IDS, EvalConfig(standard_subset=40), "ade20k") is None
    assert standard_subset_images(IDS, EvalConfig(standard_subset=0), "ade20k") is None  # 0: every image
    assert subset_protocols(IDS, EvalConfig(standard_subset=5), "ade20k") == {"standard"}
    assert subset_protocols(IDS, EvalConfig(), "ade20k") == set()


def test_planned_questions_keep_the_paper_ones_and_the_subset_standard_ones():
    frame = pd.DataFrame({"image_id": IDS, "paper": True, "standard": True})
    bench = SimpleNamespace(image_ids=IDS, name="coco")
    out = apply_standard_subset(frame, bench, EvalConfig(standard_subset=7))
    assert out["paper"].all() and out["standard"].sum() == 7
    assert set(out.loc[out["standard"], "image_id"]) == set(standard_subset_images(IDS, EvalConfig(standard_subset=7), "coco"))
    assert apply_standard_subset(frame, bench, EvalConfig()).equals(frame)


def test_the_standard_classification_score_uses_only_the_subset_images():
    from instructcv_core.tasks.classification import ClassificationEvaluation

    rng = np.random.default_rng(0)
    classes = ["a", "b", "c"]
    records = {i: SimpleNamespace(label_name=classes[n % 3], species=None) for n, i in enumerate(IDS[:9])}
    bench = SimpleNamespace(records=records, categories=classes, spec=SimpleNamespace(binary_species=False))
    subset = set(IDS[:4])
    rows = [{"query_id": f"{i}/{c}", "image_id": i, "category": c, "colour": "red", "colour2": "green",
             "output_digest": f"{i}/{c}", "paper": c == records[i].label_name or c == "a" or c == "b",
             "standard": i in subset} for i in records for c in classes]
    outputs = {r["output_digest"]: rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for r in rows}
    result = ClassificationEvaluation().score(bench, pd.DataFrame(rows), outputs.__getitem__, None, EvalConfig())
    assert set(result["standard"]["per_image"]) == subset
    assert result["paper"]["images"] == 9


def test_metrics_table_marks_and_tables_label_subset_cells():
    frame = metrics_table("ade20k", {"paper": {"miou": 40.0}, "standard": {"miou": 20.0, "pixel_acc": 60.0}}, subset={"standard"})
    assert frame.set_index("protocol")["subset"].to_dict() == {"paper": False, "standard": True}
    same_terms = {"sampler": "s", "image_set": "i", "source": "x"}  # provenance of comparable FP/RP cells
    if "ci_low" not in frame:
        same_terms.update(ci_low=float("nan"), ci_high=float("nan"))
    results = pd.concat([frame.assign(variant="fp", **same_terms),
                         metrics_table("ade20k", {"paper": {"miou": 41.0}, "standard": {"miou": 21.0}}).assign(
                             variant="rp", **same_terms)])
    table = tables.table1(results)
    row = table.index[table["benchmark"] == "ade20k"][0]
    assert table.at[row, "FP ours (standard)"] == 20.0  # the number itself is unchanged
    markdown = tables.to_markdown(table)
    assert "20.000 †" in markdown and "21.000 †" not in markdown and "40.000 †" not in markdown
    assert "seeded subset" in markdown
    assert "†" not in tables.to_markdown(tables.table1(results.assign(subset=False)))
