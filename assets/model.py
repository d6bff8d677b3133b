"""Model stage (group `model`): the base model that instruction tuning starts from.

`paper`: Stable Diffusion v1.5 (hub id, local diffusers folder or single checkpoint file), checked and
recorded. `mini`: a tiny SD-shaped model built from config in the real diffusers layout, whose
autoencoder is first fitted on mini-benchmark inputs and targets (a random VAE cannot reconstruct
images); its metadata reports the VAE round-trip ceiling of each task's visual encoding.
"""

import json
import shutil
import tempfile
from pathlib import Path

import dagster as dg

from assets.datasets import fp_manifest, test_manifests
from instructcv_core.model.config import BaseModelConfig
from pipelines.config import run_config_class, run_config_overrides
from pipelines.resources import InstructCVSettings


BaseModelAssetConfig = run_config_class(
    BaseModelConfig, "BaseModelAssetConfig", exclude=("image_size", "seed"),
    doc="The mini profile's tiny base and its autoencoder fit (unset: the profile's preset); ignored by the "
    "paper profile, which loads settings.base_model. Resolution and seed come from the settings.")


def base_model_dir(settings: InstructCVSettings) -> Path:
    return settings.profile_dir / "model" / "base"


def resolve_base_model(settings: InstructCVSettings) -> str:
    """What training loads: the paper profile's SD v1.5 source, or the mini profile's built folder."""
    if settings.profile == "paper":
        return settings.base_model_source
    return str(base_model_dir(settings))


@dg.asset(
    group_name="model",
    deps=[fp_manifest, test_manifests],
    kinds={"pytorch", "diffusers"},
    description="The base text-to-image model that instruction tuning starts from (SD v1.5, or the "
    "mini profile's tiny SD-shaped model with a fitted autoencoder), with the VAE round-trip ceiling "
    "of each task's visual encoding.",
)
def base_model(context: dg.AssetExecutionContext, config: BaseModelAssetConfig, settings: InstructCVSettings) -> dg.MaterializeResult:
    if settings.profile == "paper":
        from instructcv_core.model.loading import check_base_source

        check_base_source(settings.base_model_source, settings.allow_network)
        return dg.MaterializeResult(metadata={"source": settings.base_model_source, "profile": "paper",
                                              "allow_network": settings.allow_network})

    import numpy as np
    import pandas as pd

    from instructcv_core.data.imagestore import ImageStore
    from instructcv_core.data.records import atomic_write_text
    from instructcv_core.model.autoencoder import fit_autoencoder, reconstruction_report
    from instructcv_core.model.loading import load_base
    from instructcv_core.model.tiny_base import build_tiny_base
    from instructcv_core.presets import resolve

    datasets = settings.profile_dir / "datasets"
    store = ImageStore(datasets / "images")
    manifest = pd.read_parquet(datasets / "fp_manifest.parquet", columns=["task", "input_digest", "target_digest"])
    recipe = resolve(BaseModelConfig, settings.profile, "base_model", run_config_overrides(config),
                     image_size=settings.resolution_px, seed=settings.seed)
    stamp = recipe.stamp(_digest_of(manifest))
    target = base_model_dir(settings)
    stamp_path = target / "instructcv_base.json"
    if stamp_path.exists() and json.loads(stamp_path.read_text()).get("stamp") == stamp:
        saved = json.loads(stamp_path.read_text())
        context.log.info(f"base model unchanged: reusing {target}")
        return dg.MaterializeResult(metadata=_metadata(target, saved["fit"], saved["report"], reused=True))

    # distinct images: fitting on the rows' images instead (colour blocks as often as rows use them)
    # measured a worse round-trip ceiling on every task (docs/benchmarks.md, "The mini recipe")
    digests = sorted(set(manifest["input_digest"]) | set(manifest["target_digest"]))
    step = max(1, len(digests) // recipe.fit_images)
    images = np.stack([store.get(d) for d in digests[::step]])
    context.log.info(f"fitting the tiny autoencoder on {len(images)} images for {recipe.fit_steps} steps")

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".base-", dir=target.parent) as tmp:
        folder = build_tiny_base(recipe.tiny(), Path(tmp) / "base")
        components = load_base(str(folder))
        fit = fit_autoencoder(components.vae, images, steps=recipe.fit_steps, seed=settings.seed, log=context.log.info)
        components.vae.save_pretrained(folder / "vae", safe_serialization=True)
        report = reconstruction_report(components.vae, _held_out_by_task(settings, store))
        atomic_write_text(folder / "instructcv_base.json", json.dumps({"stamp": stamp, "fit": fit, "report": report}, indent=1))
        if target.exists():
            shutil.rmtree(target)
        Path(folder).rename(target)
    return dg.MaterializeResult(metadata=_metadata(target, fit, report, reused=False))


def _held_out_by_task(settings: InstructCVSettings, store) -> dict:
    """Targets of the in-domain test benchmarks, per task: held-out images for the VAE ceiling."""
    import numpy as np
    import pandas as pd

    benchmarks = {"segmentation": "ade20k", "detection": "coco", "depth": "nyuv2", "classification": "pets"}
    out = {}
    for task, benchmark in benchmarks.items():
        rows = pd.read_parquet(settings.profile_dir / "datasets" / "test" / f"{benchmark}.parquet", columns=["target_digest"])
        out[task] = np.stack([store.get(d) for d in rows["target_digest"].iloc[:64]])
    return out


def _digest_of(frame) -> str:
    import hashlib

    return hashlib.sha256("".join(sorted(frame["input_digest"]) + sorted(frame["target_digest"])).encode()).hexdigest()


def _metadata(target: Path, fit: dict, report: dict, reused: bool) -> dict:
    import pandas as pd

    table = pd.DataFrame([{"task": task, **{k: round(v, 4) if isinstance(v, float) else v for k, v in values.items()}}
                          for task, values in report.items()])
    return {
        "path": dg.MetadataValue.path(str(target)),
        "autoencoder_fit": dg.MetadataValue.json(fit),
        "reconstruction_ceiling": dg.MetadataValue.md(table.to_markdown(index=False)),
        "reused": reused,
    }
