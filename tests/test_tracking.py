"""The MLflow resource: sqlite default under the data root, and a real tracking server over HTTP."""


import dagster as dg
import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pipelines.resources import InstructCVSettings, MlflowTracking


@dg.asset
def logged_asset(context: dg.AssetExecutionContext, settings: InstructCVSettings, mlflow_tracking: MlflowTracking):
    with mlflow_tracking.start_run(context, settings, run_name="unit-run", tags={"stage": "test"}) as (run, url):
        mlflow.log_metric("answer", 42.0)
    return dg.MaterializeResult(metadata={"mlflow_run": dg.MetadataValue.url(url), "run_id": run.info.run_id})


def _materialize(settings, tracking):
    result = dg.materialize([logged_asset], resources={"settings": settings, "mlflow_tracking": tracking})
    assert result.success
    (mat,) = result.asset_materializations_for_node("logged_asset")
    return result.run_id, mat.metadata


def test_default_store_is_absolute_sqlite_under_the_data_root(tmp_path):
    settings = InstructCVSettings(data_root=str(tmp_path / "data"))
    tracking = MlflowTracking()
    uri = tracking.resolved_uri(settings)
    assert uri == f"sqlite:///{tmp_path / 'data' / 'mlruns' / 'mlflow.db'}"

    dagster_run_id, metadata = _materialize(settings, tracking)
    run_id = metadata["run_id"].value
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.data.tags["dagster_run_id"] == dagster_run_id
    assert run.data.tags["dagster_asset"] == "logged_asset"
    assert run.data.tags["profile"] == "mini"
    assert run.data.metrics["answer"] == 42.0
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "instructcv"
    assert experiment.artifact_location == (tmp_path / "data" / "mlruns" / "artifacts").as_uri()
    assert metadata["mlflow_run"].value == (
        f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs/{run_id}"
    )


def test_second_run_reuses_the_one_experiment(tmp_path):
    settings = InstructCVSettings(data_root=str(tmp_path / "data"))
    _, first = _materialize(settings, MlflowTracking())
    _, second = _materialize(settings, MlflowTracking())
    client = MlflowClient(tracking_uri=MlflowTracking().resolved_uri(settings))
    runs = [client.get_run(m["run_id"].value) for m in (first, second)]
    assert runs[0].info.experiment_id == runs[1].info.experiment_id
    assert len(client.search_experiments()) == 2  # "Default" + "instructcv"


@pytest.mark.slow
def test_logs_to_a_real_tracking_server(tmp_path, mlflow_server):
    settings = InstructCVSettings(data_root=str(tmp_path / "data"))
    tracking = MlflowTracking(tracking_uri=mlflow_server)
    dagster_run_id, metadata = _materialize(settings, tracking)
    run_id = metadata["run_id"].value
    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(run_id)
    assert run.data.tags["dagster_run_id"] == dagster_run_id
    assert run.data.metrics["answer"] == 42.0
    assert metadata["mlflow_run"].value.startswith(f"{mlflow_server}/#/experiments/")
    assert not (tmp_path / "data" / "mlruns").exists()  # nothing logged locally


def _ensure_in_process(uri: str, start_at: float, queue) -> None:
    import time

    from instructcv_core.tracking import ensure_experiment

    time.sleep(max(0.0, start_at - time.time()))  # both processes reach the fresh store together
    try:
        queue.put(("ok", ensure_experiment(uri, "instructcv", None)))
    except Exception as exc:  # noqa: BLE001 (reported to the test)
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def test_two_processes_creating_a_fresh_sqlite_store_at_once_both_succeed(tmp_path):
    """A fresh job starts several logging steps at once: the store's migrations and the experiment's
    creation must not collide (the store is locked while they run)."""
    import multiprocessing
    import time

    from instructcv_core.tracking import default_tracking_uri

    uri = default_tracking_uri(tmp_path)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    start_at = time.time() + 8.0  # after both interpreters have imported mlflow
    procs = [ctx.Process(target=_ensure_in_process, args=(uri, start_at, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert [r[0] for r in results] == ["ok", "ok"], results
    assert results[0][1] == results[1][1]  # one experiment, found by the second process
