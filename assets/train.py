"""Training stage (group `train`): the FP and RP checkpoints, trained in a subprocess via Dagster Pipes.

Training runs as `accelerate launch ... -m instructcv_core.train --config <resolved.yaml>`, started by
`PipesSubprocessClient`, so one GPU, several GPUs or several nodes is a config change (world size and
machines below); only rank 0 reports back to Dagster and logs to MLflow. The assets hold the `gpu`
pool: the instance runs one such step at a time.
"""

import json
import os
import sys
from pathlib import Path
from typing import Optional

import dagster as dg
from pydantic import Field

from assets.datasets import fp_manifest, rp_manifest
from assets.model import base_model, resolve_base_model
from pipelines.resources import InstructCVSettings, MlflowTracking

# Defaults that follow the profile (a `-c` run config replaces the job's embedded one, so they
# cannot live only in configs/mini.yaml). Paper: the official recipe (lr 1e-4 constant, batch 128
# per device, EMA 0.9999; bf16 and gradient checkpointing on GPU). Mini: minutes on 2 CPU cores.
PROFILE_TRAIN_DEFAULTS = {
    # checkpointing_steps 12: a kill loses at most ~30 s (2.3 s per step measured on 2 CPU cores, docs/recovery.md)
    "mini": {"max_steps": 100_000, "max_seconds": 180.0, "train_batch_size": 32, "learning_rate": 5e-4,
             "checkpointing_steps": 12, "mixed_precision": "no", "gradient_checkpointing": False},
    "paper": {"max_steps": 20_000, "max_seconds": None, "train_batch_size": 128, "learning_rate": 1e-4,
              "checkpointing_steps": 1000, "mixed_precision": "bf16", "gradient_checkpointing": True},
}


class TrainAssetConfig(dg.Config):
    """Training knobs; unset values take the profile's defaults (PROFILE_TRAIN_DEFAULTS)."""

    max_steps: Optional[int] = Field(default=None, description="Optimisation steps (unset: profile default).")
    max_seconds: Optional[float] = Field(default=None, description="Wall-clock budget; training stops at whichever comes first.")
    train_batch_size: Optional[int] = Field(default=None, description="Per-device batch size.")
    gradient_accumulation_steps: int = Field(default=1, description="Gradient accumulation steps.")
    learning_rate: Optional[float] = Field(default=None, description="Constant AdamW learning rate.")
    checkpointing_steps: Optional[int] = Field(default=None, description="Save an accelerate state every N steps (resumable).")
    mixed_precision: Optional[str] = Field(default=None, description="no | fp16 | bf16.")
    gradient_checkpointing: Optional[bool] = Field(default=None, description="Trade compute for memory (GPU).")
    cache_latents: bool = Field(default=True, description="Encode every input/target once (VAE encoding dominates at small resolutions).")
    ema_decay: float = Field(default=0.9999, description="EMA decay of the UNet weights (with warm-up).")
    num_processes: int = Field(default=1, description="accelerate world size on this machine (GPUs).")
    num_machines: int = Field(default=1, description="Nodes (multi-node also needs machine_rank and main_process_ip).")
    machine_rank: int = Field(default=0, description="This node's rank.")
    main_process_ip: Optional[str] = Field(default=None, description="Rank-0 node address for multi-node training.")
    sample_every: int = Field(default=0, description="Log sample predictions on a fixed mini-batch every N steps (0 = off).")


def run_dir(settings: InstructCVSettings, variant: str, train_config: dict) -> Path:
    """Where one training configuration lives: keyed by a digest of the config and the manifest's bytes.

    The same configuration resumes from its own checkpoints (a killed run continues); a changed
    config or manifest starts a fresh folder instead of refusing to resume an incompatible state.
    """
    import hashlib

    digest = hashlib.sha256(json.dumps(train_config, sort_keys=True).encode())
    with open(train_config["manifest"], "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return settings.profile_dir / "train" / variant / digest.hexdigest()[:12]


def resolved_train_config(config: TrainAssetConfig, settings: InstructCVSettings, variant: str) -> dict:
    """The full `TrainConfig` of a variant as a plain dict (written to YAML for the subprocess)."""
    defaults = PROFILE_TRAIN_DEFAULTS[settings.profile]
    pick = lambda key: defaults[key] if getattr(config, key) is None else getattr(config, key)  # noqa: E731
    datasets = settings.profile_dir / "datasets"
    return {
        "base_model": resolve_base_model(settings),
        "manifest": str(datasets / f"{variant}_manifest.parquet"),
        "image_store": str(datasets / "images"),
        "resolution": settings.resolution_px,
        "train_batch_size": pick("train_batch_size"),
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "learning_rate": pick("learning_rate"),
        "max_steps": pick("max_steps"),
        "max_seconds": pick("max_seconds"),
        "checkpointing_steps": pick("checkpointing_steps"),
        "mixed_precision": pick("mixed_precision"),
        "gradient_checkpointing": pick("gradient_checkpointing"),
        "cache_latents": config.cache_latents,
        "ema_decay": config.ema_decay,
        "seed": settings.seed,
        "allow_network": settings.allow_network,
        "sample_every": config.sample_every,
    }


def launch_command(config: TrainAssetConfig, config_path: Path, mixed_precision: str) -> list[str]:
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
    return command + ["-m", "instructcv_core.train", "--config", str(config_path)]


def checkpoint_asset(variant: str, manifest_asset: dg.AssetsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        name=f"instructcv_{variant}_checkpoint",
        group_name="train",
        deps=[manifest_asset, base_model],
        pool="gpu",
        kinds={"pytorch", "accelerate", "mlflow"},
        description=f"InstructCV-{variant.upper()}: the base model instruction-tuned on the {variant.upper()} "
        "manifest (InstructPix2Pix recipe: 8-channel conv_in, text/image conditioning dropout, EMA), "
        "saved as a diffusers StableDiffusionInstructPix2PixPipeline folder.",
    )
    def _checkpoint(context: dg.AssetExecutionContext, config: TrainAssetConfig, settings: InstructCVSettings,
                    mlflow_tracking: MlflowTracking, pipes_subprocess_client: dg.PipesSubprocessClient) -> dg.MaterializeResult:
        import mlflow
        import pandas as pd
        import yaml

        from instructcv_core.data.records import atomic_write_text

        train_config = resolved_train_config(config, settings, variant)
        output = run_dir(settings, variant, train_config)
        train_config["output_dir"] = str(output)
        output.mkdir(parents=True, exist_ok=True)
        config_path = output / "train_config.yaml"
        finished = output / "train_result.json"
        if finished.exists() and Path(json.loads(finished.read_text())["pipeline_dir"]).exists():
            # Idempotent: this exact config and manifest were trained to completion already (a
            # time-bounded run would otherwise train further on every re-materialisation).
            summary = json.loads(finished.read_text())
            context.log.info(f"{variant}: already trained with this config and manifest: {summary['pipeline_dir']}")
            _write_pointer(settings, variant, finished)
            return dg.MaterializeResult(metadata={**_summary_metadata(summary, config_path), "reused": True})

        with mlflow_tracking.start_run(context, settings, run_name=f"train-{variant}-{settings.profile}",
                                       tags={"stage": "train", "variant": variant}) as (run, url):
            train_config["mlflow_tracking_uri"] = mlflow_tracking.resolved_uri(settings)
            train_config["mlflow_run_id"] = run.info.run_id
            atomic_write_text(config_path, yaml.safe_dump(train_config, sort_keys=True))
            mlflow.log_params({k: v for k, v in train_config.items() if not k.startswith("mlflow")})
            mlflow.log_dict(train_config, "train_config.yaml")
            manifest = pd.read_parquet(train_config["manifest"], columns=["pair_id", "task", "dataset", "instruction", "input_digest", "target_digest"])
            mlflow.log_input(mlflow.data.from_pandas(manifest, source=train_config["manifest"], name=variant), context="training")

            command = launch_command(config, config_path, train_config["mixed_precision"])
            context.log.info("launching: " + " ".join(command))
            completed = pipes_subprocess_client.run(command=command, context=context, env=_child_env())
            result = completed.get_materialize_result()

            summary = json.loads((output / "train_result.json").read_text())
            _write_pointer(settings, variant, output / "train_result.json")
            model = mlflow.initialize_logged_model(
                name=f"instructcv-{variant}", source_run_id=run.info.run_id,
                params={"base_model": train_config["base_model"], "steps": str(summary["steps"])},
                tags={"checkpoint_path": summary["pipeline_dir"], "variant": variant, "profile": settings.profile},
            )
            mlflow.finalize_logged_model(model.model_id, "READY")
        return dg.MaterializeResult(
            metadata={**(result.metadata or {}), **_summary_metadata(summary, config_path), "reused": False,
                      "mlflow_run": dg.MetadataValue.url(url), "mlflow_model_id": model.model_id}
        )

    return _checkpoint


def checkpoint_pointer(settings: InstructCVSettings, variant: str) -> Path:
    """The file naming the checkpoint a variant's asset last materialised (what evaluation loads)."""
    return settings.profile_dir / "train" / variant / "current.json"


def _write_pointer(settings: InstructCVSettings, variant: str, result_path: Path) -> None:
    from instructcv_core.data.records import atomic_write_text

    summary = json.loads(result_path.read_text())
    atomic_write_text(checkpoint_pointer(settings, variant), json.dumps(
        {"pipeline_dir": summary["pipeline_dir"], "train_result": str(result_path),
         "mlflow_run_id": summary["config"].get("mlflow_run_id")}, indent=1))


def _summary_metadata(summary: dict, config_path: Path) -> dict:
    return {"checkpoint_path": dg.MetadataValue.path(summary["pipeline_dir"]), "steps": summary["steps"],
            "samples_per_second": summary["samples_per_second"], "final_loss": summary["final_loss"],
            "stopped_by": summary.get("stopped_by", ""), "config_path": dg.MetadataValue.path(str(config_path))}


def _child_env() -> dict:
    """Environment of the training subprocess: offline hub access unless the user allowed it."""
    env = {"PYTHONUNBUFFERED": "1"}
    if "HF_HUB_OFFLINE" in os.environ:
        env["HF_HUB_OFFLINE"] = os.environ["HF_HUB_OFFLINE"]
    return env


instructcv_fp_checkpoint = checkpoint_asset("fp", fp_manifest)
instructcv_rp_checkpoint = checkpoint_asset("rp", rp_manifest)
