"""Bad configuration is rejected before any work, with a message naming the offending key."""

import dagster as dg
import pytest

from pipelines.definitions import defs
from pipelines.jobs import load_run_config
from pipelines.project import CONFIG_DIR
from pipelines.resources import InstructCVSettings


def _run(run_config):
    return defs.resolve_job_def("raw_data").execute_in_process(run_config=run_config, raise_on_error=True)


def _settings(**config):
    return {"resources": {"settings": {"config": config}}}


def test_unknown_profile_names_the_key():
    with pytest.raises(dg.DagsterInvalidConfigError, match=r"settings:config:profile.*mni"):
        _run(_settings(profile="mni"))


def test_misspelled_option_names_the_key():
    with pytest.raises(dg.DagsterInvalidConfigError, match="archve_dir"):
        _run({"ops": {"raw_coco": {"config": {"archve_dir": "/x"}}}})


def test_wrong_type_names_the_key():
    with pytest.raises(dg.DagsterInvalidConfigError, match=r"seed"):
        _run(_settings(seed="zero"))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"resolution": 100}, "settings.resolution must be a positive multiple of 64"),
        ({"seed": -3}, "settings.seed must be >= 0"),
        ({"mini_sizes": {"cocoa": {"train": 3}}}, "settings.mini_sizes: unknown dataset"),
    ],
)
def test_invalid_values_are_refused_with_the_key(config, message):
    with pytest.raises(Exception, match=message):
        InstructCVSettings(**config)
    # The job refuses it when its resources start, before any asset runs.
    with pytest.raises(dg.DagsterResourceFunctionError) as excinfo:
        _run(_settings(**config))
    assert message in str(excinfo.value.__cause__)


def test_profiles_are_valid_run_configs():
    job = defs.resolve_job_def("full_reproduction")
    for name in ("mini.yaml", "paper.yaml"):
        config = load_run_config(CONFIG_DIR / name)
        assert job.run_config_schema.config_type is not None
        assert dg.validate_run_config(job, config) is not None


def test_malformed_profile_file_names_the_file(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("resources: [unclosed")
    with pytest.raises(ValueError, match="broken.yaml"):
        load_run_config(bad)


def test_relative_data_root_is_taken_from_the_project_root(tmp_path):
    from pipelines.project import PROJECT_ROOT

    assert InstructCVSettings().data_dir == PROJECT_ROOT / "data"
    assert InstructCVSettings(data_root=str(tmp_path)).data_dir == tmp_path
    assert InstructCVSettings(profile="paper").profile_dir == PROJECT_ROOT / "data" / "paper"


def test_profile_dependent_defaults():
    assert InstructCVSettings().resolution_px == 64
    assert InstructCVSettings(profile="paper").resolution_px == 256
    assert InstructCVSettings(profile="paper", resolution=512).resolution_px == 512


def test_paper_profile_fails_before_any_data_work_naming_what_is_missing(tmp_path):
    config = _settings(profile="paper", data_root=str(tmp_path), base_model=str(tmp_path / "sd15.safetensors"))
    with pytest.raises(dg.DagsterResourceFunctionError) as excinfo:
        _run(config)
    message = str(excinfo.value.__cause__)
    assert "sd15.safetensors" in message and "no such file" in message
    assert "no CUDA GPU" in message
    assert not any(tmp_path.iterdir())  # nothing was downloaded or written


def test_paper_profile_accepts_a_local_diffusers_folder(tmp_path):
    from instructcv_core.preflight import base_model_problem

    folder = tmp_path / "sd15"
    folder.mkdir()
    assert "model_index.json" in base_model_problem(str(folder), allow_network=False)
    (folder / "model_index.json").write_text("{}")
    assert base_model_problem(str(folder), allow_network=False) is None
    assert base_model_problem("some-org/some-model", allow_network=True) is None
    assert "not in the local Hugging Face cache" in base_model_problem("some-org/some-model", allow_network=False)
