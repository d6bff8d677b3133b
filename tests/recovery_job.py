"""A two-step job for the run-recovery tests: `prepare`, then `train` in the `gpu` pool.

Each step writes ``<name>.started`` (its pid) into $RECOVERY_MARKS, sleeps
$RECOVERY_<NAME>_SECONDS (default 1) and writes ``<name>.done``. It runs with the project's executor.
"""

import os
import time
from pathlib import Path

import dagster as dg

from pipelines.run_recovery import recovering_executor


def _work(name: str) -> None:
    marks = Path(os.environ["RECOVERY_MARKS"])
    marks.mkdir(parents=True, exist_ok=True)
    (marks / f"{name}.started").write_text(str(os.getpid()))
    time.sleep(float(os.environ.get(f"RECOVERY_{name.upper()}_SECONDS", "1")))
    (marks / f"{name}.done").write_text("")


@dg.asset
def prepare() -> None:
    _work("prepare")


@dg.asset(deps=[prepare], pool="gpu")
def train() -> None:
    _work("train")


two_steps = dg.define_asset_job("two_steps", selection=dg.AssetSelection.all())
defs = dg.Definitions(assets=[prepare, train], jobs=[two_steps], executor=recovering_executor)
