"""The cost plan (`evaluation.cost_plan`, `instructcv plan`, the `cost_plan` asset): exact counts and arithmetic."""

import json

import pytest
from click.testing import CliRunner

from instructcv_core.benchmarks import BENCHMARKS
from instructcv_core.cli import cli
from instructcv_core.evaluation.cost_plan import SPLIT_SIZES, make_plan, queries_from_sizes


def test_query_rules_per_kind():
    size = SPLIT_SIZES["ade20k"]
    assert queries_from_sizes(BENCHMARKS["ade20k"], size, 2000, 6) == (16_000, 300_000, 300_000)
    assert queries_from_sizes(BENCHMARKS["nyuv2"], SPLIT_SIZES["nyuv2"], 654, 6) == (654, 654, 654)
    assert queries_from_sizes(BENCHMARKS["ade20k_heldout"], size, 200, 6) == (9_600, 9_600, 9_600)
    # Pets: 37 breeds asked (standard) plus the binary cat/dog pair (paper, and generated once more)
    assert queries_from_sizes(BENCHMARKS["pets"], SPLIT_SIZES["pets"], 10, 6) == (20, 370 + 20, 370 + 20)


def test_paper_plan_counts_unet_evaluations_and_gpu_hours(tmp_path):
    plan = make_plan("paper", tmp_path, unet_per_second=1000.0, train_samples_per_second=50.0, train_samples=40_000)
    rows = {r["benchmark"]: r for r in plan.rows()}
    ade = rows["ade20k"]
    assert (ade["images"], ade["standard_queries"], ade["standard_unet_evals"]) == (2000, 300_000, 300_000 * 100 * 3)
    assert ade["standard_gpu_hours"] == 25.0  # 90M evaluations / 1000 per s / 3600
    assert rows["ade20k_heldout"]["images"] == 200 and rows["ade20k_heldout"]["checkpoints"] == 2
    # training: 40k samples x 20 epochs / 50 per s = 16,000 s per checkpoint
    assert plan.train_gpu_hours == pytest.approx(16_000 / 3600)
    expected_eval = sum(r["both_outputs"] * 300 / 1000 / 3600 * r["checkpoints"] for r in rows.values())
    assert plan.eval_gpu_hours == pytest.approx(expected_eval)
    # one-step fine-tunes: 20,000 steps x 32 samples each; the speed-quality curve: 16 grid points and 5 more of
    # the guidance sweep (its 7.5/1.5 is the fp:paper point), each asking the standard questions of 50 images per
    # in-domain benchmark (NYUv2 50 + ADE20K 50 x 150 + COCO 50 x 80 + Pets 50 x (37 breeds + the 2 binary
    # questions) = 13,500): 100 steps x 3 branches, or x 1 unguided
    assert plan.onestep_samples == 640_000 and plan.onestep_gpu_hours == pytest.approx(640_000 / 50 / 3600)
    per_query = {"paper": 300, "few:4": 12, "few:10": 30, "one": 1}
    grid = 4 * sum(per_query.values()) + 300 * 4 + 100  # sweep: 3/1.5, 7.5/1, 7.5/2, 12.5/1.5 guided; 1/1 unguided
    assert plan.speed_quality_points == 21 and plan.speed_quality_unet_evaluations == 13_500 * grid
    assert plan.total_gpu_hours == pytest.approx(expected_eval + 2 * 16_000 / 3600 + 2 * 640_000 / 50 / 3600
                                                 + 13_500 * grid / 1000 / 3600)


def test_plan_command_prints_the_table_and_names_its_anchors(tmp_path):
    result = CliRunner().invoke(cli, ["plan", "--profile", "paper", "--data-root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "| ade20k | 2,000* | 16,000 | 4,800,000 |" in result.output
    assert "A100: diffusers' SD1.5 batch-16 compiled" in result.output and "Total:" in result.output
    as_json = CliRunner().invoke(cli, ["plan", "--profile", "paper", "--data-root", str(tmp_path), "--json",
                                       "--unet-evals-per-second", "2000"])
    data = json.loads(as_json.output)
    assert data["unet_source"] == "given" and data["unet_evals_per_second"] == 2000
    bad = CliRunner().invoke(cli, ["plan", "--unet-evals-per-second", "0"])
    assert bad.exit_code != 0 and "must be > 0" in bad.output


def test_cost_plan_asset_carries_the_table(tmp_path):
    import dagster as dg

    from assets.plan import cost_plan
    from pipelines.resources import InstructCVSettings

    result = dg.materialize([cost_plan], resources={"settings": InstructCVSettings(data_root=str(tmp_path))},
                            run_config={"ops": {"cost_plan": {"config": {"unet_evals_per_second": 1000.0}}}})
    assert result.success
    metadata = result.asset_materializations_for_node("cost_plan")[0].metadata
    expected = make_plan("mini", tmp_path, unet_per_second=1000.0)  # the embedded profile
    assert metadata["total_gpu_hours"].value == pytest.approx(expected.total_gpu_hours)
    assert "| ade20k |" in metadata["plan"].value


def test_plan_counts_the_test_manifests_that_exist(tmp_path):
    from eval_fixture import write_depth_benchmark

    write_depth_benchmark(tmp_path / "mini", images=10)
    plan = make_plan("mini", tmp_path, unet_per_second=1000.0)
    rows = {r["benchmark"]: r for r in plan.rows()}
    # the mini preset evaluates every test image with one unguided step (one UNet evaluation per output)
    assert (rows["nyuv2"]["counts"], rows["nyuv2"]["images"], rows["nyuv2"]["both_outputs"]) == ("counted", 10, 10)
    assert rows["nyuv2"]["both_gpu_hours"] == round(10 * 1 * 1 / 1000 / 3600, 2)
    assert rows["ade20k"]["counts"] == "published sizes"
