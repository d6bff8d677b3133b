"""The one `Definitions` of the project: assets by stage, their checks, jobs and resources."""

from __future__ import annotations

import os

import dagster as dg

from assets.datasets import encoded_pairs, fp_manifest, manifest_checks, rp_manifest, test_manifests
from assets.evaluate import EVAL_ASSETS, results_tables
from assets.evaluate_shards import eval_shards_fp, eval_shards_rp
from assets.instructions import heldout_instructions, paraphrase_bank, paraphrase_bank_variety
from assets.model import base_model
from assets.plan import cost_plan
from assets.speed_quality import speed_quality
from assets.raw import raw_assets, raw_catalog, raw_checks
from assets.train import (instructcv_fp_checkpoint, instructcv_fp_onestep_checkpoint, instructcv_rp_checkpoint,
                          instructcv_rp_onestep_checkpoint)
from pipelines.jobs import (full_reproduction, raw_data, released_evaluation, sharded_evaluation,
                           sharded_evaluation_k8s_job)
from pipelines.project import ensure_dagster_home
from pipelines.resources import InstructCVSettings, MlflowTracking
from pipelines.run_recovery import recovering_executor, stale_run_sensor

ensure_dagster_home()

defs = dg.Definitions(
    assets=[
        *raw_assets, raw_catalog,
        paraphrase_bank, heldout_instructions,
        encoded_pairs, fp_manifest, rp_manifest, test_manifests, cost_plan,
        base_model, instructcv_fp_checkpoint, instructcv_rp_checkpoint,
        instructcv_fp_onestep_checkpoint, instructcv_rp_onestep_checkpoint,
        *EVAL_ASSETS, results_tables, speed_quality, eval_shards_fp, eval_shards_rp,
    ],
    asset_checks=[*raw_checks, paraphrase_bank_variety, *manifest_checks],
    jobs=[full_reproduction, raw_data, released_evaluation, sharded_evaluation, sharded_evaluation_k8s_job()],
    # A run killed outright (kill -9, OOM) keeps its `gpu` slot: every run releases such runs before
    # its first step, and the daemon of `dagster dev` does so every minute (pipelines/run_recovery.py).
    executor=recovering_executor,
    sensors=[stale_run_sensor],
    resources={
        # INSTRUCTCV_DATA_ROOT moves every artefact of runs launched without a run config (the UI's
        # Materialize button, `dagster asset materialize`); a run config's data_root still wins.
        "settings": InstructCVSettings(data_root=os.environ.get("INSTRUCTCV_DATA_ROOT", "data")),
        "mlflow_tracking": MlflowTracking(),
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
    },
)
