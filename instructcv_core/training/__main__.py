"""The command line of training, and its report to Dagster Pipes (rank 0 only).

    python -m instructcv_core.training --config cfg.yaml
    accelerate launch [--num_processes N ...] -m instructcv_core.training --config cfg.yaml
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from instructcv_core.training.config import load_config


def train(config, on_log=None):
    """:func:`instructcv_core.training.loop.train` (imported when called: the loop imports torch)."""
    from instructcv_core.training.loop import train as run

    return run(config, on_log=on_log)


def is_rank_zero() -> bool:
    """True in the process of global and local rank 0 (or outside a distributed launch)."""
    return all(os.environ.get(var, "0") == "0" for var in ("RANK", "LOCAL_RANK"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m instructcv_core.training",
                                     description="Instruction-tune a Stable Diffusion base (InstructPix2Pix recipe).")
    parser.add_argument("--config", required=True, help="TrainConfig as YAML or JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    config = load_config(args.config)

    # Only rank 0 talks to Dagster: every rank opening Pipes would report duplicate messages.
    if not (os.environ.get("DAGSTER_PIPES_CONTEXT") and is_rank_zero()):
        train(config)
        return 0
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        def on_log(record: dict) -> None:
            pipes.log.info(f"step {record['step']}/{record['max_steps']}: loss {record['loss']:.5f}, "
                           f"lr {record['lr']:.2e}, {record['samples_per_second']:.1f} samples/s")

        result = train(config, on_log=on_log)
        pipes.report_asset_materialization(metadata={
            "steps": result.steps,
            "samples_per_second": result.samples_per_second,
            "final_loss": result.final_loss,
            "checkpoint_path": {"raw_value": result.pipeline_dir, "type": "path"},
            "resumed_from": result.resumed_from,
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
