"""The official training recipe's arithmetic (`training.recipe`) and data-parallel equivalence.

Effective batch = per-device batch x processes x accumulation; the length in epochs becomes
optimizer steps from the manifest's size; a run on two processes (`accelerate launch
--num_processes 2`, CPU, gloo) follows the loss curve of one process accumulating twice as many
micro-batches.
"""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from instructcv_core.presets import resolve
from instructcv_core.training.config import TrainConfig
from instructcv_core.training.recipe import (accumulation_steps, batches_per_process, resolve_for_manifest,
                                             resolve_schedule, samples_per_step, steps_per_epoch)
from test_train import tiny_base  # noqa: F401  (the session fixture: a tiny SD-shaped base)

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _config(**values) -> TrainConfig:
    return TrainConfig(**{"base_model": "b", "manifest": "m", "image_store": "i", "output_dir": "o", **values})


def test_accumulation_follows_the_world_size_for_the_official_4096():
    assert accumulation_steps(4096, 128, 8) == 4  # the official 128 x 8 GPUs x 4
    assert accumulation_steps(4096, 128, 1) == 32
    assert accumulation_steps(4096, 64, 16) == 4
    with pytest.raises(ValueError, match=r"4096 is not divisible by train_batch_size 128 x num_processes 3 = 384"):
        accumulation_steps(4096, 128, 3)


def test_paper_preset_is_the_official_recipe_and_resolves_per_world_size():
    config = resolve(TrainConfig, "paper", "train", base_model="b", manifest="m", image_store="i", output_dir="o")
    assert (config.effective_batch_size, config.train_batch_size, config.learning_rate, config.lr_scheduler,
            config.lr_warmup_steps, config.num_train_epochs, config.mixed_precision) == (4096, 128, 1e-4, "constant", 0, 20, "no")
    rows = 100_000
    one = resolve_schedule(config, 1, rows)
    eight = resolve_schedule(config, 8, rows)
    assert (one.gradient_accumulation_steps, eight.gradient_accumulation_steps) == (32, 4)
    assert samples_per_step(one, 1) == samples_per_step(eight, 8) == 4096
    # 100,000 rows: 781 full batches of 128; 8 processes get 97 each -> ceil(97 / 4) = 25 steps per epoch.
    assert batches_per_process(rows, 128, 8) == 97 and steps_per_epoch(rows, 128, 8, 4) == 25
    assert eight.max_steps == 20 * 25
    assert one.max_steps == 20 * steps_per_epoch(rows, 128, 1, 32) == 20 * 25  # ceil(781 / 32)
    assert resolve_schedule(eight, 8, rows) == eight  # idempotent
    with pytest.raises(ValueError, match="not divisible"):
        resolve_schedule(config, 3, rows)


def test_schedule_refuses_contradictions():
    with pytest.raises(ValueError, match="gradient_accumulation_steps 2 disagrees with effective_batch_size 64"):
        resolve_schedule(_config(train_batch_size=8, effective_batch_size=64, gradient_accumulation_steps=2), 2, 100)
    assert resolve_schedule(_config(train_batch_size=8, effective_batch_size=64, gradient_accumulation_steps=4), 2, 100) \
        .gradient_accumulation_steps == 4
    with pytest.raises(ValueError, match=r"max_steps 7 and num_train_epochs 2 .* both set"):
        resolve_schedule(_config(train_batch_size=8, num_train_epochs=2, max_steps=7), 1, 100)
    with pytest.raises(ValueError, match="set max_steps or num_train_epochs"):
        _config(max_steps=None)
    with pytest.raises(ValueError, match="no full batch"):
        resolve_schedule(_config(train_batch_size=8, num_train_epochs=1, max_steps=0), 2, 15)
    plain = resolve_schedule(_config(train_batch_size=8, max_steps=5), 4, 0)  # no recipe knobs: as given
    assert (plain.gradient_accumulation_steps, plain.max_steps) == (1, 5)


def test_epochs_are_counted_from_the_manifest_rows_of_the_trained_tasks(tmp_path):
    from test_train import make_data

    manifest, _ = make_data(tmp_path, pairs=12)  # 6 segmentation, 6 classification rows
    config = _config(manifest=str(manifest), train_batch_size=2, effective_batch_size=4, num_train_epochs=3, max_steps=0)
    assert resolve_for_manifest(config, 1).max_steps == 3 * 3  # 6 batches of 2, 2 per step
    only_seg = resolve_for_manifest(dataclasses.replace(config, tasks=("segmentation",)), 1)
    assert only_seg.max_steps == 3 * 2  # 3 batches of 2 -> ceil(3 / 2) = 2 steps per epoch


# ------------------------------------------------------------------------------------------------
# Two processes (accelerate launch, CPU, gloo) == one process with the same effective batch


def _launch(config: TrainConfig, path: Path, num_processes: int) -> subprocess.CompletedProcess:
    path.write_text(yaml.safe_dump(config.to_dict()))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    # accelerate's torchrun launcher (--multi_gpu) passes ACCELERATE_USE_CPU through to the processes,
    # which then form a gloo process group on the CPU (the --cpu flag alone starts one process).
    env["ACCELERATE_USE_CPU"] = "true"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--num_cpu_threads_per_process", "1", "--main_process_port", str(_free_port()),
               *(["--multi_gpu"] if num_processes > 1 else []),
               "-m", "instructcv_core.training", "--config", str(path)]
    done = subprocess.run(command, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    (path.parent / f"{path.stem}.log").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_two_processes_follow_the_one_process_loss_curve(tiny_base, tmp_path):
    from test_train import config_for, make_data, read_losses, unet_weights

    data = make_data(tmp_path / "data", pairs=16)
    # Effective batch 8 = 2 per device x 2 processes x 2 micro-batches = 2 x 1 process x 4 micro-batches;
    # 16 rows -> 8 batches -> 2 optimizer steps per epoch; 3 epochs = 6 steps.
    common = dict(train_batch_size=2, effective_batch_size=8, num_train_epochs=3, max_steps=0, checkpointing_steps=3,
                  learning_rate=1e-3, gradient_accumulation_steps=None)
    two = config_for(tiny_base, data, tmp_path / "two", **common)
    one = config_for(tiny_base, data, tmp_path / "one", **common)
    _launch(two, tmp_path / "two.yaml", 2)
    _launch(one, tmp_path / "one.yaml", 1)
    result_two = json.loads((tmp_path / "two" / "train_result.json").read_text())
    result_one = json.loads((tmp_path / "one" / "train_result.json").read_text())
    assert result_two["extra"]["num_processes"] == 2 and result_one["extra"]["num_processes"] == 1
    assert (result_two["config"]["gradient_accumulation_steps"], result_one["config"]["gradient_accumulation_steps"]) == (2, 4)
    assert result_two["steps"] == result_one["steps"] == 6

    curve_two = np.array([e["loss"] for e in read_losses(tmp_path / "two")])
    curve_one = np.array([e["loss"] for e in read_losses(tmp_path / "one")])
    assert len(curve_two) == len(curve_one) == 6
    assert np.abs(curve_two - curve_one).max() < 1e-5, (curve_two, curve_one)
    a, b = unet_weights(tmp_path / "two" / "pipeline"), unet_weights(tmp_path / "one" / "pipeline")
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-5) for k in a)

    # The check can fail: half the effective batch (one process, 2 micro-batches) is another curve.
    half = config_for(tiny_base, data, tmp_path / "half", **{**common, "effective_batch_size": 4})
    _launch(half, tmp_path / "half.yaml", 1)
    curve_half = np.array([e["loss"] for e in read_losses(tmp_path / "half")])[:6]
    assert np.abs(curve_half - curve_one).max() > 1e-3
