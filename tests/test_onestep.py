"""One-step fine-tuning (``objective: onestep``) on the tiny SD-shaped base of test_train.py.

Covers: the loss is the hand-computed x0 loss of one DDIM step at t = T - 1 (epsilon and
v-prediction; latent and pixel losses), a short fine-tune lowers its own loss, the saved pipeline runs
the trained step with the stock diffusers pipeline, exact resume, the resume key, the learning-rate
schedule, and the Dagster assets.
"""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from instructcv_core.training.config import TrainConfig
from instructcv_core.training.loop import train
from test_train import RES, config_for, data, make_data, read_losses, tiny_base, unet_weights  # noqa: F401 (session fixtures)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ONESTEP = {"objective": "onestep", "conditioning_dropout": (0.0, 0.0, 0.0), "use_ema": False}


def _objective(base_model, data, **recipe):
    """A one-step objective around the (8-channel) UNet of ``base_model`` and the first batch of 4 pairs."""
    from instructcv_core.data.imagestore import ImageStore
    from instructcv_core.training import data as D
    from instructcv_core.training.setup import frozen_parts, load_trainable_base
    from instructcv_core.training.step import DiffusionObjective, TextEmbeddings

    config = config_for(base_model, data, Path("unused"), **{**ONESTEP, **recipe})
    base = load_trainable_base(config)
    frozen = frozen_parts(base, "no", torch.device("cpu"))
    texts = TextEmbeddings(base.tokenizer, frozen.text_encoder)
    objective = DiffusionObjective.from_config(config, base.unet, base, frozen, texts)
    frame = D.read_manifest(config.manifest)
    loader = D.make_loader(D.PairDataset(frame, ImageStore(Path(config.image_store)), RES), 4, seed=0)
    return objective, list(loader)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("loss", ["latent", "pixel_l1", "pixel_l2"])
def test_onestep_loss_is_the_x0_loss_of_one_ddim_step_at_the_last_timestep(tiny_base, data, prediction_type, loss):
    from instructcv_core.model.prompts import encode_prompt
    from instructcv_core.training.data import seeded_generator

    objective, batches = _objective(tiny_base, data, prediction_type=prediction_type, onestep_loss=loss)
    batch = batches[0]
    seen = []
    forward = objective.unet.forward
    objective.unet.forward = lambda x, t, **kw: (seen.append(t.clone()), forward(x, t, **kw))[1]
    got = objective.micro_batch_loss(batch, seeded_generator(0, 1, 0, 0))
    objective.unet.forward = forward
    assert got.requires_grad and torch.equal(seen[0], torch.full((4,), 999))

    # By hand: the same draws (flip, then the initial noise), SD's scaled-linear schedule at t = 999.
    g = seeded_generator(0, 1, 0, 0)
    flip = (torch.rand(4, generator=g) < 0.5)[:, None, None, None]
    inputs = torch.where(flip, batch["input"].flip(-1), batch["input"])
    targets = torch.where(flip, batch["target"].flip(-1), batch["target"])
    vae, sf = objective.vae, objective.scaling_factor
    with torch.no_grad():
        image_latents = vae.encode(inputs).latent_dist.mean
        target_latents = vae.encode(targets).latent_dist.mean * sf
        z = torch.randn(target_latents.shape, generator=g)
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
        a = torch.cumprod(1 - betas, 0)[999].float()
        text = torch.cat([encode_prompt(objective.texts.tokenizer, objective.texts.text_encoder, [p])
                          for p in batch["instruction"]])
        out = objective.unet(torch.cat([z, image_latents], 1), 999, encoder_hidden_states=text).sample
        x0 = a.sqrt() * z - (1 - a).sqrt() * out if prediction_type == "v_prediction" else (z - (1 - a).sqrt() * out) / a.sqrt()
        if loss == "latent":
            expected = F.mse_loss(x0, target_latents)
        else:
            decoded = vae.decode(x0 / sf).sample
            expected = F.l1_loss(decoded, targets) if loss == "pixel_l1" else F.mse_loss(decoded, targets)
    assert torch.allclose(got.detach(), expected, rtol=1e-4, atol=1e-7), (got.item(), expected.item())


def _mean_onestep_loss(base_model, data, loss="latent") -> float:
    """The one-step loss of ``base_model`` over every pair, with fixed draws (an evaluation, no update)."""
    from instructcv_core.training.data import seeded_generator

    objective, batches = _objective(base_model, data, onestep_loss=loss)
    with torch.no_grad():
        return float(np.mean([objective.micro_batch_loss(b, seeded_generator(7, i)).item() for i, b in enumerate(batches)]))


def test_onestep_fine_tune_lowers_its_loss_and_saves_the_pipeline_that_runs_it(tiny_base, data, tmp_path):
    from diffusers import StableDiffusionInstructPix2PixPipeline
    from PIL import Image

    from instructcv_core.model.prompts import encode_prompt
    from instructcv_core.training.step import predicted_x0

    result = train(config_for(tiny_base, data, tmp_path / "run", max_steps=20, checkpointing_steps=20, sample_every=20,
                              sample_rows=2, **ONESTEP))
    pipeline_dir = Path(result.pipeline_dir)
    assert (tmp_path / "run" / "samples" / "step-000020.png").is_file()  # the preview samples one unguided step
    # Set before measuring: 20 steps at lr 1e-3 bring the one-step latent loss below 70 % of the start's
    # (the untrained tiny base's); a model that learned nothing stays at about 100 %.
    before, after = _mean_onestep_loss(tiny_base, data), _mean_onestep_loss(pipeline_dir, data)
    print(f"one-step latent loss: start {before:.5f}, after 20 steps {after:.5f}")
    assert after < 0.7 * before, (before, after)
    assert result.extra["objective"] == "onestep"
    assert json.loads((tmp_path / "run" / "train_result.json").read_text())["config"]["objective"] == "onestep"

    # The saved scheduler: DDIM, trailing spacing, alpha_0 = 1, so one stock step is the trained step.
    config = json.loads((pipeline_dir / "scheduler" / "scheduler_config.json").read_text())
    assert config["_class_name"] == "DDIMScheduler"
    assert (config["timestep_spacing"], config["set_alpha_to_one"], config["clip_sample"]) == ("trailing", True, False)
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(str(pipeline_dir), safety_checker=None,
                                                                  requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler.set_timesteps(1)
    assert pipe.scheduler.timesteps.tolist() == [999]
    # The stock pipeline (1 step, no guidance) returns the decoded x0 of the trained step.
    image = np.random.default_rng(0).integers(0, 256, (RES, RES, 3), dtype=np.uint8)
    z = torch.randn((1, 4, RES // 4, RES // 4), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = pipe("segment the square", image=Image.fromarray(image), num_inference_steps=1, guidance_scale=1.0,
                   image_guidance_scale=1.0, latents=z.clone(), output_type="pt").images
        cond = pipe.vae.encode(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1).latent_dist.mode()
        text = encode_prompt(pipe.tokenizer, pipe.text_encoder, ["segment the square"])
        pred = pipe.unet(torch.cat([z, cond], 1), 999, encoder_hidden_states=text).sample
        x0 = predicted_x0(pipe.scheduler, pred, z, torch.tensor([999]))
        expected = (pipe.vae.decode(x0 / pipe.vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    assert torch.allclose(out, expected, atol=1e-5), float((out - expected).abs().max())


def test_onestep_run_resumes_exactly_and_cached_pixel_targets_match_uncached(tiny_base, data, tmp_path):
    recipe = dict(max_steps=4, checkpointing_steps=2, onestep_loss="pixel_l1", **ONESTEP)
    cached = train(config_for(tiny_base, data, tmp_path / "cached", cache_latents=True, **recipe))
    plain = train(config_for(tiny_base, data, tmp_path / "plain", **recipe))
    a, b = [e["loss"] for e in read_losses(tmp_path / "cached")], [e["loss"] for e in read_losses(tmp_path / "plain")]
    assert np.allclose(a, b, rtol=1e-4, atol=1e-6), (a, b)  # same flips, same targets: the encodings' float noise only

    weights = unet_weights(Path(cached.pipeline_dir))
    out = tmp_path / "cached"
    shutil.rmtree(out / "checkpoints" / "step-000004")  # as if killed between step 2's and step 4's checkpoints
    shutil.rmtree(out / "pipeline")
    (out / "train_result.json").unlink()
    resumed = train(config_for(tiny_base, data, out, cache_latents=True, **recipe))
    assert resumed.resumed_from == 2 and resumed.steps == 4
    assert [e["loss"] for e in read_losses(out)] == a
    again = unet_weights(Path(resumed.pipeline_dir))
    assert all(torch.equal(weights[k], again[k]) for k in weights)


def test_onestep_fields_count_in_the_resume_key_of_onestep_runs_only(tiny_base, data, tmp_path):
    from instructcv_core.training.checkpoint import ONESTEP_FIELDS, resume_key

    diffusion = config_for(tiny_base, data, tmp_path)
    key = resume_key(diffusion, 1)
    assert not set(ONESTEP_FIELDS) & set(key)  # a diffusion run's key (and folder) is what it was before
    assert resume_key(dataclasses.replace(diffusion, onestep_loss="pixel_l1"), 1) == key
    onestep = dataclasses.replace(diffusion, objective="onestep")
    one_key = resume_key(onestep, 1)
    assert {k for k in one_key if key.get(k) != one_key[k]} == {"objective", "onestep_loss"}
    changed = resume_key(dataclasses.replace(onestep, onestep_loss="pixel_l2"), 1)
    assert {k for k in one_key if one_key[k] != changed[k]} == {"onestep_loss"}
    with pytest.raises(ValueError, match="onestep_loss"):
        dataclasses.replace(onestep, onestep_loss="pixel")
    with pytest.raises(ValueError, match="objective"):
        dataclasses.replace(onestep, objective="consistency")


def test_exponential_schedule_warms_up_then_decays_to_one_percent():
    from instructcv_core.training.setup import exponential_schedule, make_optimization

    factor = exponential_schedule(100, 20000)
    assert [factor(0), factor(50), factor(100)] == [0.0, 0.5, 1.0]
    assert factor(100 + 19900 // 2) == pytest.approx(0.1)  # halfway through the decay: sqrt(0.01)
    assert factor(20000) == pytest.approx(0.01) and factor(30000) == pytest.approx(0.01)
    config = TrainConfig(base_model="b", manifest="m", image_store="i", output_dir="o", learning_rate=3e-5,
                         lr_scheduler="exponential", lr_warmup_steps=2, max_steps=10)
    _, scheduler, _ = make_optimization(config, torch.nn.Linear(2, 2), 1)
    lrs = []
    for _ in range(11):
        lrs.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    assert lrs[:3] == [0.0, 1.5e-5, 3e-5] and lrs[10] == pytest.approx(3e-7)


def test_onestep_assets_start_from_the_ip2p_checkpoints_with_the_onestep_preset(tmp_path):
    import dagster as dg

    from assets.train import TrainAssetConfig, materialised_checkpoint, resolved_train_config
    from instructcv_core.presets import resolve
    from pipelines.definitions import defs
    from pipelines.resources import InstructCVSettings

    graph = defs.resolve_asset_graph()
    job = defs.resolve_job_def("full_reproduction")
    for variant in ("fp", "rp"):
        key = dg.AssetKey(f"instructcv_{variant}_onestep_checkpoint")
        node = graph.get(key)
        assert node.group_name == "train"
        assert set(node.parent_keys) == {dg.AssetKey(f"instructcv_{variant}_checkpoint"), dg.AssetKey(f"{variant}_manifest")}
        assert key in job.asset_layer.executable_asset_keys  # part of full_reproduction
    for profile in ("mini", "paper"):
        recipe = resolve(TrainConfig, profile, "train_onestep", base_model="b", manifest="m", image_store="i", output_dir="o")
        assert recipe.objective == "onestep"
    assert resolve(TrainConfig, "paper", "train_onestep", base_model="b", manifest="m", image_store="i",
                   output_dir="o").onestep_loss.startswith("pixel")

    # The recipe of the asset: the FP manifest, the given base, its own folder under train/fp_onestep.
    settings = InstructCVSettings(data_root=str(tmp_path))
    datasets = settings.profile_dir / "datasets"
    datasets.mkdir(parents=True)
    manifest, _ = make_data(tmp_path / "pairs", pairs=4)
    shutil.copy(manifest, datasets / "fp_manifest.parquet")
    base = tmp_path / "ip2p"
    base.mkdir()
    (base / "model_index.json").write_text("{}")
    recipe = resolved_train_config(TrainAssetConfig(), settings, "fp_onestep", manifest="fp", stage="train_onestep",
                                   base=str(base))
    assert (recipe.objective, recipe.base_model, Path(recipe.manifest).name) == ("onestep", str(base), "fp_manifest.parquet")
    assert Path(recipe.output_dir).parent == settings.profile_dir / "train" / "fp_onestep"

    with dg.DagsterInstance.ephemeral() as instance:
        with pytest.raises(FileNotFoundError, match="instructcv_fp_checkpoint has never been materialised"):
            materialised_checkpoint(instance, "fp")


def test_onestep_asset_trains_from_the_materialised_ip2p_checkpoint_through_pipes(tiny_base, tmp_path):
    """The asset body end to end (Pipes + accelerate + MLflow), from a reported FP materialisation."""
    import dagster as dg

    from assets.train import instructcv_fp_onestep_checkpoint
    from eval_fixture import point_checkpoint
    from pipelines.resources import InstructCVSettings, MlflowTracking

    datasets = tmp_path / "data" / "mini" / "datasets"
    manifest, _ = make_data(datasets, pairs=8)
    shutil.move(manifest, datasets / "fp_manifest.parquet")
    with dg.instance_for_test() as instance:
        point_checkpoint(tmp_path / "data" / "mini", "fp", tiny_base, instance)  # what the FP asset records
        recipe = {"max_steps": 2, "train_batch_size": 4, "checkpointing_steps": 2, "cache_latents": False}
        result = dg.materialize(
            [instructcv_fp_onestep_checkpoint], instance=instance,
            run_config={"ops": {"instructcv_fp_onestep_checkpoint": {"config": recipe}}},
            resources={"settings": InstructCVSettings(data_root=str(tmp_path / "data"), progress_bars=False),
                       "mlflow_tracking": MlflowTracking(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"),
                       "pipes_subprocess_client": dg.PipesSubprocessClient(env={"OMP_NUM_THREADS": "1"})})
    (mat,) = result.asset_materializations_for_node("instructcv_fp_onestep_checkpoint")
    pipeline_dir = Path(mat.metadata["checkpoint_path"].value)
    assert mat.metadata["steps"].value == 2 and pipeline_dir.parent.parent.name == "fp_onestep"
    assert Path(mat.metadata["train_result"].value).is_file() and mat.metadata["mlflow_model_id"].value
    config = json.loads(Path(mat.metadata["train_result"].value).read_text())["config"]
    assert (config["objective"], config["base_model"], Path(config["manifest"]).name) == \
        ("onestep", str(tiny_base), "fp_manifest.parquet")
    scheduler = json.loads((pipeline_dir / "scheduler" / "scheduler_config.json").read_text())
    assert (scheduler["_class_name"], scheduler["timestep_spacing"]) == ("DDIMScheduler", "trailing")
