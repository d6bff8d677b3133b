"""The speed-quality curve (group `eval`): every checkpoint under every sampler preset, as one asset.

`speed_quality` asks the FP and RP checkpoints and their one-step fine-tunes every sampler preset
(`paper`, `few`, `one`) and the guidance sweep of the paper's Fig. 3, on the same seeded images of
every in-domain benchmark, and writes `data/<profile>/tables/speed_quality.parquet` (headline standard
metric with its 95 % interval, UNet evaluations per query, measured images per second) and a plot, both
in the asset's metadata and in MLflow. The library code is `instructcv_core.evaluation.speed_quality`.
"""

import dataclasses
import math

import dagster as dg

from assets.datasets import test_manifests
from assets.evaluate import EvalAssetConfig, eval_config, load_model
from instructcv_core.evaluation.speed_quality import SpeedQualityConfig
from pipelines.config import run_config_class, run_config_overrides
from pipelines.resources import InstructCVSettings, MlflowTracking
from pipelines.run_recovery import GPU_POOL

SpeedQualityAssetConfig = run_config_class(
    SpeedQualityConfig, "SpeedQualityAssetConfig",
    doc="Checkpoints, sampler points, benchmarks and images of the speed-quality curve; unset knobs take the "
        "profile's preset (stage speed_quality).")

def speed_quality_config(config: SpeedQualityAssetConfig, settings: InstructCVSettings) -> SpeedQualityConfig:
    """The curve's `SpeedQualityConfig`: the profile's preset (stage speed_quality) < the run config."""
    from instructcv_core.presets import resolve

    return resolve(SpeedQualityConfig, settings.profile, "speed_quality", run_config_overrides(config))


#: The checkpoint assets a point may ask (their latest materialisation names the pipeline folder).
CHECKPOINT_ASSETS = ("instructcv_fp_checkpoint", "instructcv_rp_checkpoint", "instructcv_fp_onestep_checkpoint",
                     "instructcv_rp_onestep_checkpoint")


@dg.asset(
    group_name="eval",
    deps=[*CHECKPOINT_ASSETS, test_manifests],
    pool=GPU_POOL,
    kinds={"pytorch", "parquet", "mlflow"},
    description="The speed-quality curve: each checkpoint x sampler preset (paper: 100 Euler-ancestral steps with "
    "3-way guidance; few: a few trailing DDIM steps; one: a single deterministic step) and the guidance sweep of "
    "the paper's Fig. 3, with the headline standard metric of every in-domain benchmark (95 % CI), UNet "
    "evaluations per query and measured images per second (tables/speed_quality.parquet + plot).",
)
def speed_quality(context: dg.AssetExecutionContext, config: SpeedQualityAssetConfig, settings: InstructCVSettings,
                  mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:
    import mlflow

    from instructcv_core.construction.manifest import write_table_frame
    from instructcv_core.data.imagestore import ImageStore
    from instructcv_core.data.preview import png_markdown
    from instructcv_core.data.records import atomic_write_text
    from instructcv_core.evaluation.config import EvalConfig
    from instructcv_core.evaluation.run import evaluate_benchmark
    from instructcv_core.evaluation import speed_quality as sq
    from instructcv_core.inference.sampler import resolve_device
    from PIL import Image

    curve = speed_quality_config(config, settings)
    # The profile's evaluation settings (resolution, batch size, dtype, device, seed, instructions) with
    # the standard protocol only, on the curve's image subset; each point sets the sampler's preset.
    base = eval_config(EvalAssetConfig(), settings)
    base = dataclasses.replace(base, protocols=("standard",), max_images=curve.images, standard_subset=None)
    root = settings.profile_dir / "eval" / "speed_quality"
    store = ImageStore(settings.profile_dir / "eval" / "outputs")
    device = str(resolve_device(base.sampler.device))
    rows, loaded = [], {}
    with mlflow_tracking.start_run(context, settings, run_name=f"speed-quality-{settings.profile}",
                                   tags={"stage": "eval", "asset": "speed_quality"}) as (run, url):
        mlflow.log_params({f"speed_quality.{k}": ",".join(map(str, v)) if isinstance(v, tuple) else v
                           for k, v in curve.to_dict().items()})
        for point in sq.points(curve, base.sampler):
            core = dataclasses.replace(base, sampler=point.sampler, max_images=curve.images_for(point.sampler.preset))
            core = core.for_checkpoint(point.checkpoint.split("_")[0])
            factory, identity, checkpoint = load_model(context.instance, settings, point.checkpoint, core)
            cached = loaded.setdefault(point.checkpoint, {})

            def sampler_factory(factory=factory, cached=cached, sampler_config=point.sampler):
                # one model load per checkpoint; each point only changes how it samples
                if "model" not in cached:
                    cached["model"] = factory()
                return cached["model"].with_config(sampler_config)

            def evaluate(name, out_dir, core=core, sampler_factory=sampler_factory, identity=identity):
                return evaluate_benchmark(name, sampler_factory, identity, core, settings.profile_dir / "datasets",
                                          settings.profile_dir / "raw", out_dir, store, log=context.log.info)

            context.log.info(f"speed-quality: {point.checkpoint} with {point.sampler.label} "
                             f"({point.sampler.unet_evaluations(1)} UNet evaluations per query)")
            rows += sq.measure_point(point, curve.benchmarks_for(point.sampler.preset), evaluate, root, device)
        frame = sq.frame_of(rows)
        summary = sq.one_step_summary(frame)
        tables = settings.profile_dir / "tables"
        parquet = write_table_frame(frame, tables / "speed_quality.parquet")
        markdown = _markdown(frame, summary)
        atomic_write_text(tables / "speed_quality.md", f"# The speed-quality curve ({settings.profile})\n\n{markdown}\n")
        picture = sq.plot(frame, tables / "speed_quality.png",
                          f"Speed-quality, {settings.profile} profile ({device}, {curve.images or 'all'} images per benchmark)")
        for path in (parquet, tables / "speed_quality.md", picture):
            mlflow.log_artifact(str(path), artifact_path="tables")
        mlflow.log_metrics({f"speed_quality/{r.benchmark}/{r.checkpoint}/{_slug(r.sampler)}/{key}": float(getattr(r, key))
                            for r in frame.itertuples() for key in ("value", "images_per_second")
                            if math.isfinite(float(getattr(r, key)))})
        with Image.open(picture) as image:
            plot_md = png_markdown(image.copy(), "speed-quality curve", max_width=900)
    return dg.MaterializeResult(metadata={
        "plot": dg.MetadataValue.md(plot_md), "table": dg.MetadataValue.md(markdown),
        "path": dg.MetadataValue.path(str(parquet)), "plot_path": dg.MetadataValue.path(str(picture)),
        "points": int(frame[["checkpoint", "sampler"]].drop_duplicates().shape[0]), "rows": len(frame),
        "device": device, "images_per_benchmark": curve.images or "all",
        "images_per_benchmark_paper_preset": curve.images_for("paper") or "all",
        "benchmarks_paper_preset": ", ".join(curve.benchmarks_for("paper")), "mlflow_run": dg.MetadataValue.url(url)})


def _markdown(frame, summary) -> str:
    from instructcv_core.evaluation.tables import to_markdown

    shown = frame.assign(**{"value [95 % CI]": [f"{r.value:.4g} [{r.ci_low:.4g}, {r.ci_high:.4g}]" for r in frame.itertuples()]})
    shown = shown[["checkpoint", "sampler", "unet_evals_per_query", "images_per_second", "benchmark", "metric",
                   "value [95 % CI]", "n"]]
    text = to_markdown(shown) + ("\n\n(n: images per benchmark; the `paper` preset's points may use fewer, the first of the "
                                 "same seeded subset, and fewer benchmarks: `paper_images`, `paper_benchmarks`.)")
    if len(summary):
        text += ("\n\nOne step against the paper's sampler (best `one` setting vs best `paper` setting per benchmark; "
                 "quality_ratio >= 0.95 is within 5 %):\n\n" + to_markdown(summary))
    return text


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in ".-" else "_" for c in text)
