"""Runs whose process died never block a later run; Ctrl-C leaves the instance clean (pipelines/run_recovery.py).

The job is tests/recovery_job.py (`prepare`, then `train` in the `gpu` pool), run as a real
`dagster job execute` subprocess on the project's dagster.yaml (conftest gives each test its own
DAGSTER_HOME); the whole process group is killed as the OOM killer or a closed terminal would.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner

from pipelines.project import PROJECT_ROOT
from pipelines.run_recovery import inspect_runs, process_alive

DAGSTER = Path(sys.executable).parent / "dagster"
JOB = [str(DAGSTER), "job", "execute", "-f", str(PROJECT_ROOT / "tests" / "recovery_job.py"), "-j", "two_steps"]


def _env(marks: Path, **seconds: float) -> dict:
    env = {**os.environ, "RECOVERY_MARKS": str(marks), "PYTHONUNBUFFERED": "1"}
    env.update({f"RECOVERY_{name.upper()}_SECONDS": str(value) for name, value in seconds.items()})
    return env


def _start_and_signal(tmp_path: Path, step: str, sig: int, extra: list[str] = (), while_running=None) -> subprocess.Popen:
    """Start the job in its own process group; once ``step`` runs (and ``while_running()`` returned),
    send ``sig`` to the whole group."""
    marks = tmp_path / f"marks-{time.monotonic_ns()}"
    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen([*JOB, *extra], cwd=PROJECT_ROOT, env=_env(marks, prepare=120 if step == "prepare" else 1, train=120),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while not (marks / f"{step}.started").exists():
        assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        assert time.monotonic() < deadline, f"{step} did not start in 180 s"
        time.sleep(0.2)
    if while_running is not None:
        while_running()
    os.killpg(proc.pid, sig)
    proc.wait(timeout=120)
    log.close()
    return proc


def _gpu_claims(instance: dg.DagsterInstance) -> list[tuple[str, str]]:
    info = instance.event_log_storage.get_concurrency_info("gpu")
    return [(s.run_id, s.step_key) for s in info.claimed_slots] + [(p.run_id, p.step_key) for p in info.pending_steps]


def _killed_run(tmp_path: Path, while_running=None) -> dg.DagsterRun:
    """A run SIGKILLed (whole process group) while `train` holds the gpu slot: the state of the issue."""
    proc = _start_and_signal(tmp_path, "train", signal.SIGKILL, while_running=while_running)
    assert proc.returncode == -signal.SIGKILL
    instance = dg.DagsterInstance.get()
    (run,) = instance.get_runs()
    assert run.status == dg.DagsterRunStatus.STARTED
    assert (run.run_id, "train") in _gpu_claims(instance)
    return run


def test_the_next_run_releases_a_killed_run_and_succeeds(tmp_path):
    dead = _killed_run(tmp_path)
    proc = subprocess.run(JOB, cwd=PROJECT_ROOT, env=_env(tmp_path / "marks-again"), capture_output=True, text=True,
                          timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "RUN_SUCCESS" in out
    warnings = [line for line in out.splitlines() if " - WARNING - " in line and dead.run_id in line]
    assert len(warnings) == 1, out[-3000:]
    assert "STARTED, its processes" in warnings[0] and "are gone; holds gpu slot (train)" in warnings[0]
    assert "Released it: marked failed and freed its gpu claims." in warnings[0]
    instance = dg.DagsterInstance.get()
    assert instance.get_run_by_id(dead.run_id).status == dg.DagsterRunStatus.FAILURE
    failure = instance.all_logs(dead.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    assert "every process of this run" in failure[-1].dagster_event.message
    assert _gpu_claims(instance) == []
    assert inspect_runs(instance) == []


def test_doctor_lists_a_killed_run_and_releases_it_with_the_flag(tmp_path):
    from instructcv_core.cli import cli

    args = ["doctor", "--profile", "mini", "--data-root", str(tmp_path / "data")]

    def live_run_is_left_alone():
        result = CliRunner().invoke(cli, [*args, "--release-stale"])
        assert result.exit_code == 0, result.output
        row = next(line for line in result.output.splitlines() if line.startswith("dagster run "))
        assert "info" in row and "STARTED, running (pid " in row and "holds gpu slot (train)" in row
        (run,) = dg.DagsterInstance.get().get_runs()
        assert run.status == dg.DagsterRunStatus.STARTED

    dead = _killed_run(tmp_path, while_running=live_run_is_left_alone)
    listed = CliRunner().invoke(cli, args)
    assert listed.exit_code == 1, listed.output
    row = next(line for line in listed.output.splitlines() if line.startswith(f"dagster run {dead.run_id[:8]}"))
    assert "missing" in row and f"run {dead.run_id} (two_steps) STARTED" in row and "holds gpu slot (train)" in row
    assert f"gpu: 1 / 1 slots occupied by {dead.run_id[:8]}" in listed.output
    assert f"- dagster run {dead.run_id[:8]}: `instructcv doctor --release-stale`" in listed.output

    released = CliRunner().invoke(cli, [*args, "--release-stale"])
    assert released.exit_code == 0, released.output
    assert f"released run {dead.run_id} (two_steps): marked failed and freed its gpu claims" in released.output
    assert "gpu: 0 / 1 slots occupied" in released.output
    instance = dg.DagsterInstance.get()
    assert instance.get_run_by_id(dead.run_id).status == dg.DagsterRunStatus.FAILURE
    assert _gpu_claims(instance) == []

    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0, again.output
    assert "no run in progress" in again.output


@pytest.mark.parametrize("step,executor", [("prepare", "multiprocess"), ("train", "multiprocess"), ("train", "in_process")])
def test_ctrl_c_during_a_step_leaves_the_instance_clean(tmp_path, step, executor):
    config = tmp_path / "run.yaml"
    config.write_text(f"execution:\n  config:\n    {executor}: {{}}\n")
    proc = _start_and_signal(tmp_path, step, signal.SIGINT, ["-c", str(config)])
    assert proc.returncode != 0
    instance = dg.DagsterInstance.get()
    (run,) = instance.get_runs()
    assert run.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
    assert _gpu_claims(instance) == []
    assert inspect_runs(instance) == []


def test_a_finished_run_left_holding_a_slot_is_freed_without_a_new_failure():
    from recovery_job import defs

    from pipelines.run_recovery import release_stale_runs

    instance = dg.DagsterInstance.get()
    run = instance.create_run_for_job(defs.resolve_job_def("two_steps"), run_config={})
    instance.report_run_canceled(run)
    instance.event_log_storage.initialize_concurrency_limit_to_default("gpu")
    assert instance.event_log_storage.claim_concurrency_slot("gpu", run.run_id, "train").is_claimed
    warnings = []
    (state,) = release_stale_runs(instance, warn=warnings.append)
    assert state.verdict == "finished" and state.slots == [("gpu", "train")]
    assert warnings == [f"run {run.run_id} (two_steps) CANCELED, finished; holds gpu slot (train). "
                        "Released it: freed its gpu claims."]
    assert _gpu_claims(instance) == [] and inspect_runs(instance) == []
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.CANCELED


def test_a_process_is_alive_only_if_it_is_the_one_logged():
    me = os.getpid()
    assert process_alive(me, time.time())
    # a process created long after the pid was logged is another process that reused the pid
    assert not process_alive(me, time.time() - 3600)
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    assert not process_alive(finished.pid, time.time())


# ------------------------------------------------------------------------------------------------
# The embedded job: Ctrl-C, then kill -9, during training; the README command then resumes and finishes


def _digest(folder: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _checkpoint_steps(train_dir: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in train_dir.glob("*/checkpoints/step-*"))


@pytest.mark.slow
def test_embedded_job_survives_ctrl_c_and_kill_9_during_training_and_resumes_exactly(tmp_path):
    import json

    import yaml

    from instructcv_core.data.mini.build import build_mirror
    from instructcv_core.data.mirror_server import serve_directory
    from test_pipeline import SMALL

    from assets.train import TrainAssetConfig, launch_command

    build_mirror(tmp_path / "mirror", seed=0, sizes=SMALL)
    train_dir = tmp_path / "data" / "mini" / "train" / "fp"
    with serve_directory(tmp_path / "mirror") as server:
        config = tmp_path / "run.yaml"
        # fixed step counts (no wall-clock budget) so that the digest of an uninterrupted run is comparable
        config.write_text(yaml.safe_dump({
            "resources": {"settings": {"config": {"data_root": str(tmp_path / "data"), "mini_sizes": SMALL,
                                                  "mini_mirror_url": server.url, "progress_bars": False}}},
            "ops": {
                    "instructcv_fp_checkpoint": {"config": {"max_steps": 14, "train_batch_size": 4,
                                                            "checkpointing_steps": 2}}},
            # one step at a time: steps creating a fresh MLflow sqlite store concurrently can race on its migrations
            "execution": {"config": {"multiprocess": {"max_concurrent": 1}}},
        }))
        command = [str(DAGSTER), "job", "execute", "-m", "pipelines.definitions", "-j", "full_reproduction",
                   "-c", str(config), "-o", "*instructcv_fp_checkpoint"]

        def interrupt_in_training(sig: int, after_step: int) -> None:
            log = open(tmp_path / f"signal-{sig}.log", "w")
            proc = subprocess.Popen(command, cwd=PROJECT_ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            deadline = time.monotonic() + 900
            while not any(s > after_step for s in _checkpoint_steps(train_dir)):
                assert proc.poll() is None, (tmp_path / f"signal-{sig}.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "no checkpoint in 900 s"
                time.sleep(0.05)
            os.killpg(proc.pid, sig)
            proc.wait(timeout=300)
            log.close()
            assert proc.returncode != 0
            assert not (next(train_dir.iterdir()) / "train_result.json").exists(), "training finished before the signal"

        instance = dg.DagsterInstance.get()
        # Ctrl-C: the run ends failed or canceled and holds nothing
        interrupt_in_training(signal.SIGINT, after_step=0)
        (interrupted,) = instance.get_runs()
        assert interrupted.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
        assert _gpu_claims(instance) == [] and inspect_runs(instance) == []
        kept = _checkpoint_steps(train_dir)[-1]
        # kill -9 of the whole process group: the run stays STARTED and keeps the gpu slot
        interrupt_in_training(signal.SIGKILL, after_step=kept)
        killed = instance.get_runs()[0]
        assert killed.status == dg.DagsterRunStatus.STARTED
        assert (killed.run_id, "instructcv_fp_checkpoint") in _gpu_claims(instance)
        resume_step = _checkpoint_steps(train_dir)[-1]
        assert kept < resume_step < 14

        # the same command again: releases the dead run, resumes training from its last checkpoint
        proc = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=1200)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert any(" - WARNING - " in line and f"run {killed.run_id} (full_reproduction) STARTED" in line
               and "Released it: marked failed" in line for line in out.splitlines()), out[-3000:]
    assert instance.get_run_by_id(killed.run_id).status == dg.DagsterRunStatus.FAILURE
    assert _gpu_claims(instance) == [] and inspect_runs(instance) == []
    (run_dir,) = train_dir.glob("*/train_result.json")
    result = json.loads(run_dir.read_text())
    assert result["steps"] == 14 and result["resumed_from"] == resume_step

    # an uninterrupted run of the same training config, launched as the asset launches it
    resumed = run_dir.parent
    reference = tmp_path / "reference"
    train_config = yaml.safe_load((resumed / "train_config.yaml").read_text())
    train_config.update(output_dir=str(reference), mlflow_run_id=None, mlflow_tracking_uri=None)
    reference.mkdir()
    (reference / "train_config.yaml").write_text(yaml.safe_dump(train_config))
    subprocess.run(launch_command(TrainAssetConfig(), reference / "train_config.yaml", "no"), cwd=PROJECT_ROOT,
                   check=True, capture_output=True, timeout=900)
    assert json.loads((reference / "train_result.json").read_text())["resumed_from"] is None
    read = lambda folder: [json.loads(line) for line in (folder / "losses.jsonl").read_text().splitlines()]  # noqa: E731
    assert read(resumed) == read(reference) and len(read(reference)) == 14
    assert _digest(resumed / "pipeline") == _digest(reference / "pipeline")


def test_an_instance_without_a_gpu_pool_limit_is_named_by_the_run_and_the_doctor(tmp_path, monkeypatch):
    # Without the project's dagster.yaml an instance runs every gpu-pool step at once (FP and RP training
    # and the untrained evaluation together on 2 cores): the run log warns, `instructcv doctor` says so.
    from instructcv_core.cli import cli
    from pipelines.run_recovery import configured_gpu_pool_limit, gpu_pool_limit, unlimited_gpu_pool_warning

    project = dg.DagsterInstance.get()  # conftest: a DAGSTER_HOME holding the project's dagster.yaml
    project_home = Path(os.environ["DAGSTER_HOME"])
    assert gpu_pool_limit(project) == 1 and unlimited_gpu_pool_warning(project) is None
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    # from dagster.yaml alone, before any storage exists (what the doctor reads on a fresh folder)
    assert configured_gpu_pool_limit(PROJECT_ROOT / "dagster_home") == 1
    assert configured_gpu_pool_limit(bare) is None and configured_gpu_pool_limit(tmp_path) is None
    assert sorted(p.name for p in bare.iterdir()) == ["dagster.yaml"]
    args = ["doctor", "--profile", "mini", "--data-root", str(tmp_path / "data")]
    monkeypatch.setenv("DAGSTER_HOME", str(bare))
    before = CliRunner().invoke(cli, args)  # no storage yet: read from dagster.yaml, nothing created
    row = next(line for line in before.output.splitlines() if line.startswith("dagster gpu pool"))
    assert "missing" in row and "sets no limit on the gpu pool" in row, before.output
    assert before.exit_code == 1 and not (bare / "storage").exists()
    with dg.DagsterInstance.from_config(str(bare)) as instance:
        assert gpu_pool_limit(instance) is None
        assert "sets no limit on the `gpu` pool" in unlimited_gpu_pool_warning(instance)
        instance.event_log_storage.set_concurrency_slots("gpu", 2)  # `dagster instance concurrency set gpu 2`
        assert gpu_pool_limit(instance) == 2 and unlimited_gpu_pool_warning(instance) is None
    after = CliRunner().invoke(cli, args)
    row = next(line for line in after.output.splitlines() if line.startswith("dagster gpu pool"))
    assert "ok" in row and "2 step(s) at a time" in row, after.output

    # the run itself: the project's executor warns before the first step on an unlimited instance only
    def run_log(home: Path) -> str:
        proc = subprocess.run(JOB, cwd=PROJECT_ROOT, env={**_env(tmp_path / f"marks-{home.name}", prepare=0, train=0),
                                                           "DAGSTER_HOME": str(home)},
                              capture_output=True, text=True, timeout=300)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0 and "RUN_SUCCESS" in out, out[-3000:]
        return out

    unlimited = tmp_path / "unlimited"
    unlimited.mkdir()
    (unlimited / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    assert "sets no limit on the `gpu` pool" in run_log(unlimited)
    assert "sets no limit" not in run_log(project_home)
