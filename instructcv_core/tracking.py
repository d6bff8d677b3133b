"""MLflow conventions of the project, without Dagster: where runs go and how they are tagged.

One experiment (``instructcv``) holds every run. The default store is an absolute sqlite file under
the data root with an explicit artifact folder beside it (MLflow >= 3.13 refuses the old ``./mlruns``
file store, and a relative sqlite URI would depend on the working directory).
"""

from __future__ import annotations

import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

DEFAULT_EXPERIMENT = "instructcv"
DEFAULT_UI_URL = "http://127.0.0.1:5000"


def default_tracking_uri(data_root: Path) -> str:
    return "sqlite:///" + str((Path(data_root) / "mlruns" / "mlflow.db").resolve())


def default_artifact_location(data_root: Path) -> str:
    return (Path(data_root) / "mlruns" / "artifacts").resolve().as_uri()


def is_remote(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://"))


def ensure_experiment(tracking_uri: str, name: str, artifact_location: str | None) -> str:
    """Get or create the experiment; returns its id. Creates the sqlite folder when needed.

    For a sqlite store this holds an exclusive lock (``<db>.lock``) meanwhile: the first access to a
    new store runs MLflow's schema migrations, and two processes doing it at once (two Dagster steps
    of a fresh job) collide; creating the experiment twice would collide as well.
    """
    import mlflow

    with _store_lock(tracking_uri):
        mlflow.set_tracking_uri(tracking_uri)
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        # A remote server chooses its own artifact store unless one is given.
        location = None if is_remote(tracking_uri) else artifact_location
        return mlflow.create_experiment(name, artifact_location=location)


@contextmanager
def _store_lock(tracking_uri: str) -> Iterator[None]:
    """An exclusive ``flock`` beside a sqlite store (its folder created); nothing for other stores."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    db = Path(tracking_uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_url(tracking_uri: str, experiment_id: str, run_id: str, ui_url: str = DEFAULT_UI_URL) -> str:
    """Link to a run in the MLflow UI: the server itself when remote, else where `mlflow ui` serves."""
    base = tracking_uri.rstrip("/") if is_remote(tracking_uri) else ui_url.rstrip("/")
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def code_version(repo: Path | None = None) -> str:
    """The git commit of the code (with ``-dirty`` when there are local changes), or ``unknown``."""
    repo = repo or Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@contextmanager
def mlflow_run(tracking_uri: str, experiment: str, artifact_location: str | None, run_name: str,
               tags: dict[str, str]) -> Iterator:
    """Start a run in ``experiment`` with ``tags`` (plus the code version); yields the active run."""
    import mlflow

    experiment_id = ensure_experiment(tracking_uri, experiment, artifact_location)
    mlflow.set_tracking_uri(tracking_uri)
    all_tags = {"code_version": code_version(), **tags}
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=all_tags) as run:
        yield run
