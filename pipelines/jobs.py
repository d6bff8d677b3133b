"""Jobs: `full_reproduction` (everything) and one job per stage, all defaulting to the embedded profile."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import yaml

from assets.datasets import SHARDS
from pipelines.project import CONFIG_DIR

EMBEDDED_PROFILE = CONFIG_DIR / "mini.yaml"


def load_run_config(path: Path) -> dict:
    """A run-config profile from ``configs/``; a malformed file is an error naming it."""
    try:
        config = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot load run config ({exc})") from exc
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a run config must be a mapping with resources/ops/execution keys")
    return config


# Partitioned (sharded) assets run as one range in one run: `dagster job execute` has no
# --partition option, and a run mixing partitioned and unpartitioned assets needs the range tags.
ALL_SHARDS = {
    "dagster/asset_partition_range_start": SHARDS.get_first_partition_key(),
    "dagster/asset_partition_range_end": SHARDS.get_last_partition_key(),
}

full_reproduction = dg.define_asset_job(
    "full_reproduction",
    # the sharded evaluation is another way to the same results (partitioned by benchmark): its own job;
    # the released weights are evaluated by `released_evaluation` (a download the reproduction does not need)
    selection=dg.AssetSelection.all() - dg.AssetSelection.groups("eval_shards", "eval_released"),
    config=load_run_config(EMBEDDED_PROFILE),
    run_tags=ALL_SHARDS,
    description="Rebuild every dataset and results table from scratch. Default config: the embedded "
    "mini profile (configs/mini.yaml); pass `-c configs/paper.yaml` for the full reproduction.",
)

raw_data = dg.define_asset_job(
    "raw_data",
    selection=dg.AssetSelection.groups("raw"),
    # the embedded profile less its ops section, whose assets are not in this job
    config={k: v for k, v in load_run_config(EMBEDDED_PROFILE).items() if k != "ops"},
    description="Only the raw-dataset stage: download, verify, extract and read every source dataset.",
)

# What `released_evaluation` runs: the data stages evaluation reads, the released weights' evaluation and the tables.
RELEASED_SELECTION = (dg.AssetSelection.groups("raw") | dg.AssetSelection.assets("encoded_pairs", "test_manifests",
                                                                                  "heldout_instructions")
                      | dg.AssetSelection.groups("eval_released") | dg.AssetSelection.assets("table1", "table2", "table3"))

released_evaluation = dg.define_asset_job(
    "released_evaluation",
    selection=RELEASED_SELECTION,
    # the embedded profile's settings and its pair-building workers (its other ops are not in this job)
    config={**{k: v for k, v in load_run_config(EMBEDDED_PROFILE).items() if k != "ops"},
            "ops": {k: v for k, v in (load_run_config(EMBEDDED_PROFILE).get("ops") or {}).items() if k == "encoded_pairs"}},
    run_tags=ALL_SHARDS,
    description="The authors' released InstructCV weights (settings.released_model, default alaa-lab/InstructCV) "
    "scored on every benchmark under both protocols, with Tables 1-3, without training: the data stages, "
    "eval_<benchmark>_released and the tables. Paper scale: `-c configs/released.yaml` (docs/released.md).",
)

sharded_evaluation = dg.define_asset_job(
    "sharded_evaluation",
    selection=dg.AssetSelection.groups("eval_shards"),
    description="One benchmark (partition) of a checkpoint's evaluation fanned out to `shards` parallel steps and "
    "merged exactly (assets/evaluate_shards.py); the executor decides where the steps run (multiprocess, "
    "dagster-dask, dagster-k8s: docs/scaling.md).",
)


def sharded_evaluation_k8s_job():
    """`sharded_evaluation` under the Kubernetes executor (`dagster-k8s`): every step its own pod, each
    shard step with one GPU (`assets/evaluate_shards.py`); run config: `configs/k8s.yaml`."""
    from dagster_k8s import k8s_job_executor

    return dg.define_asset_job(
        "sharded_evaluation_k8s", selection=dg.AssetSelection.groups("eval_shards"), executor_def=k8s_job_executor,
        description="sharded_evaluation, one pod per step on Kubernetes (configs/k8s.yaml, docs/scaling.md).")
