"""A value a step would refuse fails the run when it starts, before any step, naming the field
(pipelines/run_config_check.py, run by the project's executor); valid values reach the steps unchanged."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

from pipelines.config import run_float, yaml_float_spelling
from pipelines.project import CONFIG_DIR, PROJECT_ROOT

DAGSTER = Path(sys.executable).parent / "dagster"
NAN_TEXT = "NaN is not a valid value (it passes every range check and means nothing here)"
HINT = "is text, not a number (YAML reads scientific notation as a number only with a dot and a signed exponent)"


@pytest.fixture(scope="module")
def full_job():
    from pipelines.definitions import defs

    return defs.resolve_job_def("full_reproduction")


# ------------------------------------------------------------------------------------------------
# Float knobs


@pytest.mark.parametrize("text,spelling", [("1e-4", "1.0e-4"), ("5E3", "5.0e+3"), ("1.0e4", "1.0e+4"),
                                           ("-2e-05", "-2.0e-05"), ("inf", ".inf")])
def test_yaml_text_for_a_number_gets_the_spelling_yaml_reads_as_that_number(text, spelling):
    assert isinstance(yaml.safe_load(f"x: {text}")["x"], str)  # the pitfall: PyYAML reads it as text
    assert yaml_float_spelling(text) == spelling
    assert yaml.safe_load(f"x: {spelling}")["x"] == float(text)
    with pytest.raises(ValueError, match=rf"^'{re.escape(text)}' is text, not a number .*; write {re.escape(spelling)}$"):
        run_float(text)


def test_a_float_knob_takes_numbers_unchanged_and_refuses_nan_and_other_values():
    assert run_float(2.0e-3) == 2.0e-3 and run_float(0) == 0.0 and isinstance(run_float(0), float)
    assert run_float(math.inf) == math.inf  # meaningful (max_grad_norm: no clipping)
    with pytest.raises(ValueError, match="^NaN is not a valid value"):
        run_float(math.nan)
    for value in (True, "fast", "nan", [1.0]):
        with pytest.raises(ValueError, match="^expected a number"):
            run_float(value)


# ------------------------------------------------------------------------------------------------
# The check on the real job


def test_invalid_values_are_named_by_op_and_field(full_job):
    from pipelines.run_config_check import run_config_problems

    run_config = {
        "resources": {"settings": {"config": {"seed": -1}}},
        "ops": {
            "instructcv_fp_checkpoint": {"config": {"learning_rate": math.nan, "train_batch_size": 0}},
            "instructcv_rp_checkpoint": {"config": {"learning_rate": "1e-4", "train_batch_size": -1}},
            "instructcv_fp_onestep_checkpoint": {"config": {"num_processes": 0}},
            "paraphrase_bank": {"config": {"min_similarity": "5e-1", "num_rounds": 0}},
            "evaluate_fp": {"config": {"batch_size": 0}},
        },
    }
    assert sorted(run_config_problems(full_job, run_config)) == sorted([
        "resources.settings.config.seed: settings.seed must be >= 0, got -1",
        f"ops.instructcv_fp_checkpoint.config.learning_rate: {NAN_TEXT}",
        f"ops.instructcv_rp_checkpoint.config.learning_rate: '1e-4' {HINT}; write 1.0e-4",
        "ops.instructcv_fp_onestep_checkpoint.config.num_processes: Input should be greater than or equal to 1 (got 0)",
        f"ops.paraphrase_bank.config.min_similarity: '5e-1' {HINT}; write 5.0e-1",
        "ops.paraphrase_bank.config.num_rounds: Input should be greater than or equal to 1 (got 0)",
    ])  # with the settings refused, the stage configs (which depend on them) are not resolved
    del run_config["resources"]
    problems = run_config_problems(full_job, run_config)
    assert "ops.instructcv_fp_checkpoint.config: train_batch_size must be >= 1, got 0" in problems  # besides the NaN
    assert "ops.instructcv_rp_checkpoint.config: train_batch_size must be >= 1, got -1" in problems
    assert "ops.evaluate_fp.config: steps and batch_size must be >= 1 (got 1, 0)" in problems
    assert len(problems) == 8


def test_a_value_checked_against_the_assets_own_preset(full_job):
    from pipelines.run_config_check import run_config_problems

    # epsilon prediction contradicts the mini preset's zero-terminal-SNR base; the paper profile ignores the
    # base_model config (it loads SD v1.5), so the same value is no problem there
    ops = {"base_model": {"config": {"prediction_type": "epsilon"}}}
    assert run_config_problems(full_job, {"ops": ops}) == [
        "ops.base_model.config: zero_terminal_snr needs prediction_type 'v_prediction' (epsilon is undefined at zero SNR)"]
    assert run_config_problems(full_job, {"resources": {"settings": {"config": {"profile": "paper"}}}, "ops": ops}) == []


def test_every_stage_config_of_every_job_is_resolved_by_the_check():
    from pipelines.definitions import defs
    from pipelines.run_config_check import _config_class, stage_configs

    table, unchecked = stage_configs(), set()
    for job in defs.resolve_all_job_defs():
        for handle in job.graph.iterate_node_handles():
            config_cls = _config_class(job, handle)
            if hasattr(config_cls, "__core_config__") and not any(cls in table for cls in config_cls.__mro__):
                unchecked.add(f"{job.name}: {handle} ({config_cls.__name__})")
    assert not unchecked, "add to pipelines.run_config_check.stage_configs: " + ", ".join(sorted(unchecked))


def test_a_fault_of_the_check_itself_is_reported_and_does_not_stop_the_run(full_job, monkeypatch):
    import pipelines.run_config_check as check

    def broken():
        raise KeyError("stage")

    monkeypatch.setattr(check, "stage_configs", broken)
    warnings = []
    check.refuse_invalid_run_config(full_job, {}, warn=warnings.append)
    assert warnings == ["the run-config check could not run (KeyError: 'stage'); each step checks its own config"]
    with pytest.raises(KeyError):
        check.refuse_invalid_run_config(full_job, {})


@pytest.mark.parametrize("name", [None, "paper.yaml"])
def test_the_project_configs_pass_the_check(full_job, name):
    from pipelines.run_config_check import run_config_problems

    run_config = yaml.safe_load((CONFIG_DIR / name).read_text()) if name else {}  # None: the embedded mini profile
    assert run_config_problems(full_job, run_config) == []


# ------------------------------------------------------------------------------------------------
# Runs through the project's executor


def _execute(tmp_path, monkeypatch, train_config: dict):
    import run_config_job

    monkeypatch.setenv("RUN_CONFIG_MARKS", str(tmp_path / "marks"))
    with dg.DagsterInstance.get() as instance:
        return dg.execute_job(dg.reconstructable(run_config_job.two_steps_job), instance=instance, run_config={
            "execution": {"config": {"in_process": {}}}, "ops": {"train": {"config": train_config}}})


def test_a_refused_value_stops_the_run_before_its_first_step(tmp_path, monkeypatch):
    result = _execute(tmp_path, monkeypatch, {"learning_rate": "1e-4", "train_batch_size": 0})
    assert not result.success
    assert [e.event_type for e in result.all_events] == [dg.DagsterEventType.RUN_START, dg.DagsterEventType.RUN_FAILURE]
    assert not (tmp_path / "marks").exists()  # `prepare`, the stand-in data stage, did not run
    message = result.get_run_failure_event().event_specific_data.error.message
    assert f"ops.train.config.learning_rate: '1e-4' {HINT}; write 1.0e-4" in message
    assert "ops.train.config: train_batch_size must be >= 1, got 0" in message


def test_valid_values_reach_the_step_unchanged(tmp_path, monkeypatch):
    from assets.train import TrainAssetConfig, train_recipe
    from instructcv_core.presets import resolve
    from instructcv_core.training.config import TrainConfig
    from pipelines.resources import InstructCVSettings

    result = _execute(tmp_path, monkeypatch, {"learning_rate": 2.0e-3, "conditioning_dropout": [0.1, 0, 0.1],
                                              "max_grad_norm": math.inf, "train_batch_size": 8})
    assert result.success
    seen = json.loads((tmp_path / "marks" / "train.json").read_text())
    assert seen["overrides"] == {"learning_rate": 2.0e-3, "conditioning_dropout": [0.1, 0.0, 0.1],
                                 "max_grad_norm": math.inf, "train_batch_size": 8}
    # the step's recipe is the one plain Python values give, to the byte
    settings = InstructCVSettings()
    expected = resolve(TrainConfig, "mini", "train", {"learning_rate": 0.002, "conditioning_dropout": (0.1, 0.0, 0.1),
                                                      "max_grad_norm": math.inf, "train_batch_size": 8},
                       base_model="", manifest="", image_store="", output_dir="", resolution=settings.resolution_px,
                       seed=settings.seed, allow_network=False)
    assert json.dumps(seen["recipe"], sort_keys=True) == json.dumps(expected.to_dict(), sort_keys=True)
    assert train_recipe(TrainAssetConfig(), settings, "train") == resolve(
        TrainConfig, "mini", "train", base_model="", manifest="", image_store="", output_dir="", resolution=64, seed=0)


def test_dagster_job_execute_refuses_an_invalid_run_config_before_any_data_stage(tmp_path):
    data_root = tmp_path / "data"
    config = tmp_path / "run.yaml"
    config.write_text(f"""resources:
  settings:
    config:
      data_root: {data_root}
ops:
  instructcv_fp_checkpoint:
    config:
      learning_rate: .nan
      train_batch_size: 0
  instructcv_rp_checkpoint:
    config:
      learning_rate: 1e-4
""")
    proc = subprocess.run([str(DAGSTER), "job", "execute", "-m", "pipelines.definitions", "-j", "full_reproduction",
                           "-c", str(config)], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert f"ops.instructcv_fp_checkpoint.config.learning_rate: {NAN_TEXT}" in out
    assert "ops.instructcv_fp_checkpoint.config: train_batch_size must be >= 1, got 0" in out
    assert f"ops.instructcv_rp_checkpoint.config.learning_rate: '1e-4' {HINT}; write 1.0e-4" in out
    assert not data_root.exists()  # no stage wrote anything
    instance = dg.DagsterInstance.get()
    (run,) = instance.get_runs()
    assert run.status == dg.DagsterRunStatus.FAILURE
    assert instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_START) == []
