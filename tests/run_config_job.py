"""A two-step job for the run-config check: `prepare` (a stand-in data stage), then `train`, which
takes the training asset's run-config class. Both write what they did into $RUN_CONFIG_MARKS; `train`
writes the knobs its config set (as JSON) and the `TrainConfig` it resolves. It runs with the
project's executor and settings resource.
"""

import json
import os
from pathlib import Path

import dagster as dg

from assets.train import TrainAssetConfig, train_recipe
from pipelines.config import run_config_overrides
from pipelines.resources import InstructCVSettings
from pipelines.run_recovery import recovering_executor


def _marks() -> Path:
    marks = Path(os.environ["RUN_CONFIG_MARKS"])
    marks.mkdir(parents=True, exist_ok=True)
    return marks


@dg.asset
def prepare() -> None:
    (_marks() / "prepare.done").write_text("")


@dg.asset(deps=[prepare])
def train(config: TrainAssetConfig, settings: InstructCVSettings) -> None:
    recipe = train_recipe(config, settings, "train")
    (_marks() / "train.json").write_text(json.dumps({"overrides": run_config_overrides(config),
                                                     "recipe": recipe.to_dict()}, sort_keys=True))


two_steps = dg.define_asset_job("two_steps", selection=dg.AssetSelection.all())
defs = dg.Definitions(assets=[prepare, train], jobs=[two_steps], executor=recovering_executor,
                      resources={"settings": InstructCVSettings()})


def two_steps_job() -> dg.JobDefinition:
    """The job, for `dg.reconstructable` (which the project's executor needs to run)."""
    return defs.resolve_job_def("two_steps")
