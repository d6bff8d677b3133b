"""Strict run-config reading: what Dagster would misread is refused with file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from instructcv_core.run_config import RunConfigError, check_data_root, check_run_config, load_run_config

PROJECT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_empty_file_is_refused(tmp_path, text):
    with pytest.raises(RunConfigError, match=r"run.yaml: empty run config"):
        load_run_config(write(tmp_path, text))


def test_duplicate_key_is_refused_with_both_lines(tmp_path):
    path = write(tmp_path, "resources:\n  settings:\n    config:\n      seed: 1\n      seed: 2\n")
    with pytest.raises(RunConfigError, match=r"run.yaml:5: key 'seed' is given twice in one mapping \(first on line 4\)"):
        load_run_config(path)


def test_alias_is_refused(tmp_path):
    path = write(tmp_path, "a: &x [1, 2]\nb: *x\n")
    with pytest.raises(RunConfigError, match=r"run.yaml:2: YAML alias '\*x' is not allowed"):
        load_run_config(path)


@pytest.mark.parametrize("value", ["$DATA/x", "${HOME}/data"])
def test_environment_reference_is_refused_naming_the_key(tmp_path, value):
    path = write(tmp_path, f"resources:\n  settings:\n    config:\n      data_root: {value}\n")
    with pytest.raises(RunConfigError, match=r"resources.settings.config.data_root: '\$.*' would be taken literally"):
        load_run_config(path)


def test_data_root_problems_are_named(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunConfigError, match=r"here: data_root .*/file exists and is not a folder"):
        check_data_root("file", tmp_path, "here")
    with pytest.raises(RunConfigError, match=r"cannot be created: .*/file is a file, not a folder"):
        check_data_root("file/sub/data", tmp_path, "here")
    assert check_data_root("new/data", tmp_path, "here") == tmp_path / "new" / "data"


def test_missing_data_root_is_announced(tmp_path):
    path = write(tmp_path, "resources:\n  settings:\n    config:\n      data_root: fresh\n")
    assert check_run_config(path, tmp_path) == [f"data_root {tmp_path / 'fresh'} does not exist yet; the run will create it"]


@pytest.mark.parametrize("name", ["mini.yaml", "paper.yaml"])
def test_project_configs_pass(name):
    assert isinstance(load_run_config(PROJECT / "configs" / name), dict)
