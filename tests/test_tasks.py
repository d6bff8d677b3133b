"""The task registry and the benchmark table: every task has the same shape, every benchmark names a
registered task, what repeats per benchmark is generated from the table, a fifth task needs no
edit outside its own module, and the tasks sit below evaluation (no import cycle)."""

from __future__ import annotations

import ast
import inspect
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from instructcv_core.benchmarks import BENCHMARKS, TABLES, Benchmark, TableRow, in_table, manifest_benchmarks
from instructcv_core.data.records import ImageRecord
from instructcv_core.evaluation.config import EvalConfig
from instructcv_core.evaluation.data import BenchmarkData
from instructcv_core.evaluation.planning import plan_queries
from instructcv_core.evaluation.scoring import invalid_metrics, primary_metric, score
from instructcv_core.evaluation.instruction_following import OUTPUT_KINDS, task_kinds
from instructcv_core.tasks import TASK_NAMES, TASKS, MetricSpec, Question, evaluation, task
from instructcv_core.tasks.base import Evaluation, Task

TASK_METHODS = [name for name, member in inspect.getmembers(Task) if inspect.isfunction(member) and not name.startswith("_")]
EVALUATION_METHODS = [name for name, member in inspect.getmembers(Evaluation)
                      if inspect.isfunction(member) and not name.startswith("_")]


def test_the_registry_holds_the_four_tasks_in_the_papers_order():
    assert TASK_NAMES == ("segmentation", "detection", "depth", "classification")
    assert all(TASKS[name].name == name for name in TASKS)
    with pytest.raises(KeyError, match="known: segmentation, detection, depth, classification"):
        task("colourise")


@pytest.mark.parametrize("name", TASK_NAMES)
def test_every_task_implements_the_protocol(name):
    t = TASKS[name]
    assert len(TASK_METHODS) == 11
    for method in TASK_METHODS:
        assert callable(getattr(t, method)), f"{name} lacks {method}"
        protocol_params = list(inspect.signature(getattr(Task, method)).parameters)[1:]
        assert list(inspect.signature(getattr(t, method)).parameters) == protocol_params, (name, method)
    assert isinstance(t.instruction_hint, str) and isinstance(t.decisive, bool)
    assert t.draws in OUTPUT_KINDS[:-1]  # what a task switch to it must come back as ("other" is no task's)
    assert t.official_folder_tag is None or (isinstance(t.official_folder_tag, str) and "_" not in t.official_folder_tag)
    assert t.evaluations, name
    assert len(EVALUATION_METHODS) == 7
    for kind, ev in t.evaluations.items():
        assert ev.kind == kind
        for method in EVALUATION_METHODS:
            assert callable(getattr(ev, method)), f"{name}/{kind} lacks {method}"
            protocol_params = list(inspect.signature(getattr(Evaluation, method)).parameters)[1:]
            assert list(inspect.signature(getattr(ev, method)).parameters) == protocol_params, (name, kind, method)
        assert isinstance(ev.metrics, MetricSpec)
        for protocol in ("paper", "standard"):
            headline = ev.metrics.headline[protocol]
            assert headline in ev.metrics.ranges[protocol]


def test_only_classification_settles_the_task_by_its_own_rule():
    assert [t.name for t in TASKS.values() if t.decisive] == ["classification"]
    assert TASKS["segmentation"].recognise("Cut out the car") == "Cut out"
    assert TASKS["classification"].recognise("Show red if there is a cat") is None  # one colour only
    assert TASKS["classification"].recognise("Show red if there is a cat, otherwise green") == "if"


def test_predict_offers_every_registered_task():
    from instructcv_core.cli.predict import TASK_CHOICES

    assert TASK_CHOICES == ("auto", *TASK_NAMES)


def test_each_task_draws_its_own_kind_and_owns_its_official_folder_tag():
    assert {name: t.draws for name, t in TASKS.items()} == task_kinds() == {
        "segmentation": "mask", "detection": "boxes", "depth": "depth", "classification": "colour"}
    assert {name: t.official_folder_tag for name, t in TASKS.items()} == {
        "segmentation": "seg", "detection": "det", "depth": None, "classification": None}
    from instructcv_core.evaluation.protocols import paper

    assert paper.official_folder_tag("detection") == "det"
    assert paper.official_det_folder_fields("1_cat_det") == ("1", "cat")


# ------------------------------------------------------------------------------------------------
# layering: the tasks sit below evaluation


def _fresh_modules(code: str) -> list[str]:
    """The ``instructcv_core`` modules a fresh interpreter holds after running ``code``."""
    script = code + "\nimport sys\nprint('\\n'.join(sorted(m for m in sys.modules if m.startswith('instructcv_core'))))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parent.parent)
    return done.stdout.split()


def test_importing_the_tasks_imports_nothing_of_evaluation():
    loaded = _fresh_modules("import instructcv_core.tasks")
    assert "instructcv_core.tasks.segmentation" in loaded and "instructcv_core.tasks.classification" in loaded
    assert [m for m in loaded if m == "instructcv_core.evaluation" or m.startswith("instructcv_core.evaluation.")] == []


def test_the_task_base_imports_no_task_module():
    """``tasks.base`` is the bottom of the package: loaded alone (the package's ``__init__``, which
    registers the tasks, bypassed) it brings in no other module of the project, and it names no task
    module anywhere, not even in a function."""
    loaded = _fresh_modules(
        "import sys, types, pathlib, instructcv_core\n"
        "package = types.ModuleType('instructcv_core.tasks')\n"
        "package.__path__ = [str(pathlib.Path(instructcv_core.__file__).parent / 'tasks')]\n"
        "sys.modules['instructcv_core.tasks'] = package\n"
        "import instructcv_core.tasks.base")
    assert loaded == ["instructcv_core", "instructcv_core.tasks", "instructcv_core.tasks.base"]
    import instructcv_core.tasks.base as base

    tree = ast.parse(Path(base.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not {m for m in imported if m and m.startswith("instructcv_core.tasks")}, imported
    assert not {m for m in imported if m and m.startswith("instructcv_core.evaluation")} - {
        "instructcv_core.evaluation.config", "instructcv_core.evaluation.data",  # type hints only (TYPE_CHECKING)
        "instructcv_core.evaluation.intervals"}  # per_image_means: when it runs


def test_query_seed_has_one_home():
    from instructcv_core.evaluation import planning
    from instructcv_core.tasks import base

    assert planning.query_seed is base.query_seed


# ------------------------------------------------------------------------------------------------
# the benchmark table


def test_every_benchmark_names_a_registered_task_and_one_of_its_evaluations():
    for b in BENCHMARKS.values():
        assert b.task in TASKS, b.name
        assert b.kind in TASKS[b.task].evaluations, b.name
        assert b.table in TABLES
        assert b.test_manifest in {m.name for m in manifest_benchmarks()}
        assert b.image_limit in ("max_images", "heldout_images") and hasattr(EvalConfig(), b.image_limit)
        ranges = evaluation(b.task, b.kind).metric_ranges(b)
        for row in b.rows:  # every table row shows metrics the benchmark reports
            assert row.paper_metric in ranges["paper"] and row.standard_metric in ranges["standard"], (b.name, row)


def test_the_benchmark_table_lists_the_papers_evaluations():
    assert [b.name for b in manifest_benchmarks()] == [
        "nyuv2", "ade20k", "coco", "pets", "sunrgbd", "voc_seg", "voc_det", "imagenet_sub", "fss1000"]
    assert [b.name for b in BENCHMARKS.values() if b.in_domain and b.untrained_reference] == ["nyuv2", "ade20k", "coco", "pets"]
    assert [b.name for b in BENCHMARKS.values() if not b.untrained_reference] == ["ade20k_heldout"]
    assert BENCHMARKS["ade20k_heldout"].test_manifest == "ade20k"
    # dataset properties that were name checks
    assert [b.name for b in BENCHMARKS.values() if b.background_class] == ["voc_seg"]
    assert [b.name for b in BENCHMARKS.values() if b.eigen_crop] == ["nyuv2"]
    assert [b.name for b in BENCHMARKS.values() if b.binary_species] == ["pets"]


def test_table_rows_are_placed_explicitly_not_by_order():
    for table in TABLES:
        positions = [row.position for _, row in in_table(table)]
        assert positions == list(range(len(positions))), table
    assert [(b.name, row.label) for b, row in in_table("table1")][-2:] == [("coco", "det AP50 ↑"), ("voc_det", "det AP50 ↑")]
    assert [b.name for b, _ in in_table("table2")] == ["fss1000"]
    assert len(in_table("table3")) == 6 and {b.name for b, _ in in_table("table3")} == {"ade20k_heldout"}


def test_eval_assets_and_tables_are_generated_from_the_table():
    import dagster as dg

    from assets.evaluate import TABLE_SPECS, evaluate_fp, evaluate_untrained, results_tables

    assert {k.path[0] for k in evaluate_fp.keys} == {f"eval_{b}_fp" for b in BENCHMARKS}
    assert {k.path[0] for k in evaluate_untrained.keys} == {f"eval_{b.name}_untrained" for b in BENCHMARKS.values()
                                                            if b.untrained_reference}
    checks = {(c.asset_key.path[0], c.name) for c in evaluate_fp.check_specs}
    assert ("eval_coco_fp", "beats_untrained") in checks
    assert ("eval_ade20k_heldout_fp", "beats_untrained") not in checks
    assert {name: benchmarks for name, (_, benchmarks) in TABLE_SPECS.items()} == {
        "table1": ("nyuv2", "ade20k", "coco", "pets", "sunrgbd", "voc_seg", "voc_det", "imagenet_sub"),
        "table2": ("fss1000",), "table3": ("ade20k_heldout",)}
    deps = {dep.asset_key for dep in results_tables.specs_by_key[dg.AssetKey("table2")].deps}
    assert deps == {dg.AssetKey("eval_fss1000_fp"), dg.AssetKey("eval_fss1000_rp"), dg.AssetKey("eval_fss1000_released")}


# ------------------------------------------------------------------------------------------------
# a fifth task flows through planning and scoring without edits outside its module


class CountingEvaluation:
    kind = "counting"
    metrics = MetricSpec({"paper": {"count_error": (0, math.inf, False)}, "standard": {"count_error": (0, math.inf, False)}},
                         {"paper": "count_error", "standard": "count_error"})

    def metric_ranges(self, benchmark):
        return self.metrics.ranges

    def questions(self, bench, config, phrasings=None):
        for image_id in bench.image_ids:
            yield Question(image_id, "Count the objects.", None, True, True)
            yield Question(image_id, "How many objects?", None, False, True)

    def score(self, bench, outputs, output_image, target_image, config):
        errors = [abs(float(output_image(d).mean()) / 255 - 1) for d in outputs["output_digest"]]
        per_protocol = {"count_error": float(np.mean(errors)), "images": len(set(outputs["image_id"]))}
        return {"predictions": pd.DataFrame({"query_id": outputs["query_id"], "error": errors}),
                "paper": dict(per_protocol), "standard": dict(per_protocol)}

    def query_counts(self, benchmark, images, classes, present, phrasings):
        return images, 2 * images, 2 * images  # as questions: one for both protocols, one for the standard one

    def swap_candidates(self, bench, config, rank):
        return [(image_id, "circles", "squares") for image_id in bench.image_ids]

    def swap_asks(self, asked, other):
        return [(asked, "asked"), (other, "other")]

    def judge_swap(self, bench, pair, output_image, config, cache):
        """Followed when the answer for the asked shape is brighter than the one for the other."""
        means = {row.role: float(output_image(row.output_digest).mean()) for row in pair.itertuples()}
        return means["asked"], means["other"]


class CountingTask:
    name = "counting"
    evaluations = {"counting": CountingEvaluation()}
    draws = "colour"
    official_folder_tag = None

    def probe_instruction(self, bench, category, config):
        return f"Count the {category or 'objects'}."


def _toy(monkeypatch, tmp_path) -> BenchmarkData:
    """The fifth task registered (its task and its benchmark), and a two-image benchmark of it."""
    spec = Benchmark("toy_count", "counting", "toy", "test", False, "Counting (toy)", "counting", "table1",
                     (TableRow("count error ↓", "count_error", "count_error", math.nan, math.nan, 99),))
    monkeypatch.setitem(TASKS, "counting", CountingTask())
    monkeypatch.setitem(BENCHMARKS, "toy_count", spec)
    frame = pd.DataFrame([{"image_id": i, "category": None, "input_original_digest": f"d{i}"} for i in ("b", "a")])
    manifest = tmp_path / "toy.parquet"
    frame.to_parquet(manifest)
    records = {i: ImageRecord("toy", i, "test", f"{i}.jpg", 4, 4) for i in ("a", "b")}
    return BenchmarkData(spec, frame, records, tmp_path, [], ["b", "a"], manifest)


def test_a_fifth_task_plans_and_scores_through_the_registry(monkeypatch, tmp_path):
    bench = _toy(monkeypatch, tmp_path)

    queries = plan_queries(bench, EvalConfig())
    assert list(zip(queries["image_id"], queries["instruction"], queries["paper"], queries["standard"])) == [
        ("a", "Count the objects.", True, True), ("a", "How many objects?", False, True),
        ("b", "Count the objects.", True, True), ("b", "How many objects?", False, True)]
    outputs = queries.assign(output_digest=["white", "black", "white", "white"])
    images = {"white": np.full((2, 2, 3), 255, np.uint8), "black": np.zeros((2, 2, 3), np.uint8)}
    scores = score(bench, outputs, images.__getitem__, images.__getitem__, EvalConfig())
    assert scores.metrics == {"paper": {"count_error": 0.25}, "standard": {"count_error": 0.25}}
    assert scores.details["standard"] == {"images": 2}
    assert invalid_metrics("toy_count", scores.metrics) == []
    assert primary_metric("toy_count", "standard") == ("count_error", False)


def test_a_fifth_task_is_probed_and_judged_for_instruction_following(monkeypatch, tmp_path):
    from instructcv_core.evaluation.instruction_following import judge_probes, plan_probes, task_kinds

    bench = _toy(monkeypatch, tmp_path)
    config = EvalConfig()
    assert task_kinds()["counting"] == "colour"
    probes = plan_probes(bench, config)
    swaps, switches = probes[probes["probe"] == "swap"], probes[probes["probe"] == "switch"]
    # its own swaps: both shapes asked of each image, in its own words
    assert sorted(zip(swaps["image_id"], swaps["category"], swaps["other"], swaps["role"], swaps["instruction"])) == [
        ("a", "circles", "squares", "asked", "Count the circles."), ("a", "squares", "circles", "other", "Count the squares."),
        ("b", "circles", "squares", "asked", "Count the circles."), ("b", "squares", "circles", "other", "Count the squares.")]
    assert set(swaps["task"]) == {"counting"}
    # every image of every benchmark is also asked for the fifth task in a task switch, and the others for theirs
    for image_id in ("a", "b"):
        mine = switches[switches["image_id"] == image_id]
        assert list(mine["task"]) == ["segmentation", "detection", "depth", "classification", "counting"]
        assert list(mine["expected_kind"]) == ["mask", "boxes", "depth", "colour", "colour"]
        assert list(mine["instruction"])[-1] == "Count the objects."
        assert list(mine["instruction"])[0] == "Segment the object."

    images = {"white": np.full((8, 8, 3), 255, np.uint8), "black": np.zeros((8, 8, 3), np.uint8),
              "red": np.tile(np.array([200, 20, 20], np.uint8), (8, 8, 1))}
    answer = ["white" if (p, r) == ("swap", "asked") else "black" if p == "swap" else "red"
              for p, r in zip(probes["probe"], probes["role"])]
    noise = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    summary, judged = judge_probes(bench, probes.assign(output_digest=answer), images.__getitem__, lambda _: noise, config)
    assert (summary["pairs"], summary["pairs_followed"]) == (2, 2)
    # a colour block everywhere: the classification and counting switches drawn as asked, the others not
    assert (summary["switch_outputs"], summary["switch_matched"]) == (10, 4)
    assert summary["kinds"] == {"mask": {"colour": 2}, "boxes": {"colour": 2}, "depth": {"colour": 2}, "colour": {"colour": 4}}
    assert not summary["passed"] and "task switches" in summary["reason"]
    assert list(judged[judged["probe"] == "swap"]["score_asked"]) == [255.0, 255.0]


def test_a_fifth_task_has_its_cost_plan_entry(monkeypatch, tmp_path):
    from instructcv_core.evaluation.cost_plan import SPLIT_SIZES, SplitSize, make_plan, queries_from_sizes

    bench = _toy(monkeypatch, tmp_path)
    monkeypatch.setitem(SPLIT_SIZES, "toy_count", SplitSize(300, 1, 1, "toy split"))  # its published size
    assert queries_from_sizes(bench.spec, SPLIT_SIZES["toy_count"], 10, 6) == (10, 20, 20)
    plan = make_plan("paper", tmp_path / "no_data", unet_per_second=1000.0, train_samples_per_second=50.0,
                     train_samples=40_000)
    row = {r["benchmark"]: r for r in plan.rows()}["toy_count"]
    assert (row["images"], row["paper_queries"], row["standard_queries"], row["both_outputs"]) == (300, 300, 600, 600)
    assert row["counts"] == "published sizes" and row["both_gpu_hours"] == round(600 * 300 / 1000 / 3600, 2)
    assert "| toy_count | 300* | 300 |" in plan.to_markdown()


# ------------------------------------------------------------------------------------------------
# the eval and build configs: one declaration per knob, profile presets in one place


def test_eval_config_takes_the_profile_preset_then_the_run_config():
    from assets.evaluate import EvalAssetConfig, eval_config
    from instructcv_core.evaluation.config import EvalConfig
    from instructcv_core.inference.config import SamplerConfig
    from pipelines.resources import InstructCVSettings

    mini = eval_config(EvalAssetConfig(), InstructCVSettings(profile="mini", seed=3))
    mini_sampler = SamplerConfig(preset="one", steps=1, scheduler="ddim", timestep_spacing="trailing", text_guidance=1.0,
                                 image_guidance=1.0, batch_size=64, dtype="float32", resolution=64)
    assert not mini_sampler.guided and mini_sampler.unet_evaluations(10) == 10
    assert mini == EvalConfig(sampler=mini_sampler,
                              max_images=None, heldout_images=50, seed=3)
    paper = eval_config(EvalAssetConfig(), InstructCVSettings(profile="paper"))
    assert (paper.sampler.steps, paper.sampler.batch_size, paper.sampler.dtype, paper.sampler.resolution) == (100, 64, "float16", 256)
    assert (paper.max_images, paper.heldout_images) == (None, 200)
    chosen = eval_config(EvalAssetConfig(steps=2, max_images=0, protocols=["standard"], negative_colour="blue",
                                         resolution=32), InstructCVSettings(profile="mini"))
    assert (chosen.sampler.steps, chosen.sampler.resolution, chosen.sampler.batch_size) == (2, 32, 64)
    assert (chosen.max_images, chosen.protocols, chosen.negative_colour) == (None, ("standard",), "blue")  # 0: every image
    with pytest.raises(ValueError, match="negative_colour"):
        eval_config(EvalAssetConfig(negative_colour="red"), InstructCVSettings(profile="mini"))
    with pytest.raises(ValueError, match="dtype"):
        eval_config(EvalAssetConfig(dtype="float8"), InstructCVSettings(profile="mini"))


def test_build_config_takes_the_preset_the_run_config_and_the_settings():
    from assets.datasets import DatasetBuildConfig, build_config
    from instructcv_core.construction.config import BuildConfig
    from pipelines.resources import InstructCVSettings

    settings = InstructCVSettings(profile="mini", seed=5)
    assert build_config(DatasetBuildConfig(), settings) == BuildConfig(resolution=64, seed=5, box_width=12,
                                                                       fp_binary_colours="random")  # mini preset
    chosen = build_config(DatasetBuildConfig(box_colour="red", pets_variants=["binary"], workers=1), settings)
    assert (chosen.box_colour, chosen.pets_variants, chosen.box_width) == ("red", ("binary",), 12)
    with pytest.raises(ValueError, match="box_colour"):
        build_config(DatasetBuildConfig(box_colour="teal"), settings)
