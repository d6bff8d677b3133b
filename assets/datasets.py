"""Dataset-construction stage (group `datasets`): encoded pairs (sharded), FP/RP and test manifests.

`encoded_pairs` turns raw records into (input, target) pairs with their visual targets, one shard
per partition; `full_reproduction` builds every shard in one step (single-run backfill policy) with
a process pool inside it, and one failed shard can be re-materialised alone from the UI. The
manifest assets attach instructions and log the datasets to MLflow.
"""

import json
import warnings
from pathlib import Path

import dagster as dg
from pydantic import Field

from assets.raw import RAW_DATASETS, raw_assets
from instructcv_core.construction.config import BuildConfig
from pipelines.config import run_config_class, run_config_overrides
from pipelines.resources import InstructCVSettings, MlflowTracking

# `backfill_policy` is marked beta in Dagster 1.13; it is the documented way to build all shards in one run.
warnings.filterwarnings("ignore", category=dg.BetaWarning, message=".*backfill_policy.*")

N_SHARDS = 4
SHARDS = dg.StaticPartitionsDefinition([f"{i:02d}" for i in range(N_SHARDS)])
# One run builds every requested shard (a process pool inside the step); at scale, switch to
# BackfillPolicy.multi_run(k) and launch backfills from the UI (needs the daemon).
SHARD_BACKFILL = dg.BackfillPolicy.single_run()


class PairBuildExecution(dg.Config):
    """How the pair-building step runs (not part of the pairs' identity)."""

    workers: int = Field(default=2, ge=1, description="Processes building pairs inside the step.")


# How targets are made: the knobs of `BuildConfig` (declared once, there); resolution and seed come from
# the settings, the profiles' values from `instructcv_core.presets` (stage "build").
DatasetBuildConfig = run_config_class(
    BuildConfig, "DatasetBuildConfig", exclude=("resolution", "seed"), base=PairBuildExecution,
    doc="How visual targets are made (changes the pairs); unset knobs take the profile's preset.")


def _datasets_dir(settings: InstructCVSettings) -> Path:
    return settings.profile_dir / "datasets"


def build_config(config: DatasetBuildConfig, settings: InstructCVSettings) -> BuildConfig:
    """The core `BuildConfig`: dataclass defaults < profile preset < run config < settings."""
    from instructcv_core.presets import resolve

    return resolve(BuildConfig, settings.profile, "build", run_config_overrides(config),
                   resolution=settings.resolution_px, seed=settings.seed)


def _sources(settings: InstructCVSettings) -> dict:
    """Each raw dataset's (records, root, class names), from the raw stage's outputs."""
    from instructcv_core.data.raw_stage import dataset_dir
    from instructcv_core.data.records import read_records

    sources = {}
    for name in RAW_DATASETS:
        records_path = dataset_dir(settings.data_dir, settings.profile, name) / "records.parquet"
        if not records_path.exists():
            raise FileNotFoundError(f"{records_path}: missing; materialise raw_{name} first")
        records, root, categories = read_records(records_path)
        sources[name] = (records, root, [c.name for c in categories])
    return sources


@dg.asset(
    group_name="datasets",
    deps=raw_assets,
    partitions_def=SHARDS,
    backfill_policy=SHARD_BACKFILL,
    kinds={"python", "parquet"},
    description="Training and test (input, target) pairs of all four tasks, with their visual targets, "
    "pre-resized to the training resolution and stored content-addressed; one Parquet file per shard.",
)
def encoded_pairs(context: dg.AssetExecutionContext, config: DatasetBuildConfig, settings: InstructCVSettings) -> dg.MaterializeResult:
    from instructcv_core.construction.manifest import PAIR_SCHEMA, write_table
    from instructcv_core.construction.pairs import build_units, plan_units, shard_of
    from instructcv_core.data.records import atomic_write_text

    build = build_config(config, settings)
    out = _datasets_dir(settings)
    units = plan_units(_sources(settings))
    shards = sorted(context.partition_keys)
    summary = {}
    for shard in shards:
        mine = [u for u in units if shard_of(u.record.dataset, u.record.image_id, N_SHARDS) == int(shard)]
        context.log.info(f"shard {shard}: building {len(mine)} work units with {config.workers} processes")
        result = build_units(mine, build, out / "images", workers=config.workers)
        write_table(result.rows, out / "pairs" / f"shard-{shard}.parquet", PAIR_SCHEMA,
                    metadata={"build_config": build.__dict__, "shard": shard})
        atomic_write_text(out / "pairs" / f"quarantine-{shard}.json",
                          json.dumps([q.__dict__ for q in result.quarantine], indent=1))
        summary[shard] = {"units": len(mine), "pairs": len(result.rows), "quarantined": len(result.quarantine)}
        context.log.info(f"shard {shard}: {len(result.rows)} pairs, {len(result.quarantine)} quarantined")
    return dg.MaterializeResult(
        metadata={
            "shards": dg.MetadataValue.json(summary),
            "pairs": sum(s["pairs"] for s in summary.values()),
            "quarantined": sum(s["quarantined"] for s in summary.values()),
            "pairs_dir": dg.MetadataValue.path(str(out / "pairs")),
            "image_store": dg.MetadataValue.path(str(out / "images")),
        }
    )


def _all_pairs(settings: InstructCVSettings):
    from instructcv_core.construction.manifest import read_pairs

    paths = [_datasets_dir(settings) / "pairs" / f"shard-{k}.parquet" for k in SHARDS.get_partition_keys()]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"missing pair shards: {', '.join(missing)}; materialise encoded_pairs for every shard")
    return read_pairs(paths)


def _quarantine(settings: InstructCVSettings) -> list[dict]:
    entries = []
    for key in SHARDS.get_partition_keys():
        path = _datasets_dir(settings) / "pairs" / f"quarantine-{key}.json"
        if path.exists():
            entries += json.loads(path.read_text())
    return entries


def _manifest_metadata(manifest, path: Path, settings: InstructCVSettings, url: str, run_id: str) -> dict:
    from instructcv_core.construction.manifest import counts_table, instruction_diversity
    from instructcv_core.data.preview import manifest_grid, png_markdown

    grid = manifest_grid(manifest, _datasets_dir(settings) / "images")
    grid_path = path.with_suffix(".png")
    grid.save(grid_path)
    return {
        "path": dg.MetadataValue.path(str(path)),
        "rows": len(manifest),
        "counts": dg.MetadataValue.md(counts_table(manifest).to_markdown(index=False)),
        "instruction_diversity": dg.MetadataValue.json(instruction_diversity(manifest)),
        "quarantined_sources": len(_quarantine(settings)),
        "sample_grid": dg.MetadataValue.md(png_markdown(grid, "input | target | instruction")),
        "sample_grid_path": dg.MetadataValue.path(str(grid_path)),
        "mlflow_run": dg.MetadataValue.url(url),
        "mlflow_run_id": run_id,
    }


def _log_manifest(mlflow_tracking, context, settings, manifest, path: Path, name: str, extra: dict):
    import warnings

    import mlflow

    from instructcv_core.construction.manifest import counts_table

    with mlflow_tracking.start_run(context, settings, run_name=f"dataset-{name}-{settings.profile}", tags={"stage": "datasets"}) as (run, url):
        mlflow.log_params({"manifest": name, "seed": settings.seed, "resolution": settings.resolution_px, **extra})
        mlflow.log_metric("pairs", len(manifest))
        for task, n in manifest.groupby("task").size().items():
            mlflow.log_metric(f"pairs/{task}", int(n))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module="mlflow")
            columns = ["pair_id", "task", "dataset", "split", "category", "instruction", "template_id", "input_digest", "target_digest"]
            dataset = mlflow.data.from_pandas(manifest[columns], source=str(path), name=name)
            mlflow.log_input(dataset, context="training" if name != "test" else "evaluation")
        mlflow.log_table(counts_table(manifest), artifact_file=f"datasets/{name}_counts.json")
        return run.info.run_id, url


@dg.asset(
    group_name="datasets",
    deps=[encoded_pairs],
    kinds={"parquet", "mlflow"},
    description="The FP training manifest: every training pair with its task's fixed instruction template.",
)
def fp_manifest(context: dg.AssetExecutionContext, settings: InstructCVSettings, mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:
    from instructcv_core.construction.manifest import MANIFEST_SCHEMA, attach_fp, write_table

    pairs = _all_pairs(settings)
    manifest = attach_fp(pairs[pairs["role"] == "train"])
    path = _datasets_dir(settings) / "fp_manifest.parquet"
    write_table(manifest, path, MANIFEST_SCHEMA, metadata={"manifest": "fp", "seed": settings.seed})
    run_id, url = _log_manifest(mlflow_tracking, context, settings, manifest, path, "fp", {})
    return dg.MaterializeResult(metadata=_manifest_metadata(manifest, path, settings, url, run_id))


@dg.asset(
    group_name="datasets",
    deps=[encoded_pairs, "paraphrase_bank"],
    kinds={"parquet", "mlflow"},
    description="The RP training manifest: every training pair with an LLM paraphrase of its task's "
    "template, drawn deterministically from (seed, pair id) out of the accepted bank.",
)
def rp_manifest(context: dg.AssetExecutionContext, settings: InstructCVSettings, mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:
    import pandas as pd

    from instructcv_core.construction.manifest import MANIFEST_SCHEMA, attach_rp, write_table

    pairs = _all_pairs(settings)
    bank = pd.read_parquet(settings.profile_dir / "instructions" / "paraphrase_bank.parquet")
    manifest = attach_rp(pairs[pairs["role"] == "train"], bank, settings.seed)
    path = _datasets_dir(settings) / "rp_manifest.parquet"
    write_table(manifest, path, MANIFEST_SCHEMA, metadata={"manifest": "rp", "seed": settings.seed})
    sources = ", ".join(sorted(set(manifest["prompt_source"])))
    run_id, url = _log_manifest(mlflow_tracking, context, settings, manifest, path, "rp", {"prompt_sources": sources})
    return dg.MaterializeResult(metadata=_manifest_metadata(manifest, path, settings, url, run_id))


@dg.asset(
    group_name="datasets",
    deps=[encoded_pairs],
    kinds={"parquet", "mlflow"},
    description="One test manifest per benchmark (in-domain: NYUv2, ADE20K, COCO, Pets; external: "
    "SUN RGB-D, VOC seg/det, ImageNet-sub, FSS-1000) with the original-resolution images for evaluation.",
)
def test_manifests(context: dg.AssetExecutionContext, settings: InstructCVSettings, mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:
    from instructcv_core.construction.manifest import MANIFEST_SCHEMA, attach_fp, write_table
    from instructcv_core.benchmarks import manifest_benchmarks

    pairs = _all_pairs(settings)
    test = attach_fp(pairs[pairs["role"] == "test"])
    folder = _datasets_dir(settings) / "test"
    counts = {}
    for benchmark in (b.name for b in manifest_benchmarks()):
        rows = test[test["benchmark"] == benchmark]
        write_table(rows, folder / f"{benchmark}.parquet", MANIFEST_SCHEMA, metadata={"manifest": f"test/{benchmark}"})
        counts[benchmark] = {"images": int(rows["image_id"].nunique()), "pairs": len(rows)}
    empty = [b for b, c in counts.items() if c["pairs"] == 0]
    if empty:
        raise ValueError(f"test benchmark(s) without pairs: {', '.join(empty)}")
    run_id, url = _log_manifest(mlflow_tracking, context, settings, test, folder, "test", {})
    metadata = _manifest_metadata(test, folder / "all.parquet", settings, url, run_id)
    metadata["path"] = dg.MetadataValue.path(str(folder))
    metadata["benchmarks"] = dg.MetadataValue.json(counts)
    return dg.MaterializeResult(metadata=metadata)


# ---- asset checks -------------------------------------------------------------------------------


def _manifest_checks(asset: dg.AssetsDefinition, name: str) -> list:
    path_of = lambda settings: _datasets_dir(settings) / f"{name}_manifest.parquet"  # noqa: E731

    @dg.asset_check(asset=asset, name="split_hygiene", blocking=True,
                    description="No test image (by pixel digest or resized input) appears in this training manifest.")
    def split_hygiene(settings: InstructCVSettings) -> dg.AssetCheckResult:
        import pandas as pd

        from instructcv_core.construction.manifest import leaked_sources

        train = pd.read_parquet(path_of(settings), columns=["dataset", "split", "image_id", "source_path", "source_digest", "input_digest"])
        pairs = _all_pairs(settings)
        leaked = leaked_sources(train, pairs[pairs["role"] == "test"])
        return dg.AssetCheckResult(
            passed=leaked.empty,
            metadata={"leaked_images": len(leaked),
                      "examples": dg.MetadataValue.md(leaked.head(10).to_markdown(index=False) if len(leaked) else "none")},
        )

    @dg.asset_check(asset=asset, name="schema_and_images", blocking=True,
                    description="The manifest has the expected schema and a sample of its images decode at the training resolution.")
    def schema_and_images(settings: InstructCVSettings) -> dg.AssetCheckResult:
        import pyarrow.parquet as pq

        from instructcv_core.data.imagestore import ImageStore
        from instructcv_core.construction.manifest import MANIFEST_SCHEMA

        table = pq.read_table(path_of(settings))
        schema_ok = table.schema.remove_metadata().equals(MANIFEST_SCHEMA)
        frame = table.to_pandas()
        store = ImageStore(_datasets_dir(settings) / "images")
        sample = frame.iloc[:: max(1, len(frame) // 64)]
        bad = []
        for row in sample.itertuples():
            for digest in (row.input_digest, row.target_digest):
                try:
                    shape = store.get(digest).shape
                    if shape[:2] != (settings.resolution_px, settings.resolution_px):
                        bad.append(f"{digest}: {shape}")
                except OSError as exc:
                    bad.append(f"{digest}: {exc}")
        return dg.AssetCheckResult(
            passed=schema_ok and not bad,
            metadata={"schema_ok": schema_ok, "images_checked": 2 * len(sample), "bad_images": dg.MetadataValue.json(bad[:20])},
        )

    @dg.asset_check(asset=asset, name="counts_match_records",
                    description="Pairs per (task, dataset, split) equal what the raw records imply, less quarantined images.")
    def counts_match_records(settings: InstructCVSettings) -> dg.AssetCheckResult:
        import pandas as pd

        from instructcv_core.construction.pairs import expected_pairs, plan_units

        manifest = pd.read_parquet(path_of(settings), columns=["task", "dataset", "split"])
        actual = manifest.groupby(["task", "dataset", "split"]).size().to_dict()
        build = build_config(DatasetBuildConfig(), settings)
        quarantined = {q["path"] for q in _quarantine(settings)}
        expected: dict = {}
        for unit in plan_units(_sources(settings)):
            if unit.role != "train" or f"{unit.record.dataset}/{unit.record.image_path}" in quarantined:
                continue
            key = (unit.task, unit.record.dataset, unit.record.split)
            expected[key] = expected.get(key, 0) + expected_pairs(unit, build, name)
        rows = [{"task": k[0], "dataset": k[1], "split": k[2], "expected": expected.get(k, 0), "actual": actual.get(k, 0)}
                for k in sorted(set(expected) | set(actual))]
        mismatched = [r for r in rows if r["expected"] != r["actual"]]
        return dg.AssetCheckResult(
            passed=not mismatched and bool(rows),
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"counts": dg.MetadataValue.md(pd.DataFrame(rows).to_markdown(index=False)),
                      "mismatched": len(mismatched)},
        )

    @dg.asset_check(asset=asset, name="heldout_unused", blocking=True,
                    description="No held-out phrasing (Table 3 and ours) is used as a training instruction.")
    def heldout_unused(settings: InstructCVSettings) -> dg.AssetCheckResult:
        import pandas as pd

        from instructcv_core.instructions.templates import HELDOUT, normalise, render
        from instructcv_core.tasks import task

        manifest = pd.read_parquet(path_of(settings), columns=["task", "instruction", "category_text", "color", "color2"])
        used = set(manifest["instruction"].map(normalise))
        clashes = []
        for phrasing in HELDOUT:
            if name == "fp" and phrasing.is_fp_template:
                continue  # the FP template is FP's own training instruction
            rows = manifest[manifest["task"] == phrasing.task].head(200)
            for row in rows.itertuples():
                slots = task(phrasing.task).instruction_slots(row)
                if normalise(render(phrasing.text, **slots)) in used:
                    clashes.append(phrasing.text)
                    break
        return dg.AssetCheckResult(passed=not clashes, metadata={"clashes": dg.MetadataValue.json(clashes)})

    return [split_hygiene, schema_and_images, counts_match_records, heldout_unused]


@dg.asset_check(asset=rp_manifest, name="paraphrase_diversity",
                description="RP instructions spread over the bank: most paraphrases used, none dominating.")
def rp_paraphrase_diversity(settings: InstructCVSettings) -> dg.AssetCheckResult:
    import math

    import pandas as pd

    from instructcv_core.construction.manifest import instruction_diversity

    manifest = pd.read_parquet(_datasets_dir(settings) / "rp_manifest.parquet", columns=["task", "template_id"])
    bank = pd.read_parquet(settings.profile_dir / "instructions" / "paraphrase_bank.parquet")
    bank_sizes = bank[bank["accepted"]].groupby("task").size().to_dict()
    report, failures = instruction_diversity(manifest), []
    for task, stats in report.items():
        size = bank_sizes[task]
        # n pairs drawn uniformly from k phrasings: ~k(1 - e^(-n/k)) distinct are expected (ask for 80%),
        # and the most used one should stay within a few binomial deviations of n/k.
        n = stats["pairs"]
        expected = size * (1 - math.exp(-n / size))
        ceiling = n / size + 3 * math.sqrt(n / size) + 2
        stats.update(bank_size=size, expected_distinct=round(expected, 1), top_count_ceiling=round(ceiling, 1))
        if stats["templates_used"] < 0.8 * expected or stats["top_count"] > ceiling:
            failures.append(task)
    return dg.AssetCheckResult(passed=not failures, metadata={"diversity": dg.MetadataValue.json(report), "failing_tasks": ", ".join(failures) or "none"})


manifest_checks = [*_manifest_checks(fp_manifest, "fp"), *_manifest_checks(rp_manifest, "rp"), rp_paraphrase_diversity]
