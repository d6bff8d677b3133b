"""Runs whose process died (kill -9, the OOM killer, a closed laptop) never block a later run.

The `gpu` pool (dagster_home/dagster.yaml) is an instance-wide limit: a step claims a slot in the
instance database before it starts and frees it when it ends, so across every run of the instance only
one GPU-bound step runs at a time. A run killed outright frees nothing: its slot stays claimed, the run
stays STARTED, and every later step of the pool waits for a slot that never comes. Dagster's own
remedy, run monitoring, needs the daemon and a run launcher that can check a worker's health; neither
`dagster job execute` nor the default run launcher has one.

So a run is judged by its processes. Dagster logs the pid of every process that works on a run (the
executor's "Executing steps ..." engine event, each step worker's STEP_WORKER_STARTED event, the
launcher's run-worker event); a run in progress none of whose processes is still alive (a process
started after the pid was logged is another one that reused the pid) is dead: it is marked failed and
its slots and queued claims are freed, with a WARNING naming it. Every run does this before its first
step (`recovering_executor`, the executor of the project's `Definitions`), `dagster dev`'s daemon does
it every minute (`stale_run_sensor`, which also unblocks a run queued behind a dead one), and
`instructcv doctor` lists such runs and, with `--release-stale`, releases them.

Only runs started on this machine are judged (the run's ``instructcv/host`` tag, written by the
executor); a run without any logged pid (killed before its executor started) is left alone and listed
by doctor.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
from dagster._core.definitions.executor_definition import multi_or_in_process_executor
from dagster._core.events import DagsterEventType, EngineEventData
from dagster._core.executor.base import Executor
from dagster._core.instance.config import ConcurrencyConfig, dagster_instance_config
from dagster._core.storage.dagster_run import FINISHED_STATUSES

HOST_TAG = "instructcv/host"
#: The instance-wide pool of the GPU-bound steps (training, evaluation, the speed-quality curve).
GPU_POOL = "gpu"
UNLIMITED_POOL_FIX = ("use the project's dagster_home/dagster.yaml (`concurrency: pools: default_limit: 1`) as "
                      "the instance's dagster.yaml, or run `dagster instance concurrency set gpu 1`")
# Statuses in which a run has a process working on it (QUEUED and NOT_STARTED runs have none yet).
RUNNING_STATUSES = (dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING)
# A process created more than this long after its pid was logged is not the logged one.
CLOCK_SLACK_SECONDS = 2.0
_PID_EVENTS = {DagsterEventType.ENGINE_EVENT, DagsterEventType.STEP_WORKER_STARTED}


@dataclass
class RunState:
    """One run that is in progress or holds pool claims, and whether anything still works on it."""

    run_id: str
    job_name: str
    status: dg.DagsterRunStatus
    verdict: str  # "alive", "dead", "unknown" (no process logged, or started on another host), "finished"
    pids: list[int] = field(default_factory=list)  # processes logged for the run
    alive_pids: list[int] = field(default_factory=list)
    slots: list[tuple[str, str]] = field(default_factory=list)  # (pool, step) claimed
    pending: list[tuple[str, str]] = field(default_factory=list)  # (pool, step) waiting for a slot

    @property
    def stale(self) -> bool:
        """Dead, or finished with no live process but still holding claims: safe to release."""
        return self.verdict == "dead" or (self.verdict == "finished" and bool(self.slots or self.pending))

    def describe(self) -> str:
        claims = [f"{pool} slot ({step})" for pool, step in self.slots]
        claims += [f"a queued {pool} claim ({step})" for pool, step in self.pending]
        holds = f"; holds {', '.join(claims)}" if claims else ""
        if self.verdict == "dead":
            gone = ", ".join(map(str, self.pids))
            what = f"its process{'es' if len(self.pids) > 1 else ''} ({gone}) {'are' if len(self.pids) > 1 else 'is'} gone"
        elif self.verdict == "alive":
            what = f"running (pid {', '.join(map(str, self.alive_pids))})"
        elif self.verdict == "finished":
            what = "finished"
        else:
            what = "no process of this machine logged for it"
        return f"run {self.run_id} ({self.job_name}) {self.status.value}, {what}{holds}"


def process_alive(pid: int, logged_at: float) -> bool:
    """Whether the process ``pid`` logged at ``logged_at`` (epoch seconds) still runs."""
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return process.create_time() <= logged_at + CLOCK_SLACK_SECONDS
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # another user's process: assume it is the run's
        return True


def _logged_processes(instance: dg.DagsterInstance, run_id: str) -> list[tuple[int, float]]:
    """(pid, logged at) of every process Dagster logged as working on the run."""
    found = []
    for entry in instance.all_logs(run_id, of_type=_PID_EVENTS):
        data = entry.dagster_event.event_specific_data if entry.dagster_event is not None else None
        pid = data.metadata.get("pid") if isinstance(data, EngineEventData) else None
        if pid is not None and str(pid.value).isdigit():
            found.append((int(pid.value), entry.timestamp))
    return found


def _claims(instance: dg.DagsterInstance) -> tuple[dict[str, list], dict[str, list]]:
    """Claimed slots and queued claims per run id, as (pool, step) lists."""
    storage = instance.event_log_storage
    slots: dict[str, list] = {}
    pending: dict[str, list] = {}
    if not storage.supports_global_concurrency_limits:
        return slots, pending
    for pool, info in storage.get_concurrency_infos(sorted(storage.get_concurrency_keys())).items():
        for slot in info.claimed_slots:
            slots.setdefault(slot.run_id, []).append((pool, slot.step_key))
        for step in info.pending_steps:
            if step.assigned_timestamp is None:  # an assigned claim is also a claimed slot
                pending.setdefault(step.run_id, []).append((pool, step.step_key))
    return slots, pending


def inspect_runs(instance: dg.DagsterInstance, exclude: Sequence[str] = ()) -> list[RunState]:
    """Every run in progress or holding pool claims (but ``exclude``), with its verdict."""
    slots, pending = _claims(instance)
    running = instance.get_runs(filters=dg.RunsFilter(statuses=list(RUNNING_STATUSES)))
    runs = {run.run_id: run for run in running}
    for run_id in set(slots) | set(pending):
        if run_id not in runs:
            run = instance.get_run_by_id(run_id)
            if run is not None:
                runs[run_id] = run
    host = socket.gethostname()
    states = []
    for run_id, run in runs.items():
        if run_id in exclude:
            continue
        state = RunState(run_id, run.job_name, run.status, "unknown",
                         slots=slots.get(run_id, []), pending=pending.get(run_id, []))
        if run.tags.get(HOST_TAG, host) == host:
            logged = _logged_processes(instance, run_id)
            state.pids = sorted({pid for pid, _ in logged})
            state.alive_pids = sorted({pid for pid, at in logged if process_alive(pid, at)})
        if state.alive_pids:  # a finished run too: a force-terminated step may still run
            state.verdict = "alive"
        elif run.status in FINISHED_STATUSES:
            state.verdict = "finished"
        elif state.pids:
            state.verdict = "dead"
        states.append(state)
    return sorted(states, key=lambda s: s.run_id)


def release(instance: dg.DagsterInstance, state: RunState) -> str:
    """Mark a dead run failed and free its slots and queued claims; returns what was done."""
    done = []
    run = instance.get_run_by_id(state.run_id)
    if state.verdict == "dead" and run is not None and run.status not in FINISHED_STATUSES:
        instance.report_run_failed(run, message=(
            f"Marked failed: every process of this run ({', '.join(map(str, state.pids))}) is gone "
            "(killed, e.g. by kill -9 or the OOM killer). Its outputs so far are kept; a new run "
            "resumes training from the last checkpoint."))
        done.append("marked failed")
    if state.slots or state.pending:
        instance.event_log_storage.free_concurrency_slots_for_run(state.run_id)
        pools = sorted({pool for pool, _ in state.slots + state.pending})
        done.append(f"freed its {', '.join(pools)} claims")
    return f"run {state.run_id} ({state.job_name}): " + (" and ".join(done) or "nothing to do")


def release_stale_runs(instance: dg.DagsterInstance, exclude: Sequence[str] = (),
                       warn: Callable[[str], None] | None = None) -> list[RunState]:
    """Release every stale run (dead, or finished with claims left); ``warn`` gets one line per run."""
    stale = [s for s in inspect_runs(instance, exclude) if s.stale]
    for state in stale:
        message = release(instance, state)
        if warn is not None:
            warn(f"{state.describe()}. Released it: {message.split(': ', 1)[1]}.")
    return stale


def gpu_pool_limit(instance: dg.DagsterInstance) -> int | None:
    """How many steps of the ``gpu`` pool the instance runs at once: the pool's own limit where one is
    set (`dagster instance concurrency set gpu N`), else the instance's ``concurrency: pools:
    default_limit``; None: no limit."""
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits and GPU_POOL in storage.get_concurrency_keys():
        return storage.get_concurrency_info(GPU_POOL).slot_count
    return instance.get_concurrency_config().pool_config.default_pool_limit


def configured_gpu_pool_limit(home: str | Path) -> int | None:
    """The ``gpu`` pool limit an instance folder's dagster.yaml sets (``concurrency: pools: default_limit``),
    read with Dagster's own validating loader and without creating the instance's storage; None: no limit
    (or no dagster.yaml). Once the instance exists, :func:`gpu_pool_limit` also sees a limit set on the pool."""
    if not (Path(home) / "dagster.yaml").is_file():
        return None
    config, _ = dagster_instance_config(str(home))
    return ConcurrencyConfig.from_concurrency_settings(config.get("concurrency") or {}, None).pool_config.default_pool_limit


def unlimited_gpu_pool_warning(instance: dg.DagsterInstance) -> str | None:
    """A warning when the instance sets no limit on the ``gpu`` pool (an instance folder without the
    project's dagster.yaml): training and evaluation steps then run at once and share the machine."""
    if gpu_pool_limit(instance) is not None:
        return None
    return (f"the Dagster instance sets no limit on the `{GPU_POOL}` pool: training and evaluation steps will run at "
            f"once and share the accelerator or the CPU cores (measured on 2 cores: a mini training step ~13x slower "
            f"with three such steps at once; results are unchanged, time is not). To run them one at a time, "
            f"{UNLIMITED_POOL_FIX}.")


class _RecoveringExecutor(Executor):
    """The configured executor, after releasing stale runs so that none can hold a slot this run needs.

    Before that, the run's config is checked as its steps will use it (`pipelines.run_config_check`):
    a value a step would refuse fails the run here, before any step runs. An instance without a limit
    on the ``gpu`` pool gets a warning in the run log (:func:`unlimited_gpu_pool_warning`).
    """

    def __init__(self, inner: Executor):
        self._inner = inner

    @property
    def retries(self):
        return self._inner.retries

    @property
    def step_dependency_config(self):
        return self._inner.step_dependency_config

    def execute(self, plan_context, execution_plan) -> Iterator[dg.DagsterEvent]:
        from pipelines.run_config_check import refuse_invalid_run_config

        run = plan_context.dagster_run
        steps = execution_plan.get_steps_to_execute_in_topo_order()
        refuse_invalid_run_config(plan_context.job.get_definition(), run.run_config, [s.node_handle for s in steps],
                                  warn=plan_context.log.warning)
        plan_context.instance.add_run_tags(run.run_id, {HOST_TAG: socket.gethostname()})
        release_stale_runs(plan_context.instance, exclude=[run.run_id], warn=plan_context.log.warning)
        warning = unlimited_gpu_pool_warning(plan_context.instance)
        if warning is not None:
            plan_context.log.warning(warning)
        yield from self._inner.execute(plan_context, execution_plan)


@dg.executor(
    name="recovering_executor",
    config_schema=multi_or_in_process_executor.config_schema.as_field(),
    requirements=multi_or_in_process_executor.get_requirements,
)
def recovering_executor(init_context: dg.InitExecutorContext) -> Executor:
    """Dagster's default executor (`multiprocess` or `in_process`, same config) that first refuses a run
    config a step would refuse and releases runs whose processes died, so a killed run never blocks this one."""
    return _RecoveringExecutor(multi_or_in_process_executor.executor_creation_fn(init_context))


@dg.sensor(
    name="stale_run_sensor",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Marks failed the runs whose processes died and frees their pool slots, so a run queued "
    "behind a killed one starts (runs started from `dagster dev`; a run releases them itself when it starts).",
)
def stale_run_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    stale = release_stale_runs(context.instance, warn=context.log.warning)
    if not stale:
        return dg.SkipReason("no run whose processes died")
    return dg.SkipReason(f"released {len(stale)} run(s): {', '.join(s.run_id for s in stale)}")
