"""The cost plan (group `plan`): what evaluating and training this profile will cost, before the spend.

The table of `instructcv plan` (`instructcv_core.evaluation.cost_plan`), counted on this profile's
test and training manifests, as asset metadata: the UI shows it before the `train` and `eval` steps.
"""

from typing import Optional

import dagster as dg

from assets.datasets import fp_manifest, test_manifests
from pipelines.config import RunFloat
from pipelines.resources import InstructCVSettings


class CostPlanConfig(dg.Config):
    """Throughputs to plan with (unset: the published anchors the plan names)."""

    unet_evals_per_second: Optional[RunFloat] = None
    train_samples_per_second: Optional[RunFloat] = None


@dg.asset(group_name="plan", deps=[test_manifests, fp_manifest], kinds={"python"},
          description="Planned cost per benchmark and protocol (queries, UNet evaluations, GPU-hours) and of training.")
def cost_plan(context: dg.AssetExecutionContext, config: CostPlanConfig, settings: InstructCVSettings) -> dg.MaterializeResult:
    from instructcv_core.evaluation.cost_plan import make_plan

    plan = make_plan(settings.profile, settings.data_dir, unet_per_second=config.unet_evals_per_second,
                     train_samples_per_second=config.train_samples_per_second)
    context.log.info(f"planned: {plan.total_gpu_hours:,.1f} GPU-hours in total")
    return dg.MaterializeResult(metadata={
        "plan": dg.MetadataValue.md(plan.to_markdown()),
        "rows": dg.MetadataValue.json(plan.rows()),
        "eval_gpu_hours": plan.eval_gpu_hours,
        "train_gpu_hours_per_checkpoint": plan.train_gpu_hours,
        "total_gpu_hours": plan.total_gpu_hours,
        "unet_evals_per_second": plan.unet_per_second,
        "train_samples_per_second": plan.train_samples_per_second,
    })
