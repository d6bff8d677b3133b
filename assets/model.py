"""Model stage (group `model`): the base model that instruction tuning starts from.

`paper`: Stable Diffusion v1.5 (hub id, local diffusers folder or single checkpoint file), checked and
recorded. `mini`: the pretrained mini base, the mini world's SD v1.5 (`instructcv_core.model.pretrain_mini`):
its versioned UNet, VAE and scheduler, checked against their sha256, assembled with the installed MiniLM
text encoder into a diffusers folder (or pretrained here with `rebuild: true`; or, with `pretrained: false`,
the from-scratch ablation: a random tiny base whose autoencoder is fitted on the manifest images). Its
metadata reports the VAE round-trip ceiling of each task's visual encoding.
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
    doc="The mini profile's tiny base: pretrained (versioned or rebuilt) or from scratch (unset: the profile's preset); ignored by the "
    "paper profile, which loads settings.base_model. Resolution and seed come from the settings.")


def base_model_dir(settings: InstructCVSettings) -> Path:
    return settings.profile_dir / "model" / "base"


def base_model_recipe(config: BaseModelAssetConfig, settings: InstructCVSettings) -> BaseModelConfig | None:
    """The mini base's `BaseModelConfig`: the profile's preset < run config < the settings' resolution and
    seed; None in the paper profile, which loads settings.base_model and ignores this config."""
    from instructcv_core.presets import resolve

    if settings.profile == "paper":
        return None
    return resolve(BaseModelConfig, settings.profile, "base_model", run_config_overrides(config),
                   image_size=settings.resolution_px, seed=settings.seed)


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
    "mini profile's pretrained tiny SD-shaped model), with the VAE round-trip ceiling "
    "of each task's visual encoding.",
)
def base_model(context: dg.AssetExecutionContext, config: BaseModelAssetConfig, settings: InstructCVSettings) -> dg.MaterializeResult:
    if settings.profile == "paper":
        from instructcv_core.model.loading import check_base_source

        check_base_source(settings.base_model_source, settings.allow_network)
        return dg.MaterializeResult(metadata={"source": settings.base_model_source, "profile": "paper",
                                              "allow_network": settings.allow_network})

    from instructcv_core.data.imagestore import ImageStore

    store = ImageStore(settings.profile_dir / "datasets" / "images")
    recipe = base_model_recipe(config, settings)
    target = base_model_dir(settings)
    if recipe.pretrained:
        source, source_digest = _pretrained_source(context, settings, recipe)
        made = {"pretrained": str(source)}
    else:
        import pandas as pd

        manifest = pd.read_parquet(settings.profile_dir / "datasets" / "fp_manifest.parquet",
                                   columns=["task", "input_digest", "target_digest"])
        source_digest = _digest_of(manifest)
    stamp = recipe.stamp(source_digest)
    stamp_path = target / "instructcv_base.json"
    if stamp_path.exists() and json.loads(stamp_path.read_text()).get("stamp") == stamp:
        saved = json.loads(stamp_path.read_text())
        context.log.info(f"base model unchanged: reusing {target}")
        return dg.MaterializeResult(metadata=_metadata(target, saved["made"], saved["report"], reused=True))

    from instructcv_core.data.records import atomic_write_text
    from instructcv_core.model.autoencoder import reconstruction_report
    from instructcv_core.model.loading import load_base

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".base-", dir=target.parent) as tmp:
        if recipe.pretrained:
            from instructcv_core.model.pretrain_mini import assemble_base

            folder = assemble_base(source, Path(tmp) / "base")
            components = load_base(str(folder))
        else:
            folder, components, made = _from_scratch(context, settings, recipe, store, manifest, Path(tmp) / "base")
        report = reconstruction_report(components.vae, _held_out_by_task(settings, store))
        atomic_write_text(folder / "instructcv_base.json", json.dumps({"stamp": stamp, "made": made, "report": report}, indent=1))
        if target.exists():
            shutil.rmtree(target)
        Path(folder).rename(target)
    return dg.MaterializeResult(metadata=_metadata(target, made, report, reused=False))


def _pretrained_source(context, settings: InstructCVSettings, recipe: BaseModelConfig) -> tuple[Path, str]:
    """The pretrained mini base folder (the versioned one, or rebuilt under the data root), checked
    against its SHA256SUMS and against the shape knobs; returns (folder, digest of its SHA256SUMS)."""
    import dataclasses

    from instructcv_core.model.pretrain_mini import VERSIONED_BASE, PretrainConfig, check_shape, pretrain, verify_checksums

    folder = VERSIONED_BASE
    if recipe.rebuild:
        pretrain_config = PretrainConfig(image_size=recipe.image_size, seed=recipe.seed)
        folder = settings.profile_dir / "model" / "pretrained"
        record = folder / "pretrain_record.json"
        if not (record.exists() and json.loads(record.read_text())["config"] == dataclasses.asdict(pretrain_config)):
            context.log.info(f"pretraining the mini base into {folder} (fixed steps: {pretrain_config})")
            pretrain(pretrain_config, folder, workers=2, command="base_model: {rebuild: true}", log=context.log.info)
    digest = verify_checksums(folder)
    check_shape(folder, recipe.tiny())
    return folder, digest


def _from_scratch(context, settings: InstructCVSettings, recipe: BaseModelConfig, store, manifest, out_dir: Path):
    """The from-scratch ablation: a random tiny base whose autoencoder is fitted on the manifest images."""
    import numpy as np

    from instructcv_core.model.autoencoder import fit_autoencoder
    from instructcv_core.model.loading import load_base
    from instructcv_core.model.tiny_base import build_tiny_base

    # distinct images: fitting on the rows' images instead (colour blocks as often as rows use them)
    # measured a worse round-trip ceiling on every task (docs/benchmarks.md, "The mini recipe")
    digests = sorted(set(manifest["input_digest"]) | set(manifest["target_digest"]))
    step = max(1, len(digests) // recipe.fit_images)
    images = np.stack([store.get(d) for d in digests[::step]])
    context.log.info(f"fitting the tiny autoencoder on {len(images)} images for {recipe.fit_steps} steps")
    folder = build_tiny_base(recipe.tiny(), out_dir)
    components = load_base(str(folder))
    fit = fit_autoencoder(components.vae, images, steps=recipe.fit_steps, seed=settings.seed, log=context.log.info)
    components.vae.save_pretrained(folder / "vae", safe_serialization=True)
    return folder, components, {"autoencoder_fit": fit}


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


def _metadata(target: Path, made: dict, report: dict, reused: bool) -> dict:
    import pandas as pd

    table = pd.DataFrame([{"task": task, **{k: round(v, 4) if isinstance(v, float) else v for k, v in values.items()}}
                          for task, values in report.items()])
    return {
        "path": dg.MetadataValue.path(str(target)),
        "made": dg.MetadataValue.json(made),
        "reconstruction_ceiling": dg.MetadataValue.md(table.to_markdown(index=False)),
        "reused": reused,
    }
