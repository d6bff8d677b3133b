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


def test_a_process_is_alive_only_if_it_is_the_one_logged():
    me = os.getpid()
    assert process_alive(me, time.time())
    # a process created long after the pid was logged is another process that reused the pid
    assert not process_alive(me, time.time() - 3600)
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    assert not process_alive(finished.pid, time.time())
