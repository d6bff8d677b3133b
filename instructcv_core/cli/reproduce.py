"""``instructcv reproduce``: run the full Dagster reproduction job."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import click

from instructcv_core.cli._io import CONTEXT_SETTINGS, project_root
from instructcv_core.run_config import RunConfigError, check_run_config

JOB = "full_reproduction"
PROFILE_CONFIGS = {"mini": None, "paper": "configs/paper.yaml"}


def reproduce_command(profile: str, config: Path | None) -> list[str]:
    """The Dagster command of ``reproduce`` (run in the project root)."""
    command = [sys.executable, "-m", "dagster", "job", "execute", "-m", "pipelines.definitions", "-j", JOB]
    chosen = str(config.resolve()) if config is not None else PROFILE_CONFIGS[profile]
    if chosen:
        command += ["-c", chosen]
    return command


@click.command(context_settings=CONTEXT_SETTINGS)
@click.option("--profile", type=click.Choice(["mini", "paper"]), default="mini", show_default=True,
              help="mini: the embedded config (bundled benchmark, minutes on a CPU); paper: configs/paper.yaml.")
@click.option("--config", "config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A Dagster run-config file to use instead of the profile's.")
@click.option("--dry-run", is_flag=True, help="Print the command and exit.")
def reproduce(profile: str, config: Path | None, dry_run: bool) -> None:
    """Run the full reproduction job (dagster job execute ... -j full_reproduction).

    Runs in the project root with this Python environment and streams Dagster's output; exits with
    the job's exit code. Results: data/<profile>/ and the MLflow store (see README.md).

    \b
    Examples:
      instructcv reproduce                      # mini profile, about 12 minutes on 2 CPU cores
      instructcv reproduce --profile paper      # real datasets, SD v1.5, a GPU (run `instructcv doctor` first)
      instructcv reproduce --config my.yaml --dry-run
    """
    command = reproduce_command(profile, config)
    if dry_run:
        click.echo(shlex.join(command))
        return
    root = project_root()
    profile_config = PROFILE_CONFIGS[profile]
    chosen = config if config is not None else (root / profile_config if profile_config else None)
    if chosen is not None:
        try:  # Dagster would read duplicate keys, aliases, $VAR and a bad data_root without a word
            for note in check_run_config(Path(chosen), root):
                click.echo(f"instructcv: {note}", err=True)
        except RunConfigError as exc:
            raise click.ClickException(str(exc)) from None
    env = dict(os.environ)
    env.setdefault("DAGSTER_HOME", str(root / "dagster_home"))
    env.setdefault("PYTHONUNBUFFERED", "1")
    (root / "dagster_home").mkdir(exist_ok=True)
    click.echo(f"instructcv: running in {root}: {shlex.join(command)}", err=True)
    try:
        process = subprocess.Popen(command, cwd=root, env=env)
    except OSError as exc:
        raise click.ClickException(f"could not start Dagster ({exc})") from None
    try:
        code = process.wait()
    except KeyboardInterrupt:  # the child got the same SIGINT: let it shut down
        code = process.wait()
        code = code if code else 130
    sys.exit(code)
