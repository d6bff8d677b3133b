"""The optimizer-step arithmetic of a run: the effective batch and the length in epochs.

The official InstructCV run is 128 samples per GPU x 8 GPUs x 4 accumulated micro-batches = 4,096
samples per optimizer step, for 20 epochs. Here the effective batch is a knob
(``effective_batch_size``) and the accumulation follows from the world size::

    effective_batch_size = train_batch_size x num_processes x gradient_accumulation_steps

so the same recipe runs on 1, 8 or 32 GPUs with the same optimizer steps. The length in epochs
(``num_train_epochs``) becomes ``max_steps`` from the manifest's size, counted the way the loop
consumes data: full micro-batches only (the last partial one is dropped), dealt round-robin to the
processes (accelerate's ``BatchSamplerShard``), and an epoch's last, incomplete accumulation still
ends in an optimizer step (accelerate syncs at the end of the data loader).

No torch here: the Dagster assets and the cost plan resolve a recipe without loading a model.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from instructcv_core.training.config import TrainConfig


def accumulation_steps(effective_batch_size: int, train_batch_size: int, num_processes: int) -> int:
    """Micro-batches per optimizer step so that batch x processes x accumulation = ``effective_batch_size``.

    A ValueError names the three numbers when the effective batch is not a multiple of
    batch x processes (4,096 on 3 GPUs of 128, say): the recipe would silently change otherwise.
    """
    per_micro_step = train_batch_size * num_processes
    if effective_batch_size % per_micro_step:
        raise ValueError(
            f"effective_batch_size {effective_batch_size} is not divisible by train_batch_size {train_batch_size} "
            f"x num_processes {num_processes} = {per_micro_step}; choose a per-device batch and a world size whose "
            f"product divides it")
    return effective_batch_size // per_micro_step


def batches_per_process(rows: int, train_batch_size: int, num_processes: int) -> int:
    """Micro-batches one process sees per epoch: full batches of the manifest, dealt to the processes.

    (A DataLoader with ``drop_last`` gives ``rows // batch`` batches; accelerate's ``BatchSamplerShard``
    then gives each process ``batches // num_processes`` of them.)
    """
    return (rows // train_batch_size) // num_processes


def steps_per_epoch(rows: int, train_batch_size: int, num_processes: int, accumulation: int) -> int:
    """Optimizer steps per epoch (an epoch's last, shorter accumulation is a step too)."""
    return math.ceil(batches_per_process(rows, train_batch_size, num_processes) / accumulation)


def resolve_schedule(config: TrainConfig, num_processes: int, rows: int) -> TrainConfig:
    """``config`` with ``gradient_accumulation_steps`` and ``max_steps`` made concrete for this world size.

    - accumulation: derived from ``effective_batch_size`` when that is set (a given accumulation must
      agree), else the given value, else 1;
    - length: ``num_train_epochs x steps_per_epoch`` when ``num_train_epochs`` is set (``max_steps``
      must then be unset, 0, or already that number), else ``max_steps``.

    Idempotent: a resolved config resolves to itself. ``rows``: the manifest rows trained on.
    """
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    accumulation = config.gradient_accumulation_steps
    if config.effective_batch_size is not None:
        derived = accumulation_steps(config.effective_batch_size, config.train_batch_size, num_processes)
        if accumulation is not None and accumulation != derived:
            raise ValueError(
                f"gradient_accumulation_steps {accumulation} disagrees with effective_batch_size "
                f"{config.effective_batch_size} = train_batch_size {config.train_batch_size} x {num_processes} "
                f"process(es) x {derived}; leave gradient_accumulation_steps unset to derive it")
        accumulation = derived
    elif accumulation is None:
        accumulation = 1
    max_steps = config.max_steps
    if config.num_train_epochs is not None:
        per_epoch = steps_per_epoch(rows, config.train_batch_size, num_processes, accumulation)
        if per_epoch == 0:
            raise ValueError(f"{rows} training rows give no full batch of {config.train_batch_size} per process "
                             f"x {num_processes} processes")
        derived_steps = config.num_train_epochs * per_epoch
        if max_steps not in (None, 0, derived_steps):
            raise ValueError(f"max_steps {max_steps} and num_train_epochs {config.num_train_epochs} "
                             f"(= {derived_steps} steps on {rows} rows) both set; unset max_steps (null or 0)")
        max_steps = derived_steps
    elif max_steps is None:
        raise ValueError("set max_steps or num_train_epochs (the run's length)")
    return dataclasses.replace(config, gradient_accumulation_steps=accumulation, max_steps=max_steps)


def manifest_rows(manifest: str | Path, tasks: tuple[str, ...] | None = None) -> int:
    """Rows of a training manifest (only those of ``tasks`` when given), read from its ``task`` column."""
    import pyarrow.parquet as pq

    path = Path(manifest)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    if tasks is None:
        return pq.ParquetFile(path).metadata.num_rows
    column = pq.read_table(path, columns=["task"]).column("task").to_pylist()
    return sum(task in tasks for task in column)


def resolve_for_manifest(config: TrainConfig, num_processes: int) -> TrainConfig:
    """:func:`resolve_schedule` with the row count read from ``config.manifest`` (only when it matters)."""
    if config.num_train_epochs is None:
        return resolve_schedule(config, num_processes, 0)
    return resolve_schedule(config, num_processes, manifest_rows(config.manifest, config.tasks))


def samples_per_step(config: TrainConfig, num_processes: int) -> int:
    """Samples per optimizer step of a resolved config (batch x processes x accumulation)."""
    return config.train_batch_size * num_processes * (config.gradient_accumulation_steps or 1)
