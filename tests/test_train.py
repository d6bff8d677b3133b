"""Instruction tuning (`instructcv_core.training`) on a tiny SD-shaped base at 32 px.

Covers: a short run's outputs (losses, checkpoints, result, a pipeline stock diffusers loads and runs,
EMA weights saved), conditioning dropout, LitEma's warm-up, exact resume after SIGKILL (through
Dagster Pipes), cached vs uncached latents, and the early, clear failures.
"""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from instructcv_core.training import __main__ as cli
from instructcv_core.training.checkpoint import STATE_FILE, checkpoint_dirs
from instructcv_core.training.config import TrainConfig, load_config
from instructcv_core.training.data import EpochPermutationSampler
from instructcv_core.training.loop import train
from instructcv_core.training.setup import make_ema
from instructcv_core.training.step import apply_conditioning_dropout
from instructcv_core.data.imagestore import ImageStore
from instructcv_core.construction.manifest import MANIFEST_SCHEMA, write_table

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RES = 32


# ------------------------------------------------------------------------------------------------
# Fixtures: a tiny base and a handful of pairs


# One intra-op thread here and in the subprocesses (`_env`); see conftest.one_torch_thread.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    from instructcv_core.model.config import TinyModelConfig
    from instructcv_core.model.tiny_base import build_tiny_base

    config = TinyModelConfig(image_size=RES, vae_block_out_channels=(8, 16, 16), unet_block_out_channels=(16, 32),
                             text_encoder="minilm", prediction_type="epsilon", seed=0)
    return build_tiny_base(config, tmp_path_factory.mktemp("tiny_base") / "base")


def make_data(root: Path, pairs: int = 8) -> tuple[Path, Path]:
    """``pairs`` (input, target) pairs in an ImageStore and a manifest: noise inputs, white squares or colour blocks."""
    rng = np.random.default_rng(0)
    store = ImageStore(root / "images")
    rows = []
    for i in range(pairs):
        image = rng.integers(0, 256, (RES, RES, 3), dtype=np.uint8)
        if i % 2 == 0:
            task, instruction = "segmentation", "segment the square"
            target = np.zeros((RES, RES, 3), np.uint8)
            y, x = rng.integers(0, RES // 2, 2)
            target[y : y + RES // 2, x : x + RES // 3] = 255
        else:
            task, instruction = "classification", "show red if there is a cat, blue otherwise"
            target = np.zeros((RES, RES, 3), np.uint8) + np.array([255, 0, 0] if i % 4 == 1 else [0, 0, 255], np.uint8)
        rows.append({"pair_id": f"p{i:03d}", "sample_key": f"k{i:03d}", "role": "train", "task": task,
                     "instruction": instruction, "input_digest": store.put(image), "target_digest": store.put(target)})
    manifest = write_table(rows, root / "manifest.parquet", MANIFEST_SCHEMA)
    return manifest, store.root


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> tuple[Path, Path]:
    return make_data(tmp_path_factory.mktemp("train_data"))


def config_for(tiny_base, data, output_dir: Path, **overrides) -> TrainConfig:
    manifest, images = data
    values = dict(base_model=str(tiny_base), manifest=str(manifest), image_store=str(images), output_dir=str(output_dir),
                  resolution=RES, train_batch_size=4, max_steps=6, checkpointing_steps=3, learning_rate=1e-3,
                  log_every=2, seed=0)
    values.update(overrides)
    return TrainConfig(**values)


def read_losses(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(output_dir) / "losses.jsonl").read_text().splitlines()]


def unet_weights(pipeline_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(pipeline_dir) / "unet" / "diffusion_pytorch_model.safetensors"))


# ------------------------------------------------------------------------------------------------
# A short run


def test_short_run_writes_a_pipeline_stock_diffusers_loads_with_ema_weights(tiny_base, data, tmp_path):
    import mlflow
    from diffusers import StableDiffusionInstructPix2PixPipeline
    from mlflow.tracking import MlflowClient
    from PIL import Image
    from safetensors.torch import load_file

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("t", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    logged = []
    out = tmp_path / "run"
    result = train(config_for(tiny_base, data, out, sample_every=3, sample_rows=2, sample_steps=2,
                                mlflow_tracking_uri=uri, mlflow_run_id=run_id), on_log=logged.append)

    assert result.steps == 6 and result.resumed_from is None
    assert np.isfinite(result.final_loss) and result.samples_per_second > 0
    losses = read_losses(out)
    assert [e["step"] for e in losses] == list(range(1, 7))
    assert all(e["lr"] == pytest.approx(1e-3) for e in losses)
    assert result.final_loss == losses[-1]["loss"]
    assert [r["step"] for r in logged] == [2, 4, 6]
    summary = json.loads((out / "train_result.json").read_text())
    assert summary["steps"] == 6 and summary["pipeline_dir"] == str(out / "pipeline") and summary["config"]["max_steps"] == 6
    # checkpoints_total_limit 2: steps 3 and 6 remain, complete (renamed into place with their state)
    assert [p.name for p in checkpoint_dirs(out)] == ["step-000003", "step-000006"]
    assert json.loads((out / "checkpoints" / "step-000006" / STATE_FILE).read_text())["global_step"] == 6
    assert Image.open(out / "samples" / "step-000006.png").size == (2 * RES, 3 * RES)
    history = client.get_metric_history(run_id, "loss")
    assert sorted(m.step for m in history) == list(range(1, 7))
    assert client.get_run(run_id).info.status == "RUNNING"  # the run belongs to the caller
    assert mlflow.get_tracking_uri()  # (mlflow imported fine)

    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(str(out / "pipeline"))
    assert pipe.unet.config.in_channels == 8
    assert type(pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    image = Image.fromarray(np.full((RES, RES, 3), 128, np.uint8))
    images = pipe("segment the square", image=image, num_inference_steps=2, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, RES, RES, 3) and np.isfinite(images).all()

    # The saved UNet holds the EMA weights (the EMA state of the last checkpoint), not the raw weights.
    ema_state = torch.load(out / "checkpoints" / "step-000006" / "custom_checkpoint_0.pkl", weights_only=False)
    assert ema_state["optimization_step"] == 6 and ema_state["decay"] == 0.9999
    raw = load_file(str(out / "checkpoints" / "step-000006" / "model.safetensors"))
    names = [name for name, _ in pipe.unet.named_parameters()]
    saved = unet_weights(out / "pipeline")
    assert len(names) == len(ema_state["shadow_params"])
    for name, shadow in zip(names, ema_state["shadow_params"]):
        assert torch.equal(saved[name], shadow), name
    assert any(not torch.equal(saved[name], raw[name]) for name in names)

    # Continuing into the same output_dir with a different batch size is refused, by name.
    with pytest.raises(ValueError, match="train_batch_size"):
        train(config_for(tiny_base, data, out, max_steps=8, train_batch_size=2))


# ------------------------------------------------------------------------------------------------
# Recipe pieces


def test_conditioning_dropout_replaces_text_image_or_both():
    n, text, image = 400, torch.randn(400, 5, 3) + 3, torch.randn(400, 4, 2, 2) + 3
    null = torch.zeros(1, 5, 3) - 7

    def run(probs, seed=0):
        return apply_conditioning_dropout(text, image, null, probs, torch.Generator().manual_seed(seed))

    t, i = run((1.0, 0.0, 0.0))
    assert (t == -7).all() and torch.equal(i, image)
    t, i = run((0.0, 0.0, 1.0))
    assert torch.equal(t, text) and (i == 0).all()
    t, i = run((0.0, 1.0, 0.0))
    assert (t == -7).all() and (i == 0).all()
    t, i = run((0.0, 0.0, 0.0))
    assert torch.equal(t, text) and torch.equal(i, image)
    # the official 5/5/5: text null 10%, image null 10%, both 5% (about), and reproducible per seed
    t, i = run((0.05, 0.05, 0.05))
    text_null, image_null = (t == -7).all(dim=(1, 2)), (i == 0).all(dim=(1, 2, 3))
    assert 0.04 < text_null.float().mean() < 0.17 and 0.04 < image_null.float().mean() < 0.17
    assert 0.01 < (text_null & image_null).float().mean() < 0.10
    t2, i2 = run((0.05, 0.05, 0.05))
    assert torch.equal(t, t2) and torch.equal(i, i2)


def test_ema_follows_litema_warmup():
    module = torch.nn.Linear(3, 2)
    ema = make_ema(module, 0.9999)
    shadow = [p.detach().clone() for p in module.parameters()]
    for n in range(1, 8):
        with torch.no_grad():
            for p in module.parameters():
                p.add_(torch.randn_like(p))
        ema.step(module.parameters())
        decay = min(0.9999, (1 + n) / (10 + n))  # LitEma's n-th update
        shadow = [s - (1 - decay) * (s - p.detach()) for s, p in zip(shadow, module.parameters())]
        for s, e in zip(shadow, ema.shadow_params):
            assert torch.allclose(s, e, atol=1e-6)


def test_epoch_permutation_depends_only_on_seed_and_epoch():
    a, b = EpochPermutationSampler(10, 3), EpochPermutationSampler(10, 3)
    b.set_epoch(1)
    first, second = list(a), list(b)
    assert sorted(first) == list(range(10)) and first != second
    a.set_epoch(1)
    assert list(a) == second


def test_load_config_yaml_and_json(tmp_path):
    values = {"base_model": "b", "manifest": "m.parquet", "image_store": "i", "output_dir": "o",
              "conditioning_dropout": [0.1, 0.0, 0.1], "tasks": ["depth"]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(values))
    (tmp_path / "c.json").write_text(json.dumps(values))
    for name in ("c.yaml", "c.json"):
        config = load_config(tmp_path / name)
        assert config.conditioning_dropout == (0.1, 0.0, 0.1) and config.tasks == ("depth",)
        assert TrainConfig(**config.to_dict()) == config
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**values, "learning_rat": 1}))
    with pytest.raises(ValueError, match="learning_rat"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match="conditioning_dropout"):
        TrainConfig(**{**values, "conditioning_dropout": (0.5, 0.5, 0.5)})


# ------------------------------------------------------------------------------------------------
# The step, checkpoints and the resume key, piece by piece


def _objective(tiny_base, data, **recipe):
    from instructcv_core.data.imagestore import ImageStore
    from instructcv_core.training import data as D
    from instructcv_core.training.setup import frozen_parts, load_trainable_base
    from instructcv_core.training.step import DiffusionObjective, TextEmbeddings

    config = config_for(tiny_base, data, Path("unused"), **recipe)
    base = load_trainable_base(config)
    frozen = frozen_parts(base, "no", torch.device("cpu"))
    texts = TextEmbeddings(base.tokenizer, frozen.text_encoder)
    objective = DiffusionObjective.from_config(config, base.unet, base, frozen, texts)
    frame = D.read_manifest(config.manifest)
    batch = next(iter(D.make_loader(D.PairDataset(frame, ImageStore(Path(config.image_store)), RES), 4, seed=0)))
    return config, objective, batch


def test_micro_batch_loss_depends_only_on_the_batch_and_its_generator(tiny_base, data):
    from instructcv_core.training.data import seeded_generator

    _, objective, batch = _objective(tiny_base, data)
    a = objective.micro_batch_loss(batch, seeded_generator(0, 5, 0, 0))
    b = objective.micro_batch_loss(batch, seeded_generator(0, 5, 0, 0))
    c = objective.micro_batch_loss(batch, seeded_generator(0, 6, 0, 0))
    assert a.item() == b.item() and a.item() != c.item() and a.requires_grad


def test_train_timesteps_bound_the_drawn_timesteps(tiny_base, data):
    from instructcv_core.training.data import seeded_generator

    drawn = {}
    for bounds in ((0, 1000), (990, 1000)):
        _, objective, batch = _objective(tiny_base, data, train_timesteps=bounds)
        add_noise = objective.noise_scheduler.add_noise
        seen = []
        objective.noise_scheduler.add_noise = lambda x, n, t: (seen.append(t.clone()), add_noise(x, n, t))[1]
        for step in range(5):
            objective.micro_batch_loss(batch, seeded_generator(0, step, 0, 0))
        drawn[bounds] = torch.cat(seen)
    assert int(drawn[(990, 1000)].min()) >= 990 and int(drawn[(990, 1000)].max()) <= 999
    assert int(drawn[(0, 1000)].min()) < 990  # the default draws from every timestep
    with pytest.raises(ValueError, match="train_timesteps"):
        TrainConfig(base_model="b", manifest="m", image_store="i", output_dir="o", train_timesteps=(10, 10))


def test_train_micro_batch_updates_the_weights_once_per_accumulation(tiny_base, data):
    from accelerate import Accelerator

    from instructcv_core.training.data import seeded_generator
    from instructcv_core.training.setup import make_optimization
    from instructcv_core.training.step import train_micro_batch

    config, objective, batch = _objective(tiny_base, data, gradient_accumulation_steps=2)
    accelerator = Accelerator(gradient_accumulation_steps=2)
    optimizer, lr_scheduler, _ = make_optimization(config, objective.unet, 1)
    objective.unet, optimizer, lr_scheduler = accelerator.prepare(objective.unet, optimizer, lr_scheduler)
    before = [p.detach().clone() for p in objective.unet.parameters()]
    train_micro_batch(accelerator, objective, optimizer, lr_scheduler, batch, seeded_generator(0, 0, 0, 0), None)
    assert all(torch.equal(p, q) for p, q in zip(before, objective.unet.parameters()))  # gradients accumulate
    train_micro_batch(accelerator, objective, optimizer, lr_scheduler, batch, seeded_generator(0, 0, 1, 0), None)
    assert any(not torch.equal(p, q) for p, q in zip(before, objective.unet.parameters()))


def test_checkpoint_round_trip_and_refusal_of_another_run(tmp_path):
    from accelerate import Accelerator

    from instructcv_core.training.checkpoint import Position, resume, save_checkpoint

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    accelerator = Accelerator()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    saved = [p.detach().clone() for p in model.parameters()]
    key = {"seed": 0, "learning_rate": 0.1}
    for step in (3, 6, 9):
        save_checkpoint(accelerator, tmp_path, Position(step, 1, 4), 10, key, total_limit=2)
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step-000006", "step-000009"]
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    position, resumed_from = resume(accelerator, tmp_path, key)
    assert position == Position(9, 1, 4) and resumed_from == 9
    assert all(torch.equal(p, q) for p, q in zip(saved, model.parameters()))
    with pytest.raises(ValueError, match=r"different learning_rate; use another output_dir"):
        resume(accelerator, tmp_path, {**key, "learning_rate": 0.2})
    assert resume(accelerator, tmp_path / "empty", key) == (Position(), None)


TRAJECTORY_CHANGES = {
    "resolution": 64, "train_batch_size": 2, "gradient_accumulation_steps": 2, "learning_rate": 2e-3,
    "adam_weight_decay": 0.0, "lr_scheduler": "cosine", "lr_warmup_steps": 3, "max_grad_norm": 1.0, "max_steps": 7,
    "seed": 1, "mixed_precision": "bf16", "use_ema": False, "ema_decay": 0.999, "conditioning_dropout": (0.1, 0.0, 0.0),
    "random_flip": False, "train_timesteps": (500, 1000), "prediction_type": "v_prediction", "cache_latents": True,
    "tasks": ("depth",),
}
CADENCE_CHANGES = {
    "output_dir": "elsewhere", "log_every": 1, "sample_every": 2, "sample_rows": 1, "sample_steps": 3,
    "checkpointing_steps": 1, "checkpoints_total_limit": 5, "mlflow_tracking_uri": "sqlite:///x.db",
    "mlflow_run_id": "abc", "dataloader_num_workers": 2, "allow_network": True, "gradient_checkpointing": True,
}
#: Recipe knobs that count through what they resolve to (`training.recipe`): field -> (value, key field it changes).
RECIPE_CHANGES = {"effective_batch_size": ({"effective_batch_size": 8}, "gradient_accumulation_steps"),
                  "num_train_epochs": ({"num_train_epochs": 2, "max_steps": 0}, "max_steps")}


def test_resume_key_covers_the_trajectory_and_nothing_else(tiny_base, data, tmp_path):
    import shutil

    from instructcv_core.training.checkpoint import (DEFAULT_OMITTED_FIELDS, ONESTEP_FIELDS, TRAJECTORY_FIELDS,
                                                     resume_key, run_digest)

    assert set(TRAJECTORY_CHANGES) == set(TRAJECTORY_FIELDS)
    # the one-step objective's fields count in one-step runs only (test_onestep.py), the conv_in init
    # when it is not the default (below)
    assert set(TRAJECTORY_CHANGES) | set(CADENCE_CHANGES) | set(RECIPE_CHANGES) | set(ONESTEP_FIELDS) | \
        set(DEFAULT_OMITTED_FIELDS) | \
        {"base_model", "manifest", "image_store"} == {f.name for f in dataclasses.fields(TrainConfig)}
    config = config_for(tiny_base, data, tmp_path / "out")
    key = resume_key(config, 1)
    for name, value in TRAJECTORY_CHANGES.items():
        changed = resume_key(dataclasses.replace(config, **{name: value}), 1)
        assert {k for k in key if key[k] != changed[k]} == {name}, name
    for name, value in CADENCE_CHANGES.items():
        assert resume_key(dataclasses.replace(config, **{name: value}), 1) == key, name
    for name, (values, changes) in RECIPE_CHANGES.items():
        changed = resume_key(dataclasses.replace(config, **values), 1)
        assert {k for k in key if key[k] != changed[k]} == {changes}, name
    assert resume_key(config, 2)["num_processes"] == 2
    # the conv_in init: absent from the key at its default (old keys unchanged), counted otherwise
    assert "image_conv_in_init" not in key
    copied = resume_key(dataclasses.replace(config, image_conv_in_init="copy"), 1)
    assert {k for k in copied if key.get(k) != copied[k]} == {"image_conv_in_init"}
    # the manifest by its bytes, the base model by its content (a base rebuilt at the same path differs)
    manifest = tmp_path / "manifest.parquet"
    shutil.copy(config.manifest, manifest)
    assert resume_key(dataclasses.replace(config, manifest=str(manifest)), 1) == key
    base = tmp_path / "base"
    shutil.copytree(config.base_model, base)
    assert resume_key(dataclasses.replace(config, base_model=str(base)), 1) == key
    (base / "scheduler" / "scheduler_config.json").write_text("{}")
    assert resume_key(dataclasses.replace(config, base_model=str(base)), 1)["base_model"] != key["base_model"]
    # a run's folder name: a digest of the resume key (where it stops is max_steps, part of the key)
    assert run_digest(dataclasses.replace(config, log_every=1), 1) == run_digest(config, 1)
    assert run_digest(dataclasses.replace(config, max_steps=config.max_steps + 1), 1) != run_digest(config, 1)
    assert not hasattr(config, "max_seconds")  # no wall-clock stop: a result never depends on the machine's load


# ------------------------------------------------------------------------------------------------
# Failures


def test_missing_base_model_fails_before_any_data_work(tmp_path):
    from instructcv_core.model.loading import BaseModelError

    config = TrainConfig(base_model=str(tmp_path / "no-such-base"), manifest=str(tmp_path / "no-such.parquet"),
                           image_store=str(tmp_path / "images"), output_dir=str(tmp_path / "out"))
    with pytest.raises(BaseModelError, match="no-such-base"):
        train(config)
    assert not (tmp_path / "out").exists()


def test_manifest_without_rows_for_the_tasks_fails_clearly(tiny_base, data, tmp_path):
    config = config_for(tiny_base, data, tmp_path / "out", tasks=("depth", "detection"))
    with pytest.raises(ValueError, match=r"manifest .*manifest\.parquet has no rows for tasks \['depth', 'detection'\]"):
        train(config)




# ------------------------------------------------------------------------------------------------
# Latent cache


def test_cached_latents_give_the_same_losses_and_the_cache_is_reused(tiny_base, data, tmp_path):
    from instructcv_core.training import latent_cache as latents

    plain = train(config_for(tiny_base, data, tmp_path / "plain", max_steps=4))
    cached = train(config_for(tiny_base, data, tmp_path / "cached", max_steps=4, cache_latents=True))
    assert cached.extra["latent_cache_built"]
    cache_file = Path(cached.extra["latent_cache"])
    assert cache_file.parent == Path(data[0]).parent / latents.CACHE_FOLDER
    # Same draws (flip, posterior eps, noise, timesteps, dropout), same statistics: same losses up to the
    # float noise of encoding images in different batches.
    a, b = [e["loss"] for e in read_losses(tmp_path / "plain")], [e["loss"] for e in read_losses(tmp_path / "cached")]
    assert np.allclose(a, b, rtol=1e-4, atol=1e-6), (a, b)
    # A second run reuses the file, untouched; a task-filtered run reads the same (covering) cache.
    stamp = cache_file.stat().st_mtime_ns
    again = train(config_for(tiny_base, data, tmp_path / "again", max_steps=1, cache_latents=True,
                               tasks=("segmentation",)))
    assert not again.extra["latent_cache_built"] and Path(again.extra["latent_cache"]) == cache_file
    assert again.steps == 1 and (tmp_path / "again" / "pipeline").is_dir()
    assert cache_file.stat().st_mtime_ns == stamp
    import pandas as pd

    manifest = pd.read_parquet(data[0])
    cache = latents.LatentCache.open(cache_file)
    assert cache.index.keys() == set(manifest["input_digest"]) | set(manifest["target_digest"])
    assert cache[manifest["input_digest"][0]].shape == (2, 2, 4, RES // 4, RES // 4)  # (flip, [mean, std], C, h, w)


# ------------------------------------------------------------------------------------------------
# Resume after SIGKILL, reported through Dagster Pipes


def _command(config_path: Path) -> list[str]:
    return [sys.executable, "-m", "instructcv_core.training", "--config", str(config_path)]


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_killed_run_resumes_to_the_same_losses_and_weights(tiny_base, data, tmp_path):
    import dagster as dg

    steps = 24
    reference = train(config_for(tiny_base, data, tmp_path / "reference", max_steps=steps, checkpointing_steps=4))
    assert reference.steps == steps

    out = tmp_path / "killed"
    config_path = tmp_path / "killed.yaml"
    config_path.write_text(yaml.safe_dump(config_for(tiny_base, data, out, max_steps=steps, checkpointing_steps=4).to_dict()))
    log = tmp_path / "killed.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen(_command(config_path), env=_env(), cwd=PROJECT_ROOT, stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not (out / "checkpoints" / "step-000004").exists():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "train_result.json").exists(), "the run finished before it was killed"
    killed_at = max(int(p.name.split("-")[1]) for p in checkpoint_dirs(out))
    assert killed_at < steps

    # Rerun the same command to completion as a Dagster asset through Pipes (rank 0 reports).
    @dg.asset
    def resumed(context: dg.AssetExecutionContext, pipes_subprocess_client: dg.PipesSubprocessClient):
        return pipes_subprocess_client.run(command=_command(config_path), context=context, env=_env()).get_materialize_result()

    outcome = dg.materialize([resumed], resources={"pipes_subprocess_client": dg.PipesSubprocessClient(cwd=str(PROJECT_ROOT))})
    assert outcome.success
    metadata = outcome.asset_materializations_for_node("resumed")[0].metadata
    assert metadata["steps"].value == steps and metadata["resumed_from"].value == killed_at
    assert metadata["checkpoint_path"].value == str(out / "pipeline")

    expected, got = read_losses(tmp_path / "reference"), read_losses(out)
    assert [e["step"] for e in got] == list(range(1, steps + 1))
    assert np.abs(np.array([e["loss"] for e in expected]) - np.array([e["loss"] for e in got])).max() < 1e-6
    a, b = unet_weights(tmp_path / "reference" / "pipeline"), unet_weights(out / "pipeline")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=0, atol=1e-7) for k in a)


def test_only_rank_zero_opens_dagster_pipes(monkeypatch, tmp_path):
    config_path = tmp_path / "c.yaml"
    config_path.write_text(yaml.safe_dump({"base_model": "b", "manifest": "m", "image_store": "i", "output_dir": "o"}))
    calls = []
    monkeypatch.setattr(cli, "train", lambda config, on_log=None: calls.append(on_log))
    monkeypatch.setenv("DAGSTER_PIPES_CONTEXT", "not-a-pipes-context")  # opening Pipes with it would fail
    for var, value in (("RANK", "1"), ("LOCAL_RANK", "2")):
        monkeypatch.delenv("RANK", raising=False)
        monkeypatch.delenv("LOCAL_RANK", raising=False)
        monkeypatch.setenv(var, value)
        assert cli.main(["--config", str(config_path)]) == 0
    assert calls == [None, None]
    # dagster_pipes stays out of import time
    check = "import sys, instructcv_core.training.__main__; assert 'dagster_pipes' not in sys.modules"
    subprocess.run([sys.executable, "-c", check], check=True, env=_env(), cwd=PROJECT_ROOT)
