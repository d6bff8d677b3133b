"""Evaluation stage (group `eval`): one asset per benchmark and checkpoint, and the paper's Tables 1–3.

For each checkpoint (FP, RP, and the untrained base as a reference) one multi-asset step loads the
model once and evaluates every selected benchmark (`eval_<benchmark>_<variant>`); selecting a single
benchmark asset in the UI evaluates only that one. Each benchmark asset writes its queries and
outputs, a metrics table (both protocols) and a sample grid, logs `eval/<benchmark>/<protocol>/<metric>`
to one MLflow run per checkpoint, and carries blocking checks: metrics finite and in range, and (FP,
RP) the trained model significantly better than the untrained one (`beats_untrained`). `results_tables` assembles Tables 1–3.

The authors' released weights (`settings.released_model`, default `alaa-lab/InstructCV`) are a fourth
checkpoint (group `eval_released`, job `released_evaluation`): the same benchmarks, protocols, sampler,
intervals and MLflow run, with the same checks as warnings (a published model is measured, not gated).
"""

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import dagster as dg

from assets.datasets import test_manifests
from assets.instructions import heldout_instructions
from assets.model import base_model, resolve_base_model
from assets.train import (  # noqa: F401  (checkpoint_asset_key: re-exported for the tests and shards)
    checkpoint_asset_key, instructcv_fp_checkpoint, instructcv_rp_checkpoint, materialised_checkpoint)
from instructcv_core.benchmarks import BENCHMARKS, TABLES
from instructcv_core.evaluation.config import EvalConfig
from instructcv_core.inference.config import SamplerConfig
from instructcv_core.model.released import RELEASED_MODEL
from pipelines.config import run_config_class, run_config_overrides
from pipelines.resources import InstructCVSettings, MlflowTracking
from pipelines.run_recovery import GPU_POOL


# The knobs are declared once, on the library's configs (`SamplerConfig`, `EvalConfig`); the profiles'
# values live in `instructcv_core.presets` (stages "sampler" and "eval").
SamplerRunConfig = run_config_class(
    SamplerConfig, "SamplerRunConfig", doc="How outputs are generated; unset knobs take the profile's preset "
    "(resolution: the profile's training resolution).")
EvalAssetConfig = run_config_class(
    EvalConfig, "EvalAssetConfig", exclude=("sampler", "seed"), base=SamplerRunConfig,
    doc="Sampling and protocol settings of an evaluation; unset knobs take the profile's preset.")


def eval_config(config: EvalAssetConfig, settings: InstructCVSettings) -> EvalConfig:
    """The core `EvalConfig` of an asset config: dataclass defaults < profile preset < run config."""
    from instructcv_core.presets import resolve

    sampler_knobs = {f.name for f in dataclasses.fields(SamplerConfig)} & config.model_fields_set
    sampler_set = run_config_overrides(SamplerRunConfig(**{k: getattr(config, k) for k in sampler_knobs}))
    sampler = resolve(SamplerConfig, settings.profile, "sampler", {"resolution": settings.resolution_px, **sampler_set})
    return resolve(EvalConfig, settings.profile, "eval", run_config_overrides(config), sampler=sampler, seed=settings.seed)


def eval_dir(settings: InstructCVSettings, variant: str) -> Path:
    return settings.profile_dir / "eval" / variant


def asset_key(benchmark: str, variant: str) -> dg.AssetKey:
    return dg.AssetKey(f"eval_{benchmark}_{variant}")


#: The checkpoints Tables 1-3 show beside the published numbers: our FP and RP, and the released weights.
TABLE_VARIANTS = ("fp", "rp", "released")


def load_model(instance: dg.DagsterInstance, settings: InstructCVSettings, variant: str, config):
    """(sampler factory, checkpoint identity, checkpoint description) of a variant."""
    from instructcv_core.inference.sampler import InstructCVSampler

    if variant == "untrained":
        source = resolve_base_model(settings)

        def factory():
            from instructcv_core.model.conv_in import widen_conv_in
            from instructcv_core.model.loading import load_base

            base = load_base(source, allow_network=settings.allow_network)
            unet = widen_conv_in(base.unet, base.vae.config.latent_channels * 2)
            return InstructCVSampler(unet, base.vae, base.text_encoder, base.tokenizer, base.noise_scheduler.config, config.sampler)

        return factory, f"untrained:{source}@{_folder_fingerprint(Path(source))}", source
    if variant == "released":
        weights = released_weights(settings)

        def released_factory():
            from instructcv_core.model.released import load_released

            return InstructCVSampler.from_pipeline(load_released(weights, allow_network=settings.allow_network),
                                                   config.sampler)

        return released_factory, weights.identity, weights.source
    checkpoint = materialised_checkpoint(instance, variant)
    return ((lambda: InstructCVSampler.from_pretrained(checkpoint["pipeline_dir"], config.sampler)),
            checkpoint["identity"], checkpoint["pipeline_dir"])


def released_weights(settings: InstructCVSettings):
    """The released weights the settings name, with their exact revision (hub commit or sha256); fails
    at once, naming the source and how to provide a local copy, when they cannot be found."""
    from instructcv_core.model.released import resolve_released

    return resolve_released(settings.released_model_source, revision=settings.released_revision,
                            allow_network=settings.allow_network,
                            single_file_config=settings.released_single_file_config)


def _folder_fingerprint(folder: Path) -> str:
    """Names, sizes and modification times of a model folder's files (a rebuilt base gets a new one);
    a hub id (not a folder) is its own identity."""
    if not folder.is_dir():
        return "hub"
    entries = sorted((str(f.relative_to(folder)), f.stat().st_size, f.stat().st_mtime_ns) for f in folder.rglob("*") if f.is_file())
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]


def eval_assets(variant: str) -> dg.AssetsDefinition:
    trained = variant != "untrained"
    released = variant == "released"
    upstream = {"fp": [instructcv_fp_checkpoint], "rp": [instructcv_rp_checkpoint], "released": []}.get(variant, [base_model])
    names = [b.name for b in BENCHMARKS.values() if trained or b.untrained_reference]
    specs, checks = [], []
    for name in names:
        bench = BENCHMARKS[name]
        compared = trained and bench.untrained_reference
        deps = [*upstream, test_manifests]
        if bench.kind == "heldout":
            deps.append(heldout_instructions)
        if compared:
            deps.append(asset_key(name, "untrained"))  # read by the beats_untrained check
        who = ("the released InstructCV weights (settings.released_model, default " + RELEASED_MODEL + ")" if released
               else f"InstructCV-{variant.upper()}" if trained else "the untrained base (reference for checks)")
        severity = ("Released weights: a failure is reported as a warning (a published model is measured, not gated)."
                    if released else "Blocking: an in-domain benchmark." if bench.in_domain else
                    "External benchmark: a failure is reported as a warning.")
        specs.append(dg.AssetSpec(
            asset_key(name, variant), group_name="eval_released" if released else "eval", deps=deps,
            kinds={"pytorch", "parquet", "mlflow"},
            description=f"{bench.description}: {who}, both protocols. Queries and outputs, metrics (Parquet + "
                        "Markdown), sample grid (input | output | prediction | ground truth) and evaluation cost."))
        checks.append(dg.AssetCheckSpec("metrics_valid", asset=asset_key(name, variant), blocking=not released,
                                        description="Every metric present, finite and within its valid range."
                                        + (" " + severity if released else "")))
        if compared:
            checks.append(dg.AssetCheckSpec(
                "beats_untrained", asset=asset_key(name, variant), blocking=not released,
                description="This checkpoint is significantly better than the untrained base on the headline metric "
                            "(one-sided paired t-test over images, 95 %); no per-image evidence fails. "
                            + (severity if released or bench.in_domain else
                               "External benchmark: a failure is reported as a warning (distribution shift is a finding, not a bug).")))
            checks.append(dg.AssetCheckSpec(
                "follows_instructions", asset=asset_key(name, variant), blocking=not released,
                description="The output follows the instruction: swapping the category asked changes the answer "
                            "to that category on >= 90 % of seeded pairs, and switching the task word switches the "
                            "output kind (mask, boxes, depth, colour block) on >= 90 % of outputs. " + severity))

    @dg.multi_asset(name=f"evaluate_{variant}", specs=specs, check_specs=checks, can_subset=True, pool=GPU_POOL)
    def _evaluate(context: dg.AssetExecutionContext, config: EvalAssetConfig, settings: InstructCVSettings,
                  mlflow_tracking: MlflowTracking):
        import mlflow
        import pandas as pd

        from instructcv_core.data.imagestore import ImageStore
        from instructcv_core.evaluation.run import evaluate_benchmark

        core = eval_config(config, settings).for_checkpoint(variant)  # how this checkpoint is asked
        factory, identity, checkpoint = load_model(context.instance, settings, variant, core)
        cached = {}

        def sampler_factory():  # built once, on the first benchmark that must generate
            if "sampler" not in cached:
                cached["sampler"] = factory()
            return cached["sampler"]

        selected = [n for n in names if asset_key(n, variant) in context.selected_asset_keys]
        heldout = None
        if any(BENCHMARKS[n].kind == "heldout" for n in selected):
            frame = pd.read_parquet(settings.profile_dir / "instructions" / "heldout.parquet")
            heldout = list(frame[frame["source"] == "paper_table3"]["text"])
        store = ImageStore(settings.profile_dir / "eval" / "outputs")
        with mlflow_tracking.start_run(context, settings, run_name=f"eval-{variant}-{settings.profile}",
                                       tags={"stage": "eval", "variant": variant, "checkpoint": checkpoint}) as (run, url):
            if released:  # the exact weights: a hub commit or a sha256
                mlflow.log_params({"released.source": checkpoint, "released.revision": identity.rsplit("@", 1)[1]})
            mlflow.log_params({"checkpoint": checkpoint, **{f"sampler.{k}": v for k, v in core.sampler.to_dict().items()},
                               "sampler.label": core.sampler.label,
                               "sampler.unet_evals_per_query": core.sampler.unet_evals_per_query,
                               "protocols": ",".join(core.protocols), "max_images": core.max_images,
                               "instructions": core.instructions,
                               "heldout_images": core.heldout_images, "standard_classes": core.standard_classes})
            for name in selected:
                result = evaluate_benchmark(
                    name, sampler_factory, identity, core, settings.profile_dir / "datasets", settings.profile_dir / "raw",
                    eval_dir(settings, variant) / name, store, heldout_phrasings=heldout, log=context.log.info)
                _log_mlflow(mlflow, name, result)
                key = asset_key(name, variant)
                metadata = _metadata(result, url)
                if released:
                    metadata.update(released_source=checkpoint, released_revision=identity.rsplit("@", 1)[1])
                yield dg.MaterializeResult(asset_key=key, metadata=metadata)
                following = lambda n=name: _instruction_following(  # noqa: E731  (runs only when its check is selected)
                    n, settings, variant, core, sampler_factory, identity, store, context.log.info)
                for check in _checks(context, settings, variant, name, result, following):
                    yield check

    return _evaluate


def _log_mlflow(mlflow, name: str, result) -> None:
    metrics = {f"eval/{name}/{p}/{m}": v for p, values in result.metrics.items() for m, v in values.items() if math.isfinite(v)}
    for protocol, by_metric in result.intervals.items():  # each metric's images and 95 % bootstrap interval
        for metric, interval in by_metric.items():
            key = f"eval/{name}/{protocol}/{metric}"
            metrics[f"{key}_n"] = float(interval.n)
            metrics.update({f"{key}_{side}": v for side, v in (("ci_low", interval.low), ("ci_high", interval.high))
                            if math.isfinite(v)})
    metrics.update({f"eval/{name}/cost/{k}": float(v) for k, v in result.counts.items() if k != "reused"})
    for protocol, detail in result.details.items():
        for phrasing, value in (detail.get("by_phrasing") or {}).items():
            if math.isfinite(value):
                metrics[f"eval/{name}/{protocol}/miou_phrasing_{_slug(phrasing)}"] = value
    mlflow.log_metrics(metrics)
    mlflow.log_params({f"data.{name}.test_manifest_sha256": result.identity["manifest"][:16],
                       f"data.{name}.queries_sha256": result.identity["queries"][:16]})
    for key in ("metrics_md", "samples", "metrics"):
        mlflow.log_artifact(result.paths[key], artifact_path=f"eval/{name}")


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text.lower().replace("%category%", "X")).strip("_")[:60]


def _metadata(result, url: str) -> dict:
    from instructcv_core.data.preview import png_markdown
    from PIL import Image

    frame = __import__("pandas").read_parquet(result.paths["metrics"])
    sampler = SamplerConfig(**result.identity["sampler"])
    with Image.open(result.paths["samples"]) as grid:
        grid_md = png_markdown(grid.copy(), f"{result.benchmark} samples", max_width=384)
    meta = {
        "metrics": dg.MetadataValue.md(metrics_markdown(frame)),
        "samples": dg.MetadataValue.md(grid_md),
        "images": int(result.counts["images"]), "queries": int(result.counts["queries"]),
        "unet_evaluations": int(result.counts["unet_evaluations"]),
        "generation_seconds": float(result.counts["generation_seconds"]), "reused_outputs": bool(result.counts["reused"]),
        "results_dir": dg.MetadataValue.path(result.paths["dir"]),
        "checkpoint": str(result.identity["checkpoint"]),
        "sampler": dg.MetadataValue.json(result.identity["sampler"]),
        "sampler_label": sampler.label,  # paper, few-4, one, ... (derived from the values)
        "unet_evals_per_query": sampler.unet_evals_per_query,
        "mlflow_run": dg.MetadataValue.url(url),
    }
    for protocol, values in result.metrics.items():
        for metric, value in values.items():
            meta[f"{protocol}/{metric}"] = float(value) if math.isfinite(value) else float("nan")
    return meta


def metrics_markdown(frame) -> str:
    """The metrics table as compact Markdown: value, 95 % interval and images per row (short enough
    for the Dagster UI to show it inline)."""
    number = lambda v: "–" if v != v else f"{v:.4g}"  # noqa: E731  (NaN: no value)
    lines = ["| protocol | metric | value [95 % CI] | n |", "|---|---|---|---:|"]
    for row in frame.itertuples():
        interval = "" if row.ci_low != row.ci_low else f" [{number(row.ci_low)}, {number(row.ci_high)}]"
        lines.append(f"| {row.protocol} | {row.metric} | {number(row.value)}{interval} | {int(row.n)} |")
    return "\n".join(lines)


def _checks(context, settings: InstructCVSettings, variant: str, name: str, result, following=None):
    from instructcv_core.evaluation.scoring import invalid_metrics

    key = asset_key(name, variant)
    selected = context.selected_asset_check_keys
    valid_key = dg.AssetCheckKey(key, "metrics_valid")
    if valid_key in selected:
        problems = invalid_metrics(name, result.metrics)
        yield dg.AssetCheckResult(asset_key=key, check_name="metrics_valid", passed=not problems,
                                  severity=dg.AssetCheckSeverity.WARN if variant == "released" else dg.AssetCheckSeverity.ERROR,
                                  metadata={"problems": dg.MetadataValue.json(problems)})
    beat_key = dg.AssetCheckKey(key, "beats_untrained")
    if beat_key in selected:
        reference = eval_dir(settings, "untrained") / name / "details.json"
        yield beats_untrained_check(key, name, result.details, reference, _severity(name, variant))
    follow_key = dg.AssetCheckKey(key, "follows_instructions")
    if follow_key in selected and following is not None:
        yield instruction_following_check(key, following(), _severity(name, variant))


def _instruction_following(name: str, settings: InstructCVSettings, variant: str, core, sampler_factory, identity: str,
                           store, log) -> dict:
    """Generate (or reuse) and judge the instruction-following probes of one benchmark."""
    from instructcv_core.data.imagestore import ImageStore
    from instructcv_core.evaluation.data import load_benchmark
    from instructcv_core.evaluation.instruction_following import check_instruction_following

    datasets = settings.profile_dir / "datasets"
    bench = load_benchmark(name, datasets, settings.profile_dir / "raw", None, core.seed)
    return check_instruction_following(bench, sampler_factory, identity, core, ImageStore(datasets / "images"), store,
                                       eval_dir(settings, variant) / name, log=log)


def instruction_following_check(key: dg.AssetKey, summary: dict,
                                severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR) -> dg.AssetCheckResult:
    """The `follows_instructions` check from a judged probe set
    (`instructcv_core.evaluation.instruction_following.check_instruction_following`)."""
    rate = lambda v: float(v) if isinstance(v, (int, float)) and math.isfinite(v) else float("nan")  # noqa: E731
    return dg.AssetCheckResult(
        asset_key=key, check_name="follows_instructions", passed=bool(summary["passed"]), severity=severity,
        description=summary["reason"],
        metadata={"category_swaps": int(summary["pairs"]), "swaps_followed": int(summary["pairs_followed"]),
                  "swap_rate": rate(summary["swap_rate"]), "task_switch_outputs": int(summary["switch_outputs"]),
                  "task_switches_matched": int(summary["switch_matched"]), "switch_rate": rate(summary["switch_rate"]),
                  "output_kinds": dg.MetadataValue.json(summary["kinds"]), "required_rate": float(summary["follow_rate"]),
                  "probes": dg.MetadataValue.path(summary["path"])})


def _severity(name: str, variant: str = "fp") -> dg.AssetCheckSeverity:
    """ERROR (blocks what depends on it) on in-domain benchmarks, WARN on external ones and for the
    released weights (measured, not gated)."""
    if variant == "released":
        return dg.AssetCheckSeverity.WARN
    return dg.AssetCheckSeverity.ERROR if BENCHMARKS[name].in_domain else dg.AssetCheckSeverity.WARN


def beats_untrained_check(key: dg.AssetKey, name: str, details: dict, reference: Path,
                          severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR) -> dg.AssetCheckResult:
    """Pass only when the checkpoint is significantly better than the untrained base on the headline metric.

    Paired per image (the same images, the same questions), one-sided t-test at 95 %, no tolerance
    (`instructcv_core.evaluation.comparison.paired_comparison`). It fails without per-image evidence
    (no per-image values, e.g. the `paper` protocol alone on depth, detection or classification, or
    no image in common) and for a model identical to the base (a 0-step checkpoint).
    """
    from instructcv_core.evaluation.comparison import paired_comparison
    from instructcv_core.evaluation.scoring import primary_metric

    if not reference.exists():
        return dg.AssetCheckResult(asset_key=key, check_name="beats_untrained", passed=False, severity=severity,
                                   metadata={"error": f"{reference}: missing; materialise eval_{name}_untrained first"})
    protocol = "standard" if "standard" in details else "paper"
    metric, higher = primary_metric(name, protocol)
    ours = details[protocol].get("per_image", {})
    theirs = json.loads(reference.read_text()).get(protocol, {}).get("per_image", {})
    result = paired_comparison(ours, theirs, higher)
    finite = lambda values: [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]  # noqa: E731
    mean = lambda values: float(sum(finite(values)) / len(finite(values))) if finite(values) else float("nan")  # noqa: E731
    return dg.AssetCheckResult(
        asset_key=key, check_name="beats_untrained", passed=result["trained_better"], severity=severity,
        description=result["reason"],
        metadata={"metric": f"{protocol}/{metric} per image", "higher_is_better": higher,
                  "trained_mean": mean(list(ours.values())), "untrained_mean": mean(list(theirs.values())),
                  **{k: (float(v) if isinstance(v, float) else v) for k, v in result.items()}})


evaluate_fp = eval_assets("fp")
evaluate_rp = eval_assets("rp")
evaluate_untrained = eval_assets("untrained")
evaluate_released = eval_assets("released")
EVAL_ASSETS = [evaluate_untrained, evaluate_fp, evaluate_rp, evaluate_released]


# ------------------------------------------------------------------------------------------------
# Tables


#: table -> (description, the benchmarks whose results it shows), from the benchmark table.
TABLE_SPECS = {name: (description, tuple(b.name for b in BENCHMARKS.values() if b.table == name))
               for name, description in TABLES.items()}


@dg.multi_asset(
    name="results_tables",
    specs=[dg.AssetSpec(name, group_name="eval", description=description, kinds={"pandas", "mlflow"},
                        deps=[asset_key(b, v) for b in benchmarks for v in TABLE_VARIANTS])
           for name, (description, benchmarks) in TABLE_SPECS.items()],
    can_subset=True,
)
def results_tables(context: dg.AssetExecutionContext, settings: InstructCVSettings, mlflow_tracking: MlflowTracking):
    import mlflow

    from instructcv_core.evaluation import tables
    from instructcv_core.construction.manifest import write_table_frame
    from instructcv_core.data.records import atomic_write_text

    out = settings.profile_dir / "tables"
    selected = [n for n in TABLE_SPECS if dg.AssetKey(n) in context.selected_asset_keys]
    wanted = {b for n in selected for b in TABLE_SPECS[n][1]}
    # exactly the results the upstream evaluation assets recorded (their latest materialisation)
    sources = {(v, b): upstream_results_dir(context.instance, b, v) for b in wanted for v in TABLE_VARIANTS}
    results = tables.read_results(sources)
    statuses = raw_statuses(context.instance)
    heldout = {}
    for (variant, name), folder in sources.items():
        if folder is not None and BENCHMARKS[name].table == "table3":
            details = json.loads((folder / "details.json").read_text())
            heldout[variant] = {p: d.get("by_phrasing", {}) for p, d in details.items()}
    built = {"table1": lambda: tables.table1(results), "table2": lambda: tables.table2(results),
             "table3": lambda: (tables.check_comparable(results, "ade20k_heldout"), tables.table3(heldout, results))[1]}
    with mlflow_tracking.start_run(context, settings, run_name=f"tables-{settings.profile}", tags={"stage": "tables"}) as (run, url):
        for name in selected:
            frame = built[name]()
            benchmarks = TABLE_SPECS[name][1]
            cells = tables.cells_table(results, benchmarks)
            notes = tables.table_notes(results, benchmarks, statuses)
            markdown = tables.to_markdown(frame)
            if name == "table1":
                markdown += "\n\nPublished rows of Table 1 (all models):\n\n" + tables.to_markdown(tables.table1_baselines())
            if notes:
                markdown += "\n\nNotes:\n\n" + "\n".join(f"- {n}" for n in notes)
            if len(cells):
                markdown += "\n\nWhere each of our cells comes from:\n\n" + tables.to_markdown(cells)
            write_table_frame(frame, out / f"{name}.parquet")
            write_table_frame(cells, out / f"{name}_cells.parquet")
            frame.to_csv(out / f"{name}.csv.tmp", index=False)
            (out / f"{name}.csv.tmp").replace(out / f"{name}.csv")
            atomic_write_text(out / f"{name}.md", f"# {TABLE_SPECS[name][0]}\n\n{markdown}\n")
            for suffix in ("md", "csv"):
                mlflow.log_artifact(str(out / f"{name}.{suffix}"), artifact_path="tables")
            yield dg.MaterializeResult(asset_key=dg.AssetKey(name), metadata={
                "table": dg.MetadataValue.md(markdown), "path": dg.MetadataValue.path(str(out / f"{name}.md")),
                "rows": len(frame), "cells": len(cells), "notes": dg.MetadataValue.json(notes),
                "data_status": "complete" if not [n for n in notes if " is INCOMPLETE" in n] else "INCOMPLETE",
                "mlflow_run": dg.MetadataValue.url(url)})


def upstream_results_dir(instance: dg.DagsterInstance, benchmark: str, variant: str) -> Path | None:
    """The results folder the latest materialisation of ``eval_<benchmark>_<variant>`` recorded, or None."""
    event = instance.get_latest_materialization_event(asset_key(benchmark, variant))
    if event is None or event.asset_materialization is None:
        return None
    value = event.asset_materialization.metadata.get("results_dir")
    if value is None:
        raise ValueError(f"the latest materialisation of {asset_key(benchmark, variant).to_user_string()} "
                         f"(run {event.run_id}) has no results_dir metadata: re-materialise it")
    return Path(value.value)


def raw_statuses(instance: dg.DagsterInstance) -> dict[str, str]:
    """``raw_<dataset>`` -> the ``status`` its latest materialisation recorded (complete / INCOMPLETE ...)."""
    from assets.raw import RAW_DATASETS

    statuses = {}
    for name in RAW_DATASETS:
        event = instance.get_latest_materialization_event(dg.AssetKey(f"raw_{name}"))
        if event is not None and event.asset_materialization is not None:
            status = event.asset_materialization.metadata.get("status")
            if status is not None:
                statuses[f"raw_{name}"] = str(status.value)
    return statuses
