"""``instructcv``: the command line of the project.

Commands (``instructcv COMMAND --help`` for each), one module each:

* ``predict`` (`instructcv_core.cli.predict`): run one instruction on an image or a folder of images
  with a trained checkpoint and write the raw output and the decoded result (mask, boxes, metric
  depth or class decision);
* ``reproduce`` (`instructcv_core.cli.reproduce`): run the full Dagster reproduction job (mini or
  paper profile);
* ``doctor`` (`instructcv_core.cli.doctor`): say what a paper run needs and what is missing on this
  machine;
* ``compare`` (`instructcv_core.cli.compare`): export the MLflow comparison of FP vs RP (both
  protocols) as Markdown / CSV;
* ``plan`` (`instructcv_core.cli.plan`): the planned cost of a profile (queries, UNet evaluations,
  GPU-hours of evaluation and training) before anything runs.

Shared helpers live in `instructcv_core.cli._io`. Heavy libraries (torch, diffusers, mlflow, cv2,
numpy) are imported inside the commands, so that ``instructcv --help`` answers at once.
``python -m instructcv_core.cli`` runs the same program.
"""

from __future__ import annotations

import click

from instructcv_core.cli import compare as _compare
from instructcv_core.cli import doctor as _doctor
from instructcv_core.cli import plan as _plan
from instructcv_core.cli import predict as _predict
from instructcv_core.cli import reproduce as _reproduce
from instructcv_core.cli._io import CONTEXT_SETTINGS

__all__ = ["CONTEXT_SETTINGS", "cli", "main"]


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(package_name="instructcv", prog_name="instructcv")
def cli() -> None:
    """InstructCV: segmentation, detection, depth and classification as instruction-guided
    image generation.

    \b
    Examples:
      instructcv predict --checkpoint data/mini/train/fp --image photo.jpg --instruction "Segment the cat" --resolution 64 --steps 8
      instructcv reproduce --profile mini
      instructcv doctor --profile paper
      instructcv compare --profile mini --out results/
      instructcv plan --profile paper
    """


cli.add_command(_predict.predict)
cli.add_command(_reproduce.reproduce)
cli.add_command(_doctor.doctor)
cli.add_command(_compare.compare)
cli.add_command(_plan.plan)


def main() -> None:
    """Console-script entry point (``instructcv``)."""
    cli(prog_name="instructcv")
