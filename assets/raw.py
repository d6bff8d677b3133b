"""Raw-dataset stage (group `raw`): one asset per source dataset, and a catalogue logged to MLflow.

Each ``raw_<dataset>`` asset is the dataset as published, downloaded (or found locally), verified,
safely extracted and parsed into the common `ImageRecord` table. The work is done by
`instructcv_core.data.raw_stage`; these wrappers only read config and report metadata.
"""


import json
import warnings
from typing import Any, Optional

import dagster as dg
from pydantic import Field

from pipelines.resources import InstructCVSettings, MlflowTracking

# The datasets of the graph (kept here, not imported from instructcv_core.data.datasets, so that
# loading the definitions imports no reader code).
RAW_DATASETS: dict[str, str] = {
    "coco": "MS-COCO 2017 (detection; instances with polygons and crowd regions).",
    "ade20k": "ADE20K SceneParse150 (ADEChallengeData2016; semantic segmentation, 0 = other).",
    "pets": "Oxford-IIIT Pet (37 breeds, cat/dog species, trimaps).",
    "nyuv2": "NYU Depth v2 (labeled set with the official 795/654 split, and the BTS sync layout when present).",
    "voc": "PASCAL VOC 2012 (external test: segmentation with 255 = void, detection).",
    "sunrgbd": "SUN RGB-D (external depth test; bit-rotated depth PNGs, NYUv2 part excluded).",
    "fss1000": "FSS-1000 (external open-vocabulary segmentation; 10 images per class).",
    "imagenet_sub": "ImageNet subset (external classification; registration-only, Imagenette as the public alternative).",
}
QUARANTINE_WARN_FRACTION = 0.01


class RawDatasetConfig(dg.Config):
    """Where a source dataset comes from, when not from its published URLs."""

    archive_dir: Optional[str] = Field(
        default=None, description="Folder holding the already-downloaded archives (verified against the published checksums)."
    )
    extracted_dir: Optional[str] = Field(
        default=None, description="An already-extracted copy of the dataset (its root or the folder containing it)."
    )
    allow_download: bool = Field(default=True, description="Download missing files from the published URLs.")
    public_alternative: bool = Field(
        default=False, description="imagenet_sub only: use Imagenette (public) instead of registration-only ImageNet."
    )
    reader_options: dict[str, Any] = Field(
        default={}, description="Options of the dataset's reader (e.g. sunrgbd: exclude_nyu, depth_variant; nyuv2: include_sync)."
    )


def raw_dataset_asset(name: str, description: str) -> dg.AssetsDefinition:
    @dg.asset(
        name=f"raw_{name}",
        group_name="raw",
        kinds={"python", "parquet"},
        description=description,
        tags={"stage": "raw"},
    )
    def _raw(context: dg.AssetExecutionContext, config: RawDatasetConfig, settings: InstructCVSettings) -> dg.MaterializeResult:
        from instructcv_core.data.preview import png_markdown, sample_grid
        from instructcv_core.data.raw_stage import build_raw_dataset, dataset_dir, resolve_spec
        from instructcv_core.data.records import read_records

        target = dataset_dir(settings.data_dir, settings.profile, name)
        spec = resolve_spec(
            name, settings.profile, mirror_dir=settings.profile_dir / "mini_mirror", seed=settings.seed,
            mini_sizes=settings.mini_sizes.get(name), mirror_url=settings.mini_mirror_url,
            public_alternative=config.public_alternative, info=context.log.info,
        )
        result = build_raw_dataset(
            name, spec, target,
            archive_dir=_path(config.archive_dir), extracted_dir=_path(config.extracted_dir),
            allow_download=config.allow_download, retries=settings.download_retries,
            reader_options=config.reader_options, info=context.log.info, show_bar=settings.progress_bars,
            origin_override="mini" if settings.profile == "mini" and not config.extracted_dir else None,
            warn=context.log.warning,
        )
        records, root, _ = read_records(result.records_path)
        grid = sample_grid(records, root)
        grid_path = target / "sample_grid.png"
        grid.save(grid_path)
        if result.missing_optional:
            context.log.warning(f"raw_{name}: {result.status}")
        return dg.MaterializeResult(
            metadata={
                # "complete", or INCOMPLETE with each missing optional file and what it costs; the
                # results tables repeat it (`results_tables`)
                "status": result.status,
                "missing_optional_files": dg.MetadataValue.json(result.missing_optional),
                "records": result.n_records,
                "quarantined": result.n_quarantined,
                "warnings": dg.MetadataValue.json(result.warning_counts),  # per kind; each one in warnings.json
                "splits": dg.MetadataValue.md(_table(result.split_counts, "split", "images")),
                "categories": len(result.category_counts),
                "category_counts": dg.MetadataValue.md(_table(dict(list(result.category_counts.items())[:40]), "category", "images")),
                "bytes": sum(f["bytes"] for f in result.files),
                "files": dg.MetadataValue.json([{k: f.get(k) for k in ("filename", "url", "checksum", "sha256", "bytes", "reused")} for f in result.files]),
                "source_urls": dg.MetadataValue.md("\n".join(f"- {u}" for f in spec.files for u in f.urls) or "(local)"),
                "origin": result.origin,
                "reused_records": result.reused_records,
                "licence": dg.MetadataValue.text(spec.licence),
                "root": dg.MetadataValue.path(str(result.root)),
                "records_path": dg.MetadataValue.path(str(result.records_path)),
                "quarantine_report": dg.MetadataValue.path(str(result.quarantine_path)),
                "sample_grid": dg.MetadataValue.md(png_markdown(grid, f"{name} samples")),
                "sample_grid_path": dg.MetadataValue.path(str(grid_path)),
            }
        )

    @dg.asset_check(asset=_raw, name="records_readable", description="Records exist for every split and few images were quarantined.")
    def _check(settings: InstructCVSettings) -> dg.AssetCheckResult:
        from instructcv_core.data.raw_stage import dataset_dir

        target = dataset_dir(settings.data_dir, settings.profile, name)
        summary = json.loads((target / "summary.json").read_text())
        n, bad = summary["n_records"], summary["n_quarantined"]
        fraction = bad / max(1, n + bad)
        empty = [s for s, c in summary["split_counts"].items() if c == 0]
        return dg.AssetCheckResult(
            passed=n > 0 and not empty and fraction <= QUARANTINE_WARN_FRACTION,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"records": n, "quarantined": bad, "quarantined_fraction": round(fraction, 4),
                      "empty_splits": ", ".join(empty) or "none"},
        )

    return _raw, _check


def _path(value: Optional[str]):
    from pathlib import Path

    return Path(value).expanduser() if value else None


def _table(counts: dict, key: str, value: str) -> str:
    lines = [f"| {key} | {value} |", "|---|---:|"]
    lines += [f"| {k} | {v:,} |" for k, v in counts.items()]
    return "\n".join(lines)


_built = [raw_dataset_asset(name, description) for name, description in RAW_DATASETS.items()]
raw_assets = [a for a, _ in _built]
raw_checks = [c for _, c in _built]


@dg.asset(
    group_name="raw",
    deps=raw_assets,
    kinds={"mlflow"},
    description="Catalogue of every source dataset (records, splits, checksums), logged to MLflow as dataset inputs.",
    tags={"stage": "raw"},
)
def raw_catalog(context: dg.AssetExecutionContext, settings: InstructCVSettings, mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:
    import mlflow
    import pandas as pd

    from instructcv_core.data.raw_stage import dataset_dir
    from instructcv_core.data.records import atomic_write_text

    rows, summaries = [], {}
    for name in RAW_DATASETS:
        summary = json.loads((dataset_dir(settings.data_dir, settings.profile, name) / "summary.json").read_text())
        summaries[name] = summary
        rows.append({"dataset": name, "records": summary["n_records"], "quarantined": summary["n_quarantined"],
                     "categories": len(summary["category_counts"]), "origin": summary["origin"],
                     **{f"split:{k}": v for k, v in summary["split_counts"].items()}})
    table = pd.DataFrame(rows).fillna(0)
    catalog_path = settings.profile_dir / "raw" / "catalog.json"
    atomic_write_text(catalog_path, json.dumps(summaries, indent=1))

    with mlflow_tracking.start_run(context, settings, run_name=f"raw-datasets-{settings.profile}",
                                   tags={"stage": "raw"}) as (run, url):
        mlflow.log_params({"profile": settings.profile, "seed": settings.seed, "data_root": str(settings.data_dir)})
        for name, summary in summaries.items():
            mlflow.log_metric(f"raw/{name}/records", summary["n_records"])
            mlflow.log_metric(f"raw/{name}/quarantined", summary["n_quarantined"])
            records = pd.read_parquet(summary["records_path"], columns=["image_id", "split", "image_path", "width", "height"])
            with warnings.catch_warnings():
                # MLflow's hints about model schemas and its duplicate local-source registration
                warnings.filterwarnings("ignore", category=UserWarning, module="mlflow")
                dataset = mlflow.data.from_pandas(records, source=summary["records_path"], name=f"raw_{name}")
                mlflow.log_input(dataset, context="raw")
        mlflow.log_artifact(str(catalog_path), artifact_path="raw")
        mlflow.log_table(table, artifact_file="raw/catalog_table.json")
    return dg.MaterializeResult(
        metadata={
            "datasets": len(rows),
            "catalog": dg.MetadataValue.md(table.to_markdown(index=False)),
            "catalog_path": dg.MetadataValue.path(str(catalog_path)),
            "mlflow_run": dg.MetadataValue.url(url),
            "mlflow_run_id": run.info.run_id,
        }
    )
