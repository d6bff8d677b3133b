"""The one `Definitions` of the project: assets by stage, their checks, jobs and resources."""

from __future__ import annotations

import dagster as dg

from assets.raw import raw_assets, raw_catalog, raw_checks
from pipelines.jobs import full_reproduction, raw_data
from pipelines.project import ensure_dagster_home
from pipelines.resources import InstructCVSettings, MlflowTracking

ensure_dagster_home()

defs = dg.Definitions(
    assets=[*raw_assets, raw_catalog],
    asset_checks=raw_checks,
    jobs=[full_reproduction, raw_data],
    resources={
        "settings": InstructCVSettings(),
        "mlflow_tracking": MlflowTracking(),
    },
)
