"""The outputs to generate for a benchmark: every question of both protocols, each asked once.

The two protocols ask different questions of the same images, and the `paper` questions are a
subset of the `standard` ones (the paper asks only ground-truth-present categories, the standard
protocol asks every category), so each output is generated once and shared. Which questions a
benchmark asks is its task's business (`instructcv_core.tasks`); this module merges them, seeds
them and orders them.
"""

from __future__ import annotations

import hashlib

import pandas as pd

from instructcv_core.evaluation.config import EvalConfig
from instructcv_core.evaluation.data import BenchmarkData
from instructcv_core.evaluation.subset import apply_standard_subset
from instructcv_core.tasks import evaluation
from instructcv_core.tasks.base import query_seed  # the tasks' seeded draws use it too: it lives below both


def plan_queries(bench: BenchmarkData, config: EvalConfig, heldout_phrasings: list[str] | None = None) -> pd.DataFrame:
    """Every output to generate, one row each, with the protocols that use it.

    Columns: query_id, image_id, input_digest (original resolution), category, instruction, colour,
    colour2, seed, paper, standard (bools: which protocol scores this output), phrasing.
    """
    inputs = bench.frame.groupby("image_id")["input_original_digest"].first().to_dict()
    want_paper, want_standard = "paper" in config.protocols, "standard" in config.protocols
    rows = [{"image_id": q.image_id, "input_digest": inputs[q.image_id], "category": q.category,
             "instruction": q.instruction, "colour": q.colour, "colour2": q.colour2,
             "paper": bool(q.paper and want_paper), "standard": bool(q.standard and want_standard),
             "phrasing": q.phrasing}
            for q in evaluation(bench.spec.task, bench.spec.kind).questions(bench, config, heldout_phrasings)]
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    # several purposes can ask the same question (e.g. the binary cat/dog queries): generate it once
    frame = (frame.groupby(["image_id", "instruction"], sort=False, as_index=False)
             .agg({"input_digest": "first", "category": "first", "colour": "first", "colour2": "first",
                   "paper": "any", "standard": "any", "phrasing": "first"}))
    frame = apply_standard_subset(frame, bench, config)  # subset mode: standard questions of some images only
    frame = frame[frame["paper"] | frame["standard"]].reset_index(drop=True)
    frame["seed"] = [query_seed(config.seed, bench.name, i, t) for i, t in zip(frame["image_id"], frame["instruction"])]
    frame["query_id"] = [hashlib.sha1(f"{bench.name}|{i}|{t}".encode()).hexdigest()[:16]
                         for i, t in zip(frame["image_id"], frame["instruction"])]
    return frame.sort_values(["image_id", "instruction"], kind="stable").reset_index(drop=True)


__all__ = ["plan_queries", "query_seed"]
