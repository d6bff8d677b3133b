"""``instructcv doctor``'s look at the Dagster instance: runs left in progress by a killed process and
the pool slots they still hold (which would make every later GPU step wait), and their release."""

from __future__ import annotations

import os
from pathlib import Path

from instructcv_core.cli._io import PROJECT_DIR

RELEASE_FIX = ("`instructcv doctor --release-stale` marks it failed and frees its slots "
               "(the next run of the job also does this before its first step)")


def dagster_home() -> Path:
    """The instance folder runs use: $DAGSTER_HOME, else the project's dagster_home/."""
    home = os.environ.get("DAGSTER_HOME")
    return Path(home) if home else PROJECT_DIR / "dagster_home"


def instance_checks(release: bool) -> list:
    """One check per run in progress or holding pool slots, one for the pools; ``release`` frees stale runs."""
    from instructcv_core.cli.doctor import Check

    import dagster as dg

    from pipelines.run_recovery import (
        UNLIMITED_POOL_FIX,
        configured_gpu_pool_limit,
        gpu_pool_limit,
        inspect_runs,
        release as release_run,
    )

    home = dagster_home()

    def pool_check(limit):
        if limit is None:
            return Check("dagster gpu pool", "missing", f"{home} sets no limit on the gpu pool: training and "
                         "evaluation steps would run at once and share the machine", UNLIMITED_POOL_FIX)
        return Check("dagster gpu pool", "ok", f"{limit} step(s) at a time")

    if not (home / "storage").is_dir() and not (home / "history").is_dir():
        # no instance storage yet (and none created here): the limit the instance's dagster.yaml will set
        return [pool_check(configured_gpu_pool_limit(home)), Check("dagster runs", "info", f"no runs recorded in {home} yet")]

    checks = []
    with dg.DagsterInstance.from_config(str(home)) as instance:
        checks.append(pool_check(gpu_pool_limit(instance)))
        states = inspect_runs(instance)
        for state in states:
            item = f"dagster run {state.run_id[:8]}"
            if state.stale and release:
                checks.append(Check(item, "ok", "released " + release_run(instance, state)))
            elif state.stale:
                checks.append(Check(item, "missing", state.describe(), RELEASE_FIX))
            elif state.verdict == "unknown":
                checks.append(Check(item, "info", state.describe() + " (left alone: if nothing runs it, "
                                    "terminate it in the Dagster UI)"))
            else:
                checks.append(Check(item, "info", state.describe()))
        if not states:
            checks.append(Check("dagster runs", "ok", f"no run in progress in {home}"))
        checks.append(_pools_check(instance))
    return checks


def _pools_check(instance):
    from instructcv_core.cli.doctor import Check

    storage = instance.event_log_storage
    keys = sorted(storage.get_concurrency_keys()) if storage.supports_global_concurrency_limits else []
    infos = storage.get_concurrency_infos(keys) if keys else {}
    parts = [f"{key}: {len(info.claimed_slots)} / {info.slot_count} slots occupied"
             + (f" by {', '.join(sorted({s.run_id[:8] for s in info.claimed_slots}))}" if info.claimed_slots else "")
             for key, info in infos.items()]
    if not parts:
        return Check("dagster pools", "ok", "no pool slot claimed yet")
    busy = any(info.claimed_slots for info in infos.values())
    return Check("dagster pools", "info" if busy else "ok", "; ".join(parts))
