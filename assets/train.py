"""Training stage (group `train`): the FP and RP checkpoints, trained in a subprocess via Dagster Pipes,
and their one-step fine-tunes (``instructcv_fp_onestep_checkpoint``, ``instructcv_rp_onestep_checkpoint``):
the same training code with ``objective: onestep``, started from the InstructPix2Pix checkpoint the
upstream asset's latest materialisation names (its ``checkpoint_path`` metadata).

Training runs as `accelerate launch ... -m instructcv_core.training --config <resolved.yaml>`, started by
`PipesSubprocessClient`, so one GPU, several GPUs or several nodes is a config change (world size and
machines below); only rank 0 reports back to Dagster and logs to MLflow. The assets hold the `gpu`
pool: the instance runs one such step at a time.
"""

import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Optional

import dagster as dg
from pydantic import Field

from assets.datasets import fp_manifest, rp_manifest
from assets.model import base_model, resolve_base_model
from instructcv_core.presets import resolve
from instructcv_core.training.config import TrainConfig
from pipelines.config import run_config_class, run_config_overrides
from pipelines.resources import InstructCVSettings, MlflowTracking
from pipelines.run_recovery import GPU_POOL


class TrainDeployment(dg.Config):
    """Where training runs (deployment, not recipe: a different world size is a different run)."""

    num_processes: int = Field(default=1, ge=1, description="accelerate world size on this machine (GPUs).")
    num_machines: int = Field(default=1, ge=1, description="Nodes (multi-node also needs machine_rank and main_process_ip).")
    machine_rank: int = Field(default=0, ge=0, description="This node's rank.")
    main_process_ip: Optional[str] = Field(default=None, description="Rank-0 node address for multi-node training.")


#: What the settings and upstream assets decide, not the run config.
FIXED_FIELDS = ("base_model", "manifest", "image_store", "output_dir", "resolution", "seed", "allow_network",
                "mlflow_tracking_uri", "mlflow_run_id")

TrainAssetConfig = run_config_class(
    TrainConfig, "TrainAssetConfig", exclude=FIXED_FIELDS, base=TrainDeployment,
    doc="The training recipe (every TrainConfig knob; unset: the profile's preset) and the deployment.")
# The same knobs, resolved over the train_onestep preset (its own class, so that the run-config check
# at the start of a run, `pipelines.run_config_check`, resolves each asset's config over its preset).
OnestepTrainAssetConfig = run_config_class(
    TrainConfig, "OnestepTrainAssetConfig", exclude=FIXED_FIELDS, base=TrainDeployment,
    doc="The one-step fine-tune's recipe (every TrainConfig knob; unset: the profile's train_onestep preset) "
        "and the deployment.")
#: The run-config class of each training stage (preset).
STAGE_CONFIG_CLASSES = {"train": TrainAssetConfig, "train_onestep": OnestepTrainAssetConfig}


def train_recipe(config: TrainAssetConfig, settings: InstructCVSettings, stage: str, **paths: str) -> TrainConfig:
    """The `TrainConfig` of the ``stage`` preset < run config < the settings (resolution, seed, network) and
    ``paths`` (base_model, manifest, image_store, output_dir; an unset one is empty: the run-config check
    resolves before upstream steps made them, and no value check looks at a path)."""
    paths = dict.fromkeys(("base_model", "manifest", "image_store", "output_dir"), "") | paths
    return resolve(TrainConfig, settings.profile, stage, run_config_overrides(config), **paths,
                   resolution=settings.resolution_px, seed=settings.seed, allow_network=settings.allow_network)


def resolved_train_config(config: TrainAssetConfig, settings: InstructCVSettings, variant: str, *,
                          manifest: str | None = None, stage: str = "train", base: str | None = None) -> TrainConfig:
    """The full `TrainConfig` of a variant: the ``stage`` preset < run config < settings and upstream paths.

    ``manifest``: the manifest's name (``fp``, ``rp``; default: the variant); ``base``: the model to
    start from (default: the settings' base model). Its ``output_dir`` is the run's folder,
    ``train/<variant>/<run digest>`` (`training.checkpoint.run_digest`: a digest of the resume key):
    the same run resumes from its own checkpoints (a killed run continues) and a changed recipe,
    manifest or base model starts a fresh folder.
    """
    from instructcv_core.training.checkpoint import run_digest
    from instructcv_core.training.recipe import resolve_for_manifest

    datasets = settings.profile_dir / "datasets"
    variant_dir = settings.profile_dir / "train" / variant
    recipe = train_recipe(config, settings, stage, base_model=base or resolve_base_model(settings),
                          manifest=str(datasets / f"{manifest or variant}_manifest.parquet"),
                          image_store=str(datasets / "images"), output_dir=str(variant_dir))
    world_size = config.num_processes * config.num_machines
    # Concrete accumulation and step count for this world size (effective batch, epochs: training/recipe.py).
    recipe = resolve_for_manifest(recipe, world_size)
    digest = run_digest(recipe, world_size)
    return dataclasses.replace(recipe, output_dir=str(variant_dir / digest))


def launch_command(config: TrainDeployment, config_path: Path, mixed_precision: str) -> list[str]:
    """`accelerate launch` of the training module; the world size is configuration, not code."""
    command = [sys.executable, "-m", "accelerate.commands.launch",
               "--num_processes", str(config.num_processes), "--num_machines", str(config.num_machines),
               "--machine_rank", str(config.machine_rank), "--mixed_precision", mixed_precision,
               "--dynamo_backend", "no",
               # accelerate otherwise derives CPU threads from *physical* cores (1 on small VMs)
               "--num_cpu_threads_per_process", str(max(1, (os.cpu_count() or 1) // config.num_processes))]
    if config.main_process_ip:
        command += ["--main_process_ip", config.main_process_ip]
    if config.num_processes > 1:
        command += ["--multi_gpu"]
    return command + ["-m", "instructcv_core.training", "--config", str(config_path)]


def checkpoint_asset(variant: str, manifest_asset: dg.AssetsDefinition, *, manifest_name: str | None = None,
                     start_from: dg.AssetsDefinition | None = None, stage: str = "train",
                     description: str | None = None) -> dg.AssetsDefinition:
    """The asset ``instructcv_<variant>_checkpoint``: a `TrainConfig` of the ``stage`` preset trained on the
    ``manifest_name`` manifest (default: the variant's) through Pipes + accelerate, logged to MLflow as a run and a
    LoggedModel. ``start_from``: a checkpoint asset whose latest materialised pipeline is the base
    (default: the settings' base model)."""
    start_variant = start_from.key.path[-1].removeprefix("instructcv_").removesuffix("_checkpoint") if start_from else None
    description = description or (
        f"InstructCV-{variant.upper()}: the base model instruction-tuned on the {variant.upper()} manifest "
        "(InstructPix2Pix recipe: 8-channel conv_in, text/image conditioning dropout, EMA), saved as a diffusers "
        "StableDiffusionInstructPix2PixPipeline folder.")

    @dg.asset(
        name=f"instructcv_{variant}_checkpoint",
        group_name="train",
        deps=[manifest_asset, start_from or base_model],
        pool=GPU_POOL,
        kinds={"pytorch", "accelerate", "mlflow"},
        description=description,
    )
    def _checkpoint(context: dg.AssetExecutionContext, config: STAGE_CONFIG_CLASSES[stage], settings: InstructCVSettings,
                    mlflow_tracking: MlflowTracking, pipes_subprocess_client: dg.PipesSubprocessClient) -> dg.MaterializeResult:
        import mlflow
        import pandas as pd
        import yaml

        from instructcv_core.data.records import atomic_write_text

        base = materialised_checkpoint(context.instance, start_variant)["pipeline_dir"] if start_from is not None else None
        train_config = resolved_train_config(config, settings, variant, manifest=manifest_name, stage=stage, base=base)
        output = Path(train_config.output_dir)
        output.mkdir(parents=True, exist_ok=True)
        config_path = output / "train_config.yaml"
        finished = output / "train_result.json"
        if finished.exists() and Path(json.loads(finished.read_text())["pipeline_dir"]).exists():
            # Idempotent: this exact config and manifest were trained to completion already.
            summary = json.loads(finished.read_text())
            context.log.info(f"{variant}: already trained with this config and manifest: {summary['pipeline_dir']}")
            _write_pointer(settings, variant, finished)
            return dg.MaterializeResult(metadata={**_summary_metadata(summary, config_path), "reused": True})

        with mlflow_tracking.start_run(context, settings, run_name=f"train-{variant}-{settings.profile}",
                                       tags={"stage": "train", "variant": variant}) as (run, url):
            train_config = dataclasses.replace(train_config, mlflow_tracking_uri=mlflow_tracking.resolved_uri(settings),
                                               mlflow_run_id=run.info.run_id)
            values = train_config.to_dict()
            atomic_write_text(config_path, yaml.safe_dump(values, sort_keys=True))
            mlflow.log_params({k: v for k, v in values.items() if not k.startswith("mlflow")})
            mlflow.log_dict(values, "train_config.yaml")
            manifest = pd.read_parquet(train_config.manifest, columns=["pair_id", "task", "dataset", "instruction", "input_digest", "target_digest"])
            mlflow.log_input(mlflow.data.from_pandas(manifest, source=train_config.manifest, name=manifest_name or variant), context="training")

            command = launch_command(config, config_path, train_config.mixed_precision)
            context.log.info("launching: " + " ".join(command))
            completed = pipes_subprocess_client.run(command=command, context=context, env=_child_env())
            result = completed.get_materialize_result()

            summary = json.loads((output / "train_result.json").read_text())
            _write_pointer(settings, variant, output / "train_result.json")
            model = mlflow.initialize_logged_model(
                name=f"instructcv-{variant}", source_run_id=run.info.run_id,
                params={"base_model": train_config.base_model, "steps": str(summary["steps"]),
                        "objective": train_config.objective},
                tags={"checkpoint_path": summary["pipeline_dir"], "variant": variant, "profile": settings.profile},
            )
            mlflow.finalize_logged_model(model.model_id, "READY")
        return dg.MaterializeResult(
            metadata={**(result.metadata or {}), **_summary_metadata(summary, config_path), "reused": False,
                      "mlflow_run": dg.MetadataValue.url(url), "mlflow_model_id": model.model_id}
        )

    return _checkpoint


def checkpoint_asset_key(variant: str) -> dg.AssetKey:
    return dg.AssetKey(f"instructcv_{variant}_checkpoint")


def materialised_checkpoint(instance: dg.DagsterInstance, variant: str) -> dict:
    """The checkpoint the latest materialisation of ``instructcv_<variant>_checkpoint`` produced.

    Read from that materialisation's metadata (``checkpoint_path``, ``train_result``), so evaluation
    and the one-step fine-tunes load exactly what their upstream asset handed over and the lineage in the UI is the data flow
    (no mutable pointer file). Returns ``pipeline_dir``, ``identity`` (the folder and a hash of its
    training result), ``run_id`` (the training run) and ``asset``.
    """
    key = checkpoint_asset_key(variant)
    event = instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        raise FileNotFoundError(f"{key.to_user_string()} has never been materialised: materialise it before what "
                                f"starts from InstructCV-{variant.upper()}")
    metadata = event.asset_materialization.metadata
    missing = [k for k in ("checkpoint_path", "train_result") if k not in metadata]
    if missing:
        raise ValueError(f"the latest materialisation of {key.to_user_string()} (run {event.run_id}) has no "
                         f"{', '.join(missing)} metadata: re-materialise it")
    pipeline_dir, result = Path(metadata["checkpoint_path"].value), Path(metadata["train_result"].value)
    for path in (pipeline_dir, result):
        if not path.exists():
            raise FileNotFoundError(f"{path}: recorded by the latest materialisation of {key.to_user_string()} "
                                    f"(run {event.run_id}) but no longer on disk; re-materialise it")
    identity = f"{pipeline_dir}@{hashlib.sha256(result.read_bytes()).hexdigest()[:16]}"
    return {"pipeline_dir": str(pipeline_dir), "identity": identity, "run_id": event.run_id,
            "asset": key.to_user_string()}


def checkpoint_pointer(settings: InstructCVSettings, variant: str) -> Path:
    """A convenience file naming the checkpoint a variant's asset last materialised, for the command
    line (``instructcv predict --checkpoint data/<profile>/train/<variant>``). Evaluation does not read
    it: it takes the checkpoint from this asset's materialisation metadata (`assets.evaluate`)."""
    return settings.profile_dir / "train" / variant / "current.json"


def _write_pointer(settings: InstructCVSettings, variant: str, result_path: Path) -> None:
    from instructcv_core.data.records import atomic_write_text

    summary = json.loads(result_path.read_text())
    atomic_write_text(checkpoint_pointer(settings, variant), json.dumps(
        {"pipeline_dir": summary["pipeline_dir"], "train_result": str(result_path),
         "mlflow_run_id": summary["config"].get("mlflow_run_id")}, indent=1))


def _summary_metadata(summary: dict, config_path: Path) -> dict:
    """What evaluation reads from this asset's materialisation (``checkpoint_path``, ``train_result``)
    and what a reader of the UI wants to see."""
    result = Path(config_path).parent / "train_result.json"
    return {"checkpoint_path": dg.MetadataValue.path(summary["pipeline_dir"]),
            "train_result": dg.MetadataValue.path(str(result)), "steps": summary["steps"],
            "samples_per_second": summary["samples_per_second"], "final_loss": summary["final_loss"],
            "config_path": dg.MetadataValue.path(str(config_path))}


def _child_env() -> dict:
    """Environment of the training subprocess: offline hub access unless the user allowed it."""
    env = {"PYTHONUNBUFFERED": "1"}
    if "HF_HUB_OFFLINE" in os.environ:
        env["HF_HUB_OFFLINE"] = os.environ["HF_HUB_OFFLINE"]
    return env


instructcv_fp_checkpoint = checkpoint_asset("fp", fp_manifest)
instructcv_rp_checkpoint = checkpoint_asset("rp", rp_manifest)


def onestep_checkpoint_asset(variant: str, manifest_asset: dg.AssetsDefinition,
                             ip2p_checkpoint: dg.AssetsDefinition) -> dg.AssetsDefinition:
    """``instructcv_<variant>_onestep_checkpoint``: the variant's InstructPix2Pix checkpoint fine-tuned end to
    end for one deterministic sampling step (the ``train_onestep`` preset; `instructcv_core.training.step`)."""
    return checkpoint_asset(
        f"{variant}_onestep", manifest_asset, manifest_name=variant, start_from=ip2p_checkpoint, stage="train_onestep",
        description=f"InstructCV-{variant.upper()}, one-step: the {variant.upper()} checkpoint fine-tuned on its manifest "
        "for ONE deterministic DDIM step at t = T - 1 from Gaussian noise (Garcia et al. 2025: a task loss on the x0 "
        "that step predicts), saved as a StableDiffusionInstructPix2PixPipeline folder whose DDIM scheduler has "
        "trailing spacing, so one sampling step runs the model as trained.")


instructcv_fp_onestep_checkpoint = onestep_checkpoint_asset("fp", fp_manifest, instructcv_fp_checkpoint)
instructcv_rp_onestep_checkpoint = onestep_checkpoint_asset("rp", rp_manifest, instructcv_rp_checkpoint)
