"""The speed-quality curve: its config, its points, its rows and the Dagster asset on a tiny depth benchmark."""

import json
import math

import pandas as pd
import pytest

from eval_fixture import point_checkpoint, write_depth_benchmark
from instructcv_core.evaluation import speed_quality as sq
from instructcv_core.evaluation.intervals import Interval
from instructcv_core.evaluation.run import BenchmarkResult
from instructcv_core.inference.config import SamplerConfig


def test_specs_parse_and_bad_ones_are_named():
    assert sq.parse_preset("paper") == ("paper", None)
    assert sq.parse_preset("few:6") == ("few", 6)
    assert sq.parse_preset("one") == ("one", None)
    assert sq.parse_guidance("7.5/1.5") == (7.5, 1.5)
    for bad in ("fast", "one:2", "paper:50", "few:", "few:12"):
        with pytest.raises(ValueError, match="speed-quality: sampler"):
            sq.parse_preset(bad)
    with pytest.raises(ValueError, match="speed-quality: guidance '7.5'"):
        sq.parse_guidance("7.5")
    assert sq.parse_point("fp_onestep:few:4") == ("fp_onestep", "few:4")
    for bad in ("fp", "untrained:one", "fp:"):
        with pytest.raises(ValueError, match="grid entry"):
            sq.parse_point(bad)
    with pytest.raises(ValueError, match="guidance_checkpoints"):
        sq.SpeedQualityConfig(guidance_checkpoints=("base",))
    assert len(sq.SpeedQualityConfig().grid) == 16  # every checkpoint under every preset
    with pytest.raises(ValueError, match="held-out"):
        sq.SpeedQualityConfig(benchmarks=("ade20k_heldout",))
    with pytest.raises(KeyError, match="unknown benchmark"):
        sq.SpeedQualityConfig(benchmarks=("kitti",))
    assert sq.SpeedQualityConfig(images=0).images is None


def test_the_paper_preset_can_take_fewer_images_than_the_other_points():
    curve = sq.SpeedQualityConfig(images=4, paper_images=1)
    assert (curve.images_for("paper"), curve.images_for("few"), curve.images_for("one")) == (1, 4, 4)
    assert sq.SpeedQualityConfig(images=4).images_for("paper") == 4
    for bad in (0, 5):
        with pytest.raises(ValueError, match="paper_images must be between 1 and images"):
            sq.SpeedQualityConfig(images=4, paper_images=bad)


def test_points_cover_every_checkpoint_and_preset_and_the_sweep_once():
    config = sq.SpeedQualityConfig(grid=("fp:paper", "fp:few:4", "fp_onestep:paper", "fp:one", "fp_onestep:few:4",
                                         "fp_onestep:one"), guidance=("1.0/1.0", "7.5/1.5"), guidance_sampler="one", guidance_checkpoints=("fp",))
    base = SamplerConfig(resolution=64, batch_size=8, dtype="float32")
    points = sq.points(config, base)
    labels = [(p.checkpoint, p.sampler.label, p.sweep) for p in points]
    # "one" at 1.0/1.0 is the `one` preset itself: measured once, as a preset point
    assert labels == [("fp", "paper", False), ("fp", "few-4", False), ("fp", "one", False),
                      ("fp", "one+cfg(7.5/1.5)", True),
                      ("fp_onestep", "paper", False), ("fp_onestep", "few-4", False), ("fp_onestep", "one", False)]
    evals = {(p.checkpoint, p.sampler.label): p.sampler.unet_evaluations(1) for p in points}
    assert evals[("fp", "paper")] == 300 and evals[("fp", "few-4")] == 12 and evals[("fp", "one")] == 1
    assert evals[("fp", "one+cfg(7.5/1.5)")] == 3
    assert all(p.sampler.resolution == 64 and p.sampler.batch_size == 8 for p in points)


def _result(value: float, unet_evaluations: int, seconds: float) -> BenchmarkResult:
    return BenchmarkResult("nyuv2", {"standard": {"rmse": value}}, {}, {
        "images": 4, "queries": 4, "standard_queries": 4, "unet_evaluations": unet_evaluations,
        "generation_seconds": seconds, "reused": unet_evaluations == 0}, {}, {},
        {"standard": {"rmse": Interval(4, value - 0.01, value + 0.02)}})


def test_measure_point_keeps_the_throughput_it_measured_when_outputs_are_reused(tmp_path):
    point = sq.Point("fp", sq.sampler_for(SamplerConfig(resolution=32), "few:2"), False)  # 6 evals per query
    rows = sq.measure_point(point, ["nyuv2"], lambda name, out: _result(0.25, 24, 2.0), tmp_path, "cpu")
    assert rows[0]["images_per_second"] == 2.0 and rows[0]["unet_evals_per_query"] == 6
    assert (rows[0]["value"], rows[0]["ci_low"], rows[0]["ci_high"], rows[0]["n"]) == (0.25, 0.24, 0.27, 4)
    assert rows[0]["metric"] == "rmse" and rows[0]["higher_is_better"] is False
    again = sq.measure_point(point, ["nyuv2"], lambda name, out: _result(0.25, 0, 0.01), tmp_path, "cpu")
    assert again[0]["images_per_second"] == 2.0  # not 4 outputs / 0.01 s of reuse
    path = sq.point_dir(tmp_path, point) / "nyuv2" / "throughput.json"
    assert json.loads(path.read_text())["outputs"] == 4


def test_one_step_summary_compares_the_best_one_step_with_the_best_paper_setting():
    rows = []
    for checkpoint, preset, evals, ips, miou, absrel in [
        ("fp", "paper", 300, 1.0, 0.40, 0.30), ("fp_onestep", "paper", 300, 1.0, 0.10, 0.90),
        ("fp", "one", 1, 90.0, 0.30, 0.40), ("fp_onestep", "one", 1, 100.0, 0.39, 0.20)]:
        for bench, metric, value, higher in (("ade20k", "miou", miou, True), ("nyuv2", "absrel", absrel, False)):
            rows.append({"checkpoint": checkpoint, "sampler": preset, "preset": preset, "steps": 1, "text_guidance": 1.0,
                         "image_guidance": 1.0, "sweep": False, "unet_evals_per_query": evals, "images_per_second": ips,
                         "benchmark": bench, "metric": metric, "higher_is_better": higher, "value": value,
                         "ci_low": value, "ci_high": value, "n": 10, "queries": 10, "device": "cpu"})
    summary = sq.one_step_summary(sq.frame_of(rows)).set_index("benchmark")
    assert summary.loc["ade20k", "one"] == "fp_onestep one" and summary.loc["ade20k", "paper"] == "fp paper"
    assert summary.loc["ade20k", "quality_ratio"] == pytest.approx(0.39 / 0.40)
    assert summary.loc["nyuv2", "quality_ratio"] == pytest.approx(0.30 / 0.20)  # lower is better: paper / one
    assert summary.loc["nyuv2", "fewer_unet_evals"] == 300 and summary.loc["nyuv2", "speedup"] == 100.0


def test_the_asset_writes_the_curve_and_its_plot(tiny_pipeline_dir, tmp_path):
    import dagster as dg

    from assets.speed_quality import speed_quality
    from pipelines.resources import InstructCVSettings, MlflowTracking

    data_root = tmp_path / "data"
    profile = data_root / "mini"
    write_depth_benchmark(profile, images=4)
    config = {"grid": ["fp:few:2", "fp:one", "fp_onestep:few:2", "fp_onestep:one"], "guidance": ["3.0/1.5"],
              "guidance_sampler": "one", "guidance_checkpoints": ["fp"], "benchmarks": ["nyuv2"], "images": 3}
    run_config = {"ops": {"speed_quality": {"config": {**config}}}}
    resources = {"settings": InstructCVSettings(data_root=str(data_root), progress_bars=False),
                 "mlflow_tracking": MlflowTracking()}
    with dg.DagsterInstance.ephemeral() as instance:
        for variant in ("fp", "fp_onestep"):
            point_checkpoint(profile, variant, tiny_pipeline_dir, instance)
        result = dg.materialize([speed_quality], instance=instance, resources=resources, run_config=run_config)
        assert result.success
        frame = pd.read_parquet(profile / "tables" / "speed_quality.parquet")
        assert list(frame.columns) == sq.COLUMNS
        assert [(r.checkpoint, r.sampler, r.unet_evals_per_query) for r in frame.itertuples()] == [
            ("fp", "few-2", 6), ("fp", "one", 1), ("fp", "one+cfg(3/1.5)", 3), ("fp_onestep", "few-2", 6),
            ("fp_onestep", "one", 1)]
        assert (frame["n"] == 3).all() and (frame["metric"] == "rmse").all()
        assert all(math.isfinite(v) and v > 0 for v in frame["images_per_second"])
        assert all(r.ci_low <= r.value <= r.ci_high for r in frame.itertuples())
        assert (profile / "tables" / "speed_quality.png").read_bytes()[:4] == b"\x89PNG"
        # the same checkpoint and sampler give the same outputs: fp and fp_onestep are one pipeline here
        assert frame.iloc[1]["value"] == frame.iloc[4]["value"]
        metadata = result.asset_materializations_for_node("speed_quality")[0].metadata
        assert metadata["rows"].value == 5 and "data:image/png;base64" in metadata["plot"].value

        rerun = dg.materialize([speed_quality], instance=instance, resources=resources, run_config=run_config)
        assert rerun.success  # everything reused: the same table, the throughput measured the first time
        assert pd.read_parquet(profile / "tables" / "speed_quality.parquet").equals(frame)


def test_the_paper_preset_can_measure_fewer_benchmarks():
    curve = sq.SpeedQualityConfig(images=4, paper_images=1, paper_benchmarks=("nyuv2",))
    assert curve.benchmarks_for("paper") == ("nyuv2",)
    assert curve.benchmarks_for("one") == curve.benchmarks_for("few") == sq.IN_DOMAIN
    assert sq.SpeedQualityConfig(paper_benchmarks="pets").paper_benchmarks == ("pets",)
    assert sq.SpeedQualityConfig().benchmarks_for("paper") == sq.IN_DOMAIN
    for bad in ((), ("voc",)):
        with pytest.raises(ValueError, match="paper_benchmarks must be a non-empty subset of benchmarks"):
            sq.SpeedQualityConfig(benchmarks=("nyuv2", "pets"), paper_benchmarks=bad)
    assert sq.SpeedQualityConfig(benchmarks="nyuv2", paper_benchmarks="nyuv2").benchmarks_for("paper") == ("nyuv2",)
    with pytest.raises(ValueError, match="not in it: \\['nyu'\\]"):  # a name, not a substring of a name
        sq.SpeedQualityConfig(benchmarks="nyuv2", paper_benchmarks="nyu")
