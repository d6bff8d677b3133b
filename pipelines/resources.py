"""Resources shared by the assets: the project settings and MLflow tracking."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Literal, Optional

import dagster as dg
from pydantic import Field, field_validator

from pipelines.project import PROJECT_ROOT


# Defaults that follow the profile. They live here rather than only in configs/mini.yaml because a
# run config given with `-c` replaces the job's embedded config (the job has partitioned assets).
PROFILE_RESOLUTION = {"mini": 64, "paper": 256}
DEFAULT_BASE_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"


class InstructCVSettings(dg.ConfigurableResource):
    """What many assets share: the profile, where data lives, the seed and the training resolution.

    ``profile`` picks where raw data comes from (and, later, which base model loads): `mini` is the
    bundled mini-benchmark that runs anywhere in minutes; `paper` is the full reproduction on the
    real datasets. The asset graph is the same for both.
    """

    profile: Literal["mini", "paper"] = Field(default="mini", description="`mini` (bundled benchmark) or `paper` (real datasets).")
    data_root: str = Field(default="data", description="Root folder of every artefact; relative paths are taken from the project root.")
    seed: int = Field(default=0, description="Global seed (mini-benchmark content, sampling, training).")
    resolution: Optional[int] = Field(
        default=None,
        description="Square training/inference resolution in pixels (multiple of 64); unset = the profile's (mini 64, paper 256).",
    )
    mini_mirror_url: Optional[str] = Field(
        default=None,
        description="Where the mini-benchmark archives are fetched from (a mirror with index.json). "
        "Unset: they are built locally and fetched from that folder.",
    )
    mini_sizes: dict[str, dict[str, int]] = Field(
        default={}, description="Mini-benchmark image counts per dataset and split, overriding the defaults."
    )
    base_model: Optional[str] = Field(
        default=None,
        description="paper profile: SD v1.5 as a hub id, a local diffusers folder or a .safetensors/.ckpt file "
        "(unset = stable-diffusion-v1-5/stable-diffusion-v1-5). The mini profile builds its own tiny base.",
    )
    released_model: Optional[str] = Field(
        default=None,
        description="The authors' released InstructCV weights evaluated by eval_<benchmark>_released: a hub id, a local "
        "diffusers StableDiffusionInstructPix2PixPipeline folder or a single .safetensors/.ckpt file (unset = "
        "alaa-lab/InstructCV).",
    )
    released_revision: Optional[str] = Field(
        default=None, description="Hub revision (branch, tag or commit) of a hub-id released_model; unset = main.")
    released_single_file_config: Optional[str] = Field(
        default=None,
        description="Component configs of a single-file released_model: a local InstructPix2Pix diffusers folder or "
        "a hub id (unset = timbrooks/instruct-pix2pix, which must then be cached unless allow_network).",
    )
    allow_network: bool = Field(default=False, description="Let model loading download from the Hugging Face hub.")
    require_gpu: Optional[bool] = Field(default=None, description="Fail early without a CUDA GPU; unset = required in the paper profile.")
    download_retries: int = Field(default=5, description="Retries per URL for transient download errors.")
    progress_bars: bool = Field(default=True, description="Show tqdm progress bars on the console.")

    @field_validator("seed")
    @classmethod
    def _seed_non_negative(cls, value: int) -> int:
        if value < 0:
            raise ValueError(f"settings.seed must be >= 0, got {value}")
        return value

    @field_validator("resolution")
    @classmethod
    def _resolution_multiple_of_64(cls, value: Optional[int]) -> Optional[int]:
        if value is not None and (value < 64 or value % 64):
            raise ValueError(f"settings.resolution must be a positive multiple of 64 (VAE x8, UNet x8), got {value}")
        return value

    @field_validator("download_retries")
    @classmethod
    def _retries_non_negative(cls, value: int) -> int:
        if value < 0:
            raise ValueError(f"settings.download_retries must be >= 0, got {value}")
        return value

    @field_validator("mini_sizes")
    @classmethod
    def _known_datasets(cls, value: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        from instructcv_core.data.datasets import DATASETS

        unknown = sorted(set(value) - set(DATASETS))
        if unknown:
            raise ValueError(f"settings.mini_sizes: unknown dataset(s) {', '.join(unknown)} (known: {', '.join(DATASETS)})")
        return value

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Fail every step of a run early, with a clear message, when what the run loads is missing: the
        paper profile's base model and GPU, and the released weights in a run that evaluates them."""
        from instructcv_core.preflight import PreflightError, base_model_problem, gpu_problem, released_model_problem

        needs = run_needs(getattr(context, "run", None))
        problems = []
        if "released" in needs:
            problems.append(released_model_problem(self.released_model_source, self.allow_network,
                                                   self.released_revision, self.released_single_file_config))
        if self.profile == "paper":
            if "base" in needs:
                problems.append(base_model_problem(self.base_model_source, self.allow_network))
            if self.require_gpu is not False:
                problems.append(gpu_problem())
        problems = [p for p in problems if p]
        if problems:
            raise PreflightError(f"the {self.profile} profile cannot run:\n- " + "\n- ".join(problems))

    @property
    def base_model_source(self) -> str:
        return self.base_model or DEFAULT_BASE_MODEL

    @property
    def released_model_source(self) -> str:
        """The released weights evaluated by `eval_<benchmark>_released` (default: the authors' hub id)."""
        from instructcv_core.model.released import RELEASED_MODEL

        return self.released_model or RELEASED_MODEL

    @property
    def data_dir(self) -> Path:
        """The data root as an absolute path."""
        root = Path(self.data_root).expanduser()
        return root if root.is_absolute() else PROJECT_ROOT / root

    @property
    def resolution_px(self) -> int:
        """The training resolution: as configured, else the profile's (64 for mini, 256 as the paper)."""
        return self.resolution or PROFILE_RESOLUTION[self.profile]

    @property
    def profile_dir(self) -> Path:
        """Everything produced under this profile (mini and paper artefacts never mix)."""
        return self.data_dir / self.profile


#: The job that evaluates the released weights without training (`pipelines/jobs.py`).
RELEASED_JOB = "released_evaluation"


def run_needs(run) -> set[str]:
    """Which models a run loads, for the preflight: ``"base"`` (SD v1.5: the base model, training, the
    untrained reference) and/or ``"released"`` (the released weights).

    `released_evaluation` needs only the released weights. Any other run needs the base, as it always did,
    and also the released weights when it materialises a released evaluation asset; a run of released
    evaluation assets alone (or with the tables: a re-run from the UI) needs no base.
    """
    if run is None:
        return {"base"}
    if run.job_name == RELEASED_JOB:
        return {"released"}
    names = {key.to_user_string() for key in (run.asset_selection or ())}
    released = {n for n in names if n.startswith("eval_") and n.endswith("_released")}
    if not released:
        return {"base"}
    return {"released"} if names <= released | {"table1", "table2", "table3"} else {"base", "released"}


class MlflowTracking(dg.ConfigurableResource):
    """MLflow tracking for assets that log: one experiment, runs tagged with the Dagster run id.

    ``tracking_uri`` unset means an absolute sqlite store under the data root
    (``<data_root>/mlruns/mlflow.db``, artifacts in ``<data_root>/mlruns/artifacts``); set it to a
    tracking server URL (``http://host:5000``) to log there instead.
    """

    tracking_uri: Optional[str] = Field(default=None, description="MLflow tracking URI; unset = sqlite under the data root.")
    experiment: str = Field(default="instructcv", description="The one experiment every run is logged to.")
    artifact_location: Optional[str] = Field(default=None, description="Artifact root for a new experiment; unset = <data_root>/mlruns/artifacts.")
    ui_url: str = Field(default="http://127.0.0.1:5000", description="Where `mlflow ui` serves a local store (for run links).")

    def resolved_uri(self, settings: InstructCVSettings) -> str:
        from instructcv_core.tracking import default_tracking_uri

        return self.tracking_uri or default_tracking_uri(settings.data_dir)

    @contextmanager
    def start_run(
        self, context: dg.AssetExecutionContext, settings: InstructCVSettings, run_name: str,
        tags: dict[str, str] | None = None,
    ) -> Iterator[tuple[object, str]]:
        """An MLflow run tagged with the Dagster run id, asset and profile; yields (run, run_url)."""
        from instructcv_core import tracking

        uri = self.resolved_uri(settings)
        artifacts = self.artifact_location or tracking.default_artifact_location(settings.data_dir)
        all_tags = {
            "dagster_run_id": context.run.run_id,
            "dagster_job": context.run.job_name,
            "dagster_asset": ",".join(sorted(k.to_user_string() for k in context.selected_asset_keys)),
            "profile": settings.profile,
            **(tags or {}),
        }
        with tracking.mlflow_run(uri, self.experiment, artifacts, run_name, all_tags) as run:
            url = tracking.run_url(uri, run.info.experiment_id, run.info.run_id, self.ui_url)
            yield run, url
