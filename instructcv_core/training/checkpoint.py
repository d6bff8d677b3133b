"""Checkpoints and resuming: what a run saves every N steps, and when a saved state may be continued.

Layout of ``output_dir``: ``checkpoints/step-XXXXXX/`` (accelerate state: model, optimizer, lr
scheduler, EMA, RNG states; plus ``train_state.json``), each written to a temporary folder and renamed
into place, and ``losses.jsonl`` (step, loss, lr). A checkpoint carries the run's
:func:`resume_key`; a run resumes from the last complete checkpoint only when its key is the same,
so a changed recipe never continues a trajectory it did not start.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from instructcv_core.training.config import TrainConfig

CHECKPOINT_PREFIX = "step-"
STATE_FILE = "train_state.json"

#: The TrainConfig fields that change the trajectory (the weights and losses of step n). Left out on
#: purpose: paths, logging, sampling and checkpointing cadence, MLflow ids, data-loader workers,
#: network access and gradient checkpointing (the same arithmetic, recomputed).
TRAJECTORY_FIELDS = (
    "resolution", "train_batch_size", "gradient_accumulation_steps", "learning_rate", "adam_weight_decay",
    "lr_scheduler", "lr_warmup_steps", "max_grad_norm", "max_steps", "seed", "mixed_precision", "use_ema",
    "ema_decay", "conditioning_dropout", "random_flip", "train_timesteps", "prediction_type", "cache_latents", "tasks",
)
#: The fields of the one-step objective: in the key of a one-step run only, so the key (and the folder
#: name) of a diffusion run stays what it was before the objective existed.
ONESTEP_FIELDS = ("objective", "onestep_loss")
#: Fields that count only when they differ from their default, for the same reason: the starting
#: weights differ with the conv_in init, and a run with the default keeps its key and folder.
DEFAULT_OMITTED_FIELDS = {"image_conv_in_init": "zeros"}


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resume_key(config: TrainConfig, num_processes: int) -> dict:
    """Everything that determines a run's trajectory: the recipe, the data, the base and the world size.

    The manifest counts by its bytes (rows, order, instructions; its images are named by content
    digest) and the base model by :func:`instructcv_core.model.identity.base_identity` (a base rebuilt at
    the same path is another base). ``num_processes``: the accelerate world size (it changes the
    global batch and the per-process random draws).
    """
    from instructcv_core.model.identity import base_identity
    from instructcv_core.training.recipe import resolve_for_manifest

    # effective_batch_size and num_train_epochs count through what they resolve to (accumulation, max_steps)
    values = resolve_for_manifest(config, num_processes).to_dict()
    onestep = {name: values[name] for name in ONESTEP_FIELDS} if config.objective != "diffusion" else {}
    changed = {name: values[name] for name, default in DEFAULT_OMITTED_FIELDS.items() if values[name] != default}
    return {**{name: values[name] for name in TRAJECTORY_FIELDS}, **onestep, **changed, "num_processes": int(num_processes),
            "manifest": file_digest(config.manifest), "base_model": base_identity(config.base_model)}


def run_digest(config: TrainConfig, num_processes: int) -> str:
    """A short name for a run: a digest of its resume key (:func:`resume_key`).

    A finished run is reused by its name; everything that does not change the trajectory (logging,
    cadence, paths) may change and still find the same run.
    """
    key = resume_key(config, num_processes)
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def checkpoint_dirs(output_dir: Path) -> list[Path]:
    """Complete checkpoints (renamed into place only when fully written), oldest first."""
    folder = Path(output_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


@dataclass
class Position:
    """Where a run is: optimizer steps done, the epoch, and the micro-batches of it consumed."""

    global_step: int = 0
    epoch: int = 0
    position: int = 0


def save_checkpoint(accelerator, output_dir: Path, position: Position, batches_per_epoch: int, key: dict,
                    total_limit: int | None) -> Path:
    """Save the accelerate state and ``train_state.json`` as ``checkpoints/step-XXXXXX`` (atomic rename).

    Keeps the ``total_limit`` newest checkpoints (all when None). All processes must call it.
    """
    state = {"global_step": position.global_step, "epoch": position.epoch, "position": position.position,
             "batches_per_epoch": batches_per_epoch, "resume_key": key}
    final = Path(output_dir) / "checkpoints" / f"{CHECKPOINT_PREFIX}{state['global_step']:06d}"
    if final.exists():
        return final
    tmp = final.parent / f".tmp-{final.name}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # model, optimizer, lr scheduler, EMA (registered), RNG states
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1, sort_keys=True))
        os.replace(tmp, final)  # atomic: a killed run leaves only a .tmp- folder, ignored and replaced
        if total_limit is not None:
            for old in checkpoint_dirs(output_dir)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def resume(accelerator, output_dir: Path, key: dict) -> tuple[Position, int | None]:
    """Load the last complete checkpoint of ``output_dir`` if any: ``(position, resumed_from step or None)``.

    Raises a ValueError naming the differing resume-key fields when the checkpoint belongs to another
    run configuration. (The EMA, registered for checkpointing, is restored with the rest; move it
    back to the device afterwards.)
    """
    checkpoints = checkpoint_dirs(output_dir)
    if not checkpoints:
        return Position(), None
    state = json.loads((checkpoints[-1] / STATE_FILE).read_text())
    saved = state.get("resume_key", {})
    changed = sorted(k for k in set(key) | set(saved) if saved.get(k) != key.get(k))
    if changed:
        raise ValueError(f"{checkpoints[-1]} was written by a run with different {', '.join(changed)}; "
                         f"use another output_dir or delete {Path(output_dir) / 'checkpoints'} to start over")
    accelerator.load_state(str(checkpoints[-1]))
    return Position(state["global_step"], state["epoch"], state["position"]), state["global_step"]


def truncate_losses(path: Path, last_step: int) -> None:
    """Keep the losses of steps <= last_step (a killed run may have logged beyond its checkpoint)."""
    from instructcv_core.data.records import atomic_write_text

    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by the kill
            continue
        if entry.get("step", math.inf) <= last_step:
            kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def last_logged_loss(path: Path) -> float | None:
    """The loss of the last line of ``losses.jsonl`` (None without one)."""
    if not path.exists():
        return None
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return json.loads(lines[-1])["loss"] if lines else None
