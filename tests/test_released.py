"""The authors' released weights: loading them in each released form (a diffusers folder, a single original
file, a hub id in the local cache), failing early without them, their evaluation assets, the released
column of Tables 1-3, the `released_evaluation` job, its plan and its doctor.

A tiny randomly initialised InstructPix2Pix pipeline saved in the released layout stands in for the
download (`released_fixture.py`); the hub path runs the real code against a local Hugging Face cache."""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import torch

from eval_fixture import write_depth_benchmark
from instructcv_core.benchmarks import BENCHMARKS
from instructcv_core.evaluation import tables as T
from instructcv_core.evaluation.reporting import metrics_table
from instructcv_core.model.loading import BaseModelError
from instructcv_core.model.released import (RELEASED_MODEL, ReleasedWeights, load_released, resolve_released)
from released_fixture import RES, build_released_folder, write_single_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def released_dir(tmp_path_factory) -> Path:
    return build_released_folder(tmp_path_factory.mktemp("released") / "InstructCV")


@pytest.fixture(autouse=True)
def offline_hub(tmp_path, monkeypatch) -> Path:
    """No network (as on a machine without it) and an empty Hugging Face cache of this test's own."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def _weights(pipe) -> dict[str, dict[str, torch.Tensor]]:
    return {name: getattr(pipe, name).state_dict() for name in ("unet", "vae", "text_encoder")}


# ------------------------------------------------------------------------------------------------
# loading the three released forms


def test_released_folder_loads_into_the_sampler(released_dir):
    from instructcv_core.inference.config import Request, SamplerConfig
    from instructcv_core.inference.sampler import InstructCVSampler

    weights = resolve_released(str(released_dir))
    assert (weights.kind, weights.source) == ("folder", str(released_dir))
    assert weights.identity.startswith(f"released:{released_dir}@sha256:") and len(weights.revision) == 7 + 64
    assert resolve_released(str(released_dir)).identity == weights.identity  # the same bytes, the same identity
    pipe = load_released(weights)
    assert type(pipe).__name__ == "StableDiffusionInstructPix2PixPipeline"
    assert type(pipe.tokenizer).__name__ == "CLIPTokenizer" and len(pipe.tokenizer) > 512  # not the 2-token trap
    assert type(pipe.text_encoder).__name__ == "CLIPTextModel" and pipe.unet.config.in_channels == 8
    sampler = InstructCVSampler.from_pipeline(pipe, SamplerConfig(steps=2, resolution=RES, batch_size=2))
    image = torch.randint(0, 256, (40, 48, 3), dtype=torch.uint8).numpy()
    outputs = dict(sampler.generate([Request("a", "Segment the cat.", 1), Request("a", "Detect the dog.", 2)], {"a": image}))
    assert set(outputs) == {0, 1} and outputs[0].shape == (RES, RES, 3) and outputs[0].dtype.name == "uint8"


def test_single_file_loads_the_same_weights_and_takes_its_ema(released_dir, tmp_path):
    reference = _weights(load_released(resolve_released(str(released_dir))))
    plain = write_single_file(load_released(resolve_released(str(released_dir))), tmp_path / "instructcv.safetensors")
    weights = resolve_released(str(plain), single_file_config=str(released_dir))
    assert weights.kind == "single_file" and weights.identity.startswith(f"released:{plain}@sha256:")
    loaded = _weights(load_released(weights))
    for component, state in reference.items():
        assert set(loaded[component]) == set(state), component
        assert all(torch.equal(loaded[component][k], v) for k, v in state.items()), component
    # a training checkpoint with EMA weights: the EMA ones load (the official inference samples with them)
    with_ema = write_single_file(load_released(resolve_released(str(released_dir))), tmp_path / "ema.safetensors",
                                 ema_offset=0.25)
    loaded = _weights(load_released(resolve_released(str(with_ema), single_file_config=str(released_dir))))
    assert all(torch.allclose(loaded["unet"][k], v + 0.25) for k, v in reference["unet"].items())
    assert all(torch.equal(loaded["vae"][k], v) for k, v in reference["vae"].items())


def test_hub_id_loads_from_the_local_cache_and_records_its_commit(released_dir, offline_hub):
    from instructcv_core.preflight import released_model_problem

    repo = offline_hub / "models--alaa-lab--InstructCV"
    shutil.copytree(released_dir, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    weights = resolve_released()  # the default source: the authors' hub id
    assert (weights.source, weights.kind, weights.revision) == (RELEASED_MODEL, "hub", COMMIT)
    assert weights.identity == f"released:{RELEASED_MODEL}@{COMMIT}"
    loaded = _weights(load_released(weights))  # diffusers' own hub code path, offline, from the cache
    reference = _weights(load_released(resolve_released(str(released_dir))))
    assert all(torch.equal(loaded["unet"][k], v) for k, v in reference["unet"].items())
    assert resolve_released(revision=COMMIT).revision == COMMIT
    assert released_model_problem(RELEASED_MODEL, False) is None
    assert released_model_problem(RELEASED_MODEL, False, revision="v2") is not None  # not that revision
    with pytest.raises(BaseModelError, match="at revision 'v2'"):
        resolve_released(revision="v2")


@pytest.mark.parametrize("source", [RELEASED_MODEL, "someone/not-cached-instructcv"])
def test_uncached_hub_id_fails_at_once_naming_it_and_how_to_give_a_local_copy(source, monkeypatch):
    import diffusers

    from instructcv_core.preflight import released_model_problem

    def boom(*args, **kwargs):  # nothing heavy may be attempted for a missing source
        raise AssertionError("tried to load a model")

    monkeypatch.setattr(diffusers.StableDiffusionInstructPix2PixPipeline, "from_pretrained", boom)
    start = time.monotonic()
    with pytest.raises(BaseModelError) as info:
        resolve_released(source)
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert source in message and "not in the local Hugging Face cache" in message
    assert f"hf download {RELEASED_MODEL} --local-dir" in message and "released_model: <folder>" in message
    assert "allow_network" in message and ".ckpt" in message
    problem = released_model_problem(source, False)
    assert source in problem and "hf download" in problem


def test_the_loader_itself_fails_fast_offline_naming_the_id(monkeypatch):
    """Even past the cheap checks (a race, or a cache emptied meanwhile), the hub code path gives up at
    once offline instead of hanging, and names the id and how to provide it."""
    start = time.monotonic()
    with pytest.raises(BaseModelError) as info:
        load_released(ReleasedWeights(RELEASED_MODEL, "hub", COMMIT))
    assert time.monotonic() - start < 20
    assert RELEASED_MODEL in str(info.value) and "hf download" in str(info.value)


def test_bad_local_sources_are_named(tmp_path, released_dir):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BaseModelError, match="model_index.json"):
        resolve_released(str(tmp_path / "empty"))
    with pytest.raises(BaseModelError, match="no such file or folder"):
        resolve_released(str(tmp_path / "missing.ckpt"))
    single = tmp_path / "instructcv.ckpt"
    single.write_bytes(b"x")
    with pytest.raises(BaseModelError, match="timbrooks/instruct-pix2pix"):  # its configs: neither given nor cached
        resolve_released(str(single))


# ------------------------------------------------------------------------------------------------
# the evaluation assets, in process on a tiny benchmark, and the tables they feed


def test_released_eval_assets_materialise_and_fill_the_released_column(released_dir, tmp_path):
    from mlflow.tracking import MlflowClient

    from assets.evaluate import evaluate_released, results_tables
    from pipelines.resources import InstructCVSettings, MlflowTracking

    data_root = tmp_path / "data"
    profile = data_root / "mini"
    write_depth_benchmark(profile, images=4)
    settings = InstructCVSettings(data_root=str(data_root), released_model=str(released_dir), progress_bars=False)
    resources = {"settings": settings, "mlflow_tracking": MlflowTracking()}
    config = {"max_images": 3, "following_pairs": 2, "following_images": 1}
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize([evaluate_released], selection=["eval_nyuv2_released"], instance=instance,
                                resources=resources, run_config={"ops": {"evaluate_released": {"config": config}}})
        assert result.success  # the checks warn; a published model is measured, not gated
        (mat,) = result.asset_materializations_for_node("evaluate_released")
        identity = resolve_released(str(released_dir)).identity
        assert mat.metadata["checkpoint"].value == identity
        assert mat.metadata["released_revision"].value == identity.rsplit("@", 1)[1]
        assert mat.metadata["images"].value == 3 and "paper/rmse" in mat.metadata
        checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
        assert set(checks) == {"metrics_valid", "beats_untrained", "follows_instructions"}
        assert all(c.severity == dg.AssetCheckSeverity.WARN for c in checks.values())
        assert checks["metrics_valid"].passed
        assert not checks["beats_untrained"].passed  # no untrained reference was evaluated: said, as a warning
        client = MlflowClient(tracking_uri=MlflowTracking().resolved_uri(settings))
        run = client.get_run(mat.metadata["mlflow_run"].value.rsplit("/", 1)[-1])
        assert run.info.run_name == "eval-released-mini" and run.data.tags["variant"] == "released"
        assert run.data.params["released.revision"] == identity.rsplit("@", 1)[1]
        assert "eval/nyuv2/paper/rmse" in run.data.metrics
        # the fixed templates: what the official test scripts ask
        assert json.loads((profile / "eval" / "released" / "nyuv2" / "identity.json").read_text())["instructions"] == "fp"

        tables = dg.materialize([results_tables], instance=instance, resources=resources)
        assert tables.success
    folder = profile / "tables"
    table1 = pd.read_csv(folder / "table1.csv").set_index("benchmark")
    assert math.isfinite(table1.loc["nyuv2", "released (paper)"]) and math.isfinite(table1.loc["nyuv2", "released (standard)"])
    assert table1.loc["nyuv2", "released (paper)"] == mat.metadata["paper/rmse"].value
    assert math.isnan(table1.loc["nyuv2", "FP ours (paper)"])  # nothing trained
    markdown = (folder / "table1.md").read_text()
    assert "| released (paper)" in markdown and T.NOT_EVALUATED in markdown  # ade20k ... were not evaluated
    assert f"released: the authors' released weights evaluated here, {identity}" in markdown
    cells = pd.read_parquet(folder / "table1_cells.parquet")
    assert set(cells["variant"]) == {"released"} and set(cells["checkpoint"]) == {identity}
    table2 = pd.read_csv(folder / "table2.csv")
    assert (table2["source"] == "released").sum() == 2  # both protocols, not evaluated here
    assert T.NOT_EVALUATED in (folder / "table3.md").read_text()


# ------------------------------------------------------------------------------------------------
# the released column of Tables 1-3


SAMPLER = {"steps": 100, "text_guidance": 7.5, "image_guidance": 1.5, "scheduler": "euler_ancestral",
           "resolution": 256, "batch_size": 16, "dtype": "float16", "device": "auto"}


def _result(folder: Path, benchmark: str, metrics: dict, checkpoint: str, sampler=None, images=("a", "b")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    frame = metrics_table(benchmark, metrics)
    frame.assign(n=len(images), ci_low=frame["value"] - 1, ci_high=frame["value"] + 1).to_parquet(folder / "metrics.parquet")
    (folder / "identity.json").write_text(json.dumps({"checkpoint": checkpoint, "manifest": "m" * 64, "queries": "q",
                                                      "sampler": sampler or SAMPLER, "instructions": "fp"}))
    pd.DataFrame({"query_id": [f"q{i}" for i in range(len(images))], "image_id": list(images)}).to_parquet(folder / "queries.parquet")
    return folder


def _sources(tmp_path: Path, released_sampler=None) -> dict:
    metrics = {"nyuv2": {"paper": {"rmse": 0.3}, "standard": {"rmse": 0.9}},
               "fss1000": {"paper": {"miou": 50.0}, "standard": {"miou": 40.0}}}
    sources = {}
    for variant, offset in (("fp", 0.0), ("rp", 1.0)):
        for benchmark, values in metrics.items():
            shifted = {p: {m: v + offset for m, v in vs.items()} for p, vs in values.items()}
            sources[(variant, benchmark)] = _result(tmp_path / variant / benchmark, benchmark, shifted, f"{variant}@1")
    sources[("released", "nyuv2")] = _result(tmp_path / "released" / "nyuv2", "nyuv2",
                                             {"paper": {"rmse": 0.297}, "standard": {"rmse": 0.8}},
                                             f"released:{RELEASED_MODEL}@{COMMIT}", sampler=released_sampler)
    return sources


def test_the_released_column_sits_beside_fp_and_rp_without_changing_them(tmp_path):
    sources = _sources(tmp_path)
    ours_only = {k: v for k, v in sources.items() if k[0] != "released"}
    without, with_released = T.table1(T.read_results(ours_only)), T.table1(T.read_results(sources))
    fp_rp = [c for c in without.columns if c.startswith(("FP", "RP")) or c in ("benchmark", "metric", "note")]
    pd.testing.assert_frame_equal(without[fp_rp], with_released[fp_rp])  # FP/RP cells: identical
    nyu = with_released.set_index("benchmark").loc["nyuv2"]
    assert (nyu["released (paper)"], nyu["released (standard)"], nyu["released (paper) ci_low"]) == (0.297, 0.8, pytest.approx(-0.703))
    assert list(with_released.columns).index("released (paper)") > list(with_released.columns).index("RP ours (standard)")
    # not evaluated: the Markdown says so, cell by cell; evaluated cells show their interval
    plain = T.to_markdown(without)
    assert plain.count(T.NOT_EVALUATED) == 2 * len(without)
    shown = T.to_markdown(with_released)
    assert "0.297 [-0.703, 1.297]" in shown and shown.count(T.NOT_EVALUATED) == 2 * (len(with_released) - 1)
    results = T.read_results(sources)
    notes = T.table_notes(results, ["nyuv2"])
    assert any(f"released:{RELEASED_MODEL}@{COMMIT}" in n for n in notes)
    assert set(T.cells_table(results, ["nyuv2"])["variant"]) == {"fp", "rp", "released"}
    t2 = T.table2(T.read_results(sources))
    assert t2[t2["source"] == "released"]["mIoU"].isna().all()  # fss1000 not evaluated for the released weights
    assert T.to_markdown(t2).count(T.NOT_EVALUATED) == 2
    t3 = T.table3({"fp": {"paper": {"Segment %category%.": 12.5}},
                   "released": {"paper": {"Segment %category%.": 30.0}}}).set_index("instruction")
    assert t3.loc["Segment %category%.", "released (paper)"] == 30.0
    assert math.isnan(t3.loc["Segment the %category%.", "released (standard)"])


def test_released_cells_on_other_terms_are_left_out_of_the_row_with_a_note(tmp_path):
    sources = _sources(tmp_path, released_sampler={**SAMPLER, "steps": 50})
    results = T.read_results(sources)
    table = T.table1(results)  # FP/RP still comparable: the table is made
    nyu = table.set_index("benchmark").loc["nyuv2"]
    assert math.isnan(nyu["released (paper)"]) and nyu["FP ours (paper)"] == 0.3
    (note,) = [n for n in T.table_notes(results, ["nyuv2"]) if "another sampler" in n]
    assert "nyuv2: the released weights were evaluated with another sampler" in note and "steps 50" in note
    assert T.NOT_EVALUATED not in T.to_markdown(table).split("| nyuv2")[1].split("\n")[0]  # evaluated, left out


# ------------------------------------------------------------------------------------------------
# the job, its preflight, its plan and its doctor


def test_released_evaluation_runs_the_data_stages_and_this_evaluation_only():
    from pipelines.definitions import defs

    dg.Definitions.validate_loadable(defs)  # op, asset and job names do not collide (`dg check defs`)
    job = defs.resolve_job_def("released_evaluation")
    keys = {k.to_user_string() for k in job.asset_layer.selected_asset_keys}
    released = {f"eval_{b}_released" for b in BENCHMARKS}
    raw = {k for k in keys if k.startswith("raw_")}
    assert keys == raw | released | {"encoded_pairs", "test_manifests", "heldout_instructions", "table1", "table2", "table3"}
    assert len(raw) == 9  # eight datasets and the catalogue
    full = {k.to_user_string() for k in defs.resolve_job_def("full_reproduction").asset_layer.selected_asset_keys}
    assert not full & released and {"table1", "eval_nyuv2_fp"} <= full  # the reproduction runs as before
    graph = defs.resolve_asset_graph()
    assert {graph.get(dg.AssetKey(k)).group_name for k in released} == {"eval_released"}
    from assets.evaluate import evaluate_released

    assert all(not spec.blocking for spec in evaluate_released.check_specs)
    assert {s.name for s in evaluate_released.check_specs if s.asset_key == dg.AssetKey("eval_coco_released")} == {
        "metrics_valid", "beats_untrained", "follows_instructions"}


def test_run_needs_names_what_a_run_loads():
    from pipelines.resources import run_needs

    class Run:
        def __init__(self, job, keys=None):
            self.job_name, self.asset_selection = job, keys and {dg.AssetKey(k) for k in keys}

    assert run_needs(None) == {"base"} and run_needs(Run("full_reproduction")) == {"base"}
    assert run_needs(Run("released_evaluation")) == {"released"}
    assert run_needs(Run("__ASSET_JOB", ["eval_nyuv2_released", "table1"])) == {"released"}
    assert run_needs(Run("__ASSET_JOB", ["eval_nyuv2_released", "eval_nyuv2_fp"])) == {"base", "released"}
    assert run_needs(Run("__ASSET_JOB", ["raw_coco"])) == {"base"}


def test_the_job_fails_before_any_data_work_without_the_weights(tmp_path):
    from pipelines.definitions import defs

    run_config = {"resources": {"settings": {"config": {"data_root": str(tmp_path / "data"), "progress_bars": False}}},
                  "execution": {"config": {"in_process": {}}}}
    start = time.monotonic()
    with pytest.raises(dg.DagsterResourceFunctionError) as info:
        defs.resolve_job_def("released_evaluation").execute_in_process(run_config=run_config, raise_on_error=True)
    assert time.monotonic() - start < 60
    message = str(info.value.__cause__)
    assert "the mini profile cannot run" in message and f"released weights {RELEASED_MODEL!r}" in message
    assert "hf download" in message and "released_model" in message
    assert not (tmp_path / "data" / "mini" / "raw").exists()  # nothing was downloaded or built


def test_plan_covers_the_released_job(tmp_path):
    from click.testing import CliRunner

    from instructcv_core.cli import cli
    from instructcv_core.evaluation.cost_plan import make_plan

    released = make_plan("paper", tmp_path, unet_per_second=1000.0, job="released_evaluation")
    full = make_plan("paper", tmp_path, unet_per_second=1000.0)
    assert all(r["checkpoints"] == 1 for r in released.rows())
    per_checkpoint = sum(r["both_outputs"] * 300 / 1000 / 3600 for r in released.rows())
    assert released.total_gpu_hours == pytest.approx(per_checkpoint) == pytest.approx(released.eval_gpu_hours)
    assert full.total_gpu_hours > released.total_gpu_hours  # training and three checkpoints there
    result = CliRunner().invoke(cli, ["plan", "--profile", "paper", "--job", "released_evaluation", "--data-root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "Job released_evaluation" in result.output and "No training" in result.output
    as_json = json.loads(CliRunner().invoke(cli, ["plan", "--job", "released_evaluation", "--data-root", str(tmp_path),
                                                  "--json"]).output)
    assert as_json["job"] == "released_evaluation" and as_json["train_gpu_hours_per_checkpoint"] == 0.0


def test_doctor_checks_the_released_weights_for_the_job(released_dir, tmp_path):
    from click.testing import CliRunner

    from instructcv_core.cli import cli

    def released_row(source: str) -> str:
        config = tmp_path / "released.yaml"
        config.write_text(json.dumps({"resources": {"settings": {"config": {
            "profile": "paper", "released_model": source, "require_gpu": False}}}}))
        result = CliRunner().invoke(cli, ["doctor", "--job", "released_evaluation", "--config", str(config),
                                          "--data-root", str(tmp_path / "data")])
        assert "Traceback" not in result.output and "job released_evaluation" in result.output
        (line,) = [line for line in result.output.splitlines() if line.startswith("released weights ")]
        assert "base model" not in result.output.split("\n\n")[0]  # the job loads no SD v1.5
        return line + "\n" + result.output

    ok = released_row(str(released_dir))
    assert " ok " in ok.splitlines()[0] and "folder, found locally" in ok
    missing = released_row(RELEASED_MODEL)
    assert " missing " in missing.splitlines()[0] and f"`hf download {RELEASED_MODEL} --local-dir <folder>`" in missing
    assert "released weights download 4.3 GB" in missing


def test_compare_shows_the_released_run_beside_fp_and_rp(tmp_path):
    from click.testing import CliRunner
    from mlflow.tracking import MlflowClient

    from instructcv_core.cli import cli

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("instructcv", artifact_location=(tmp_path / "artifacts").as_uri())
    for name, value in (("eval-fp-mini", 0.5), ("eval-rp-mini", 0.25), ("eval-released-mini", 0.75)):
        run = client.create_run(experiment, run_name=name)
        client.log_metric(run.info.run_id, "eval/ade20k/paper/miou", value)
        client.set_terminated(run.info.run_id)
    result = CliRunner().invoke(cli, ["compare", "--profile", "mini", "--tracking-uri", uri, "--format", "csv"])
    assert result.exit_code == 0, result.output
    header, row = result.output.splitlines()[:2]
    assert header.split(",")[3:6] == ["FP", "RP", "released"] and row.split(",")[3:6] == ["0.5", "0.25", "0.75"]
