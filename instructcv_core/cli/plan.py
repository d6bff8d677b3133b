"""``instructcv plan``: the cost of a profile before it runs (`instructcv_core.evaluation.cost_plan`)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from instructcv_core.cli._io import CONTEXT_SETTINGS


@click.command(context_settings=CONTEXT_SETTINGS)
@click.option("--profile", type=click.Choice(["mini", "paper"]), default="paper", show_default=True,
              help="The profile whose presets (sampler steps, image limits, training recipe) are planned.")
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path), default=Path("data"), show_default=True,
              help="Where the profile's data lives: test and training manifests found there are counted exactly.")
@click.option("--unet-evals-per-second", type=float, default=None,
              help="Measured UNet evaluations per second per GPU (default: a published A100 anchor, named in the output).")
@click.option("--train-samples-per-second", type=float, default=None,
              help="Measured training samples per second per GPU (default: a published A100 anchor).")
@click.option("--train-samples", type=int, default=None,
              help="Training pairs per checkpoint (default: the FP manifest's rows, else an assumption named in the output).")
@click.option("--job", type=click.Choice(["full_reproduction", "released_evaluation"]), default="full_reproduction",
              show_default=True, help="The job to plan: everything, or the released weights' evaluation alone (no training).")
@click.option("--json", "as_json", is_flag=True, help="Print the rows and totals as JSON instead of Markdown.")
def plan(profile: str, data_root: Path, unet_evals_per_second: float | None, train_samples_per_second: float | None,
         train_samples: int | None, job: str, as_json: bool) -> None:
    """Print the planned cost: per benchmark and protocol the queries, UNet evaluations and GPU-hours,
    and the training cost, with the total.

    \b
    Examples:
      instructcv plan --profile paper
      instructcv plan --profile paper --job released_evaluation
      instructcv plan --profile paper --unet-evals-per-second 1500 --train-samples-per-second 500
    """
    from instructcv_core.evaluation.cost_plan import make_plan

    for name, value in (("--unet-evals-per-second", unet_evals_per_second),
                        ("--train-samples-per-second", train_samples_per_second), ("--train-samples", train_samples)):
        if value is not None and value <= 0:
            raise click.BadParameter(f"must be > 0, got {value}", param_hint=name)
    cost = make_plan(profile, data_root, unet_per_second=unet_evals_per_second,
                     train_samples_per_second=train_samples_per_second, train_samples=train_samples, job=job)
    if as_json:
        click.echo(json.dumps({"job": cost.job, "rows": cost.rows(),
                               "train_gpu_hours_per_checkpoint": cost.train_gpu_hours if cost.trains else 0.0,
                               "eval_gpu_hours": cost.eval_gpu_hours, "total_gpu_hours": cost.total_gpu_hours,
                               "unet_evals_per_second": cost.unet_per_second, "unet_source": cost.unet_source,
                               "train_samples_per_second": cost.train_samples_per_second,
                               "train_source": cost.train_source}, indent=1))
    else:
        click.echo(cost.to_markdown(), nl=False)
