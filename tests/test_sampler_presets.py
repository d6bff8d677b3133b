"""Sampler presets (`paper`, `few`, `one`): what each runs, how they resolve, and how results are labelled."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from instructcv_core.inference.config import SAMPLER_PRESETS, Request, SamplerConfig
from instructcv_core.inference.sampler import InstructCVSampler
from instructcv_core.presets import PRESETS, resolve

RES = 32
REQUESTS = [Request("img0", "segment the cat", 1), Request("img0", "segment the dog", 2),
            Request("img1", "segment the cat", 3), Request("img1", "estimate the depth", 4),
            Request("img0", "detect the dog", 5)]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {f"img{i}": rng.integers(0, 256, (RES, RES, 3), dtype=np.uint8) for i in range(2)}


@pytest.fixture(scope="module")
def components(tiny_pipeline_dir):
    from diffusers import StableDiffusionInstructPix2PixPipeline

    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
        tiny_pipeline_dir, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, dict(pipe.scheduler.config)


def make_sampler(components, config: SamplerConfig, prediction_type: str = "epsilon") -> InstructCVSampler:
    unet, vae, text_encoder, tokenizer, scheduler_config = components
    # as SD v1.5 ships its scheduler config (set_alpha_to_one false), plus clip_sample on: the sampler
    # must override both for DDIM
    scheduler_config = {**scheduler_config, "prediction_type": prediction_type, "set_alpha_to_one": False,
                        "clip_sample": True}
    return InstructCVSampler(unet, vae, text_encoder, tokenizer, scheduler_config, config)


def count_unet_calls(sampler: InstructCVSampler) -> list[tuple[int, int]]:
    """(batch rows, timestep) of every UNet call the sampler makes from now on."""
    calls, forward = [], sampler.unet.forward
    sampler.unet.forward = lambda x, t, *a, **k: (calls.append((x.shape[0], int(t))), forward(x, t, *a, **k))[1]
    return calls


def alphas_cumprod() -> torch.Tensor:
    """SD v1.5's training schedule (scaled-linear betas 0.00085..0.012), written out independently of diffusers."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


# ------------------------------------------------------------------------------------------------
# What each preset runs


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_one_is_the_models_x0_estimate_at_t999_in_one_unet_call_per_batch(components, images, prediction_type):
    s = make_sampler(components, SamplerConfig.from_preset("one", resolution=RES, batch_size=4), prediction_type)
    calls = count_unet_calls(s)
    outputs = dict(s.generate(REQUESTS, images))
    assert calls == [(4, 999), (1, 999)]  # one UNet evaluation per query: 5 queries, batches of 4 and 1
    assert s.config.unet_evals_per_query == 1 and s.config.label == "one"

    # by hand: the UNet's prediction at t = 999 from each request's own initial noise, turned into x0
    a = alphas_cumprod()[999].float()
    expected = []
    for r in REQUESTS:
        image_latent = s.image_latents([r.image_key], images)
        z = torch.randn(image_latent.shape[1:], generator=torch.Generator().manual_seed(r.seed))[None]
        with torch.no_grad():
            out = type(s.unet).forward(s.unet, torch.cat([z, image_latent], dim=1), 999,
                                       encoder_hidden_states=s.text_embeddings([r.instruction]), return_dict=False)[0]
        x0 = a.sqrt() * z - (1 - a).sqrt() * out if prediction_type == "v_prediction" else (z - (1 - a).sqrt() * out) / a.sqrt()
        expected.append(x0[0])
    expected = torch.stack(expected)
    ours = torch.cat([s.denoise(REQUESTS[:4], images), s.denoise(REQUESTS[4:], images)])
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    # the decoded output is that x0 decoded
    from instructcv_core.model.autoencoder import tensor_to_images

    with torch.no_grad():
        decoded = tensor_to_images(s.vae.decode(expected / s.vae.config.scaling_factor, return_dict=False)[0])
    assert max(np.abs(decoded[i].astype(int) - outputs[i].astype(int)).max() for i in range(len(REQUESTS))) <= 1

    # the check can fail: the scheduler config as shipped (set_alpha_to_one false) ends elsewhere
    from diffusers import DDIMScheduler

    shipped = DDIMScheduler.from_config({**s._scheduler_config, "set_alpha_to_one": False, "clip_sample": False})
    shipped.set_timesteps(1)
    z = torch.stack([torch.randn(expected.shape[1:], generator=torch.Generator().manual_seed(r.seed)) for r in REQUESTS[:4]])
    with torch.no_grad():
        out = type(s.unet).forward(s.unet, torch.cat([z, s.image_latents([r.image_key for r in REQUESTS[:4]], images)], 1),
                                   999, encoder_hidden_states=s.text_embeddings([r.instruction for r in REQUESTS[:4]]),
                                   return_dict=False)[0]
    unforced = shipped.step(out, 999, z, return_dict=False)[0]
    assert (unforced - expected[:4]).abs().max() > 1e-2


def test_one_with_guidance_is_three_evaluations_at_t999(components, images):
    config = SamplerConfig.from_preset("one", text_guidance=7.5, image_guidance=1.5, resolution=RES, batch_size=4)
    s = make_sampler(components, config)
    calls = count_unet_calls(s)
    guided = dict(s.generate(REQUESTS, images))
    assert calls == [(12, 999), (3, 999)]
    assert (config.label, config.unet_evals_per_query, config.unet_evaluations(5)) == ("one+cfg(7.5/1.5)", 3, 15)
    plain = dict(make_sampler(components, SamplerConfig.from_preset("one", resolution=RES, batch_size=4)).generate(REQUESTS, images))
    assert max(np.abs(guided[i].astype(int) - plain[i].astype(int)).max() for i in guided) > 0  # guidance changes the output


def test_few_runs_trailing_ddim_steps_from_t999(components, images):
    config = SamplerConfig.from_preset("few", resolution=RES, batch_size=5)
    assert (config.steps, config.scheduler, config.timestep_spacing, config.text_guidance, config.image_guidance) == (
        4, "ddim", "trailing", 7.5, 1.5)
    s = make_sampler(components, config)
    calls = count_unet_calls(s)
    dict(s.generate(REQUESTS, images))
    assert calls == [(15, 999), (15, 749), (15, 499), (15, 249)]
    assert (config.label, config.unet_evals_per_query) == ("few-4", 12)
    assert SamplerConfig.from_preset("few", steps=10).label == "few-10"
    for steps in (1, 11, 100):
        with pytest.raises(ValueError, match=r"preset few takes 2\.\.10 steps, got steps " + str(steps)):
            SamplerConfig.from_preset("few", steps=steps)


def test_paper_preset_is_the_official_recipe_and_the_defaults():
    paper = SamplerConfig.from_preset("paper")
    assert dataclasses.replace(paper, preset="") == SamplerConfig()
    assert (paper.steps, paper.scheduler, paper.timestep_spacing, paper.text_guidance, paper.image_guidance) == (
        100, "euler_ancestral", "", 7.5, 1.5)
    assert (paper.label, paper.unet_evals_per_query) == ("paper", 300)
    # every preset sets the same knobs: switching presets never keeps a value of the previous one
    assert len({frozenset(values) for values in SAMPLER_PRESETS.values()}) == 1


# ------------------------------------------------------------------------------------------------
# Labels: from the values, never from the name


@pytest.mark.parametrize("knobs, label", [
    ({}, "paper"),
    ({"preset": "paper", "batch_size": 3, "dtype": "float16", "resolution": 64, "device": "cpu"}, "paper"),
    ({"scheduler": "ddim", "timestep_spacing": "trailing", "steps": 4}, "few-4"),
    ({"scheduler": "ddim", "timestep_spacing": "trailing", "steps": 1, "text_guidance": 1.0}, "one"),
    ({"scheduler": "ddim", "timestep_spacing": "trailing", "steps": 1, "text_guidance": 3.0, "image_guidance": 1.0},
     "one+cfg(3/1)"),
    ({"steps": 8}, "custom(euler_ancestral, 8 steps, cfg 7.5/1.5)"),
    ({"text_guidance": 5.0}, "custom(euler_ancestral, 100 steps, cfg 5/1.5)"),
    ({"timestep_spacing": "trailing"}, "custom(euler_ancestral trailing, 100 steps, cfg 7.5/1.5)"),
    ({"scheduler": "ddim", "steps": 1, "text_guidance": 1.0}, "custom(ddim, 1 step, no guidance)"),  # leading: t = 1
    ({"scheduler": "ddim", "timestep_spacing": "trailing", "steps": 12}, "custom(ddim trailing, 12 steps, cfg 7.5/1.5)"),
    ({"scheduler": "ddim", "timestep_spacing": "trailing", "steps": 4, "text_guidance": 1.0},
     "custom(ddim trailing, 4 steps, no guidance)"),
])
def test_label_names_the_procedure_from_the_values(knobs, label):
    assert SamplerConfig(**knobs).label == label


def test_label_cannot_claim_a_preset_whose_values_were_changed():
    assert SamplerConfig(preset="one").label == "paper"  # the name alone applies nothing
    assert resolve(SamplerConfig, "mini", "sampler", {"steps": 3}).label == "custom(ddim trailing, 3 steps, no guidance)"
    assert resolve(SamplerConfig, "paper", "sampler", {"image_guidance": 1.2}).label == "custom(euler_ancestral, 100 steps, cfg 7.5/1.2)"


# ------------------------------------------------------------------------------------------------
# Resolution: dataclass defaults < profile preset < named preset < explicit knobs


#: The mini sampler before presets existed, field by field.
MINI_BEFORE = {"steps": 1, "scheduler": "ddim", "timestep_spacing": "trailing", "text_guidance": 1.0,
               "image_guidance": 1.0, "batch_size": 64, "dtype": "float32"}


def test_profile_presets_name_a_sampler_preset_and_resolve_to_the_values_before():
    assert PRESETS["mini"]["sampler"] == {"preset": "one", "batch_size": 64, "dtype": "float32"}
    assert PRESETS["paper"]["sampler"] == {"preset": "paper", "batch_size": 64, "dtype": "float16"}
    for profile, before in (("mini", MINI_BEFORE), ("paper", {"steps": 100, "batch_size": 64, "dtype": "float16"})):
        resolved, expected = resolve(SamplerConfig, profile, "sampler"), SamplerConfig(**before)
        assert resolved.preset == PRESETS[profile]["sampler"]["preset"]
        for f in dataclasses.fields(SamplerConfig):
            if f.name != "preset":
                assert getattr(resolved, f.name) == getattr(expected, f.name), (profile, f.name)
    assert resolve(SamplerConfig, "mini", "sampler").label == "one"
    assert resolve(SamplerConfig, "paper", "sampler").label == "paper"


def test_named_preset_sits_between_the_profile_and_the_run_config(monkeypatch):
    monkeypatch.setitem(PRESETS["mini"], "sampler", {"preset": "few", "steps": 50, "batch_size": 3})
    assert (resolve(SamplerConfig, "mini", "sampler").steps, resolve(SamplerConfig, "mini", "sampler").batch_size) == (4, 3)
    assert resolve(SamplerConfig, "mini", "sampler", {"steps": 8}).label == "few-8"
    one = resolve(SamplerConfig, "mini", "sampler", {"preset": "one", "text_guidance": 7.5, "image_guidance": 1.5})
    assert (one.label, one.steps, one.batch_size) == ("one+cfg(7.5/1.5)", 1, 3)
    # no named preset: the profile's values and the defaults, as given
    none = resolve(SamplerConfig, "mini", "sampler", {"preset": ""})
    assert (none.steps, none.scheduler, none.label) == (50, "euler_ancestral", "custom(euler_ancestral, 50 steps, cfg 7.5/1.5)")
    # fixed values win over everything, the preset name included
    assert resolve(SamplerConfig, "mini", "sampler", {"preset": "few"}, preset="one").label == "one"


def test_bad_preset_or_steps_are_named():
    with pytest.raises(ValueError, match=r"preset 'fast' unknown; choose one of few, one, paper"):
        resolve(SamplerConfig, "mini", "sampler", {"preset": "fast"})
    with pytest.raises(ValueError, match=r"preset 'fast' unknown"):
        SamplerConfig(preset="fast")
    with pytest.raises(ValueError, match=r"preset few takes 2\.\.10 steps, got steps 12"):
        resolve(SamplerConfig, "paper", "sampler", {"preset": "few", "steps": 12})
    with pytest.raises(ValueError, match=r"preset 'fast' unknown"):
        SamplerConfig.from_preset("fast")


def test_the_eval_run_config_exposes_preset_and_resolves_it():
    from assets.evaluate import EvalAssetConfig, eval_config
    from pipelines.resources import InstructCVSettings

    field = EvalAssetConfig.model_fields["preset"]
    assert "Named sampling procedure" in field.description and field.default is None
    mini, paper = InstructCVSettings(profile="mini"), InstructCVSettings(profile="paper")
    assert eval_config(EvalAssetConfig(), mini).sampler.label == "one"
    few = eval_config(EvalAssetConfig(preset="few", steps=8), mini).sampler
    assert (few.label, few.batch_size, few.resolution) == ("few-8", 64, 64)
    guided = eval_config(EvalAssetConfig(preset="one", text_guidance=7.5, image_guidance=1.5), paper).sampler
    assert (guided.label, guided.dtype, guided.resolution) == ("one+cfg(7.5/1.5)", "float16", 256)
    assert eval_config(EvalAssetConfig(preset="few"), paper).sampler.label == "few-4"


def test_dagster_validates_a_preset_in_the_job_run_config():
    import dagster as dg

    from pipelines.definitions import defs
    from pipelines.jobs import load_run_config
    from pipelines.project import CONFIG_DIR

    job = defs.resolve_job_def("full_reproduction")
    config = load_run_config(CONFIG_DIR / "mini.yaml")
    config["ops"]["evaluate_fp"] = {"config": {"preset": "few", "steps": 8}}
    config["ops"]["evaluate_rp"] = {"config": {"preset": "one", "text_guidance": 7.5, "image_guidance": 1.5}}
    assert dg.validate_run_config(job, config) is not None
    config["ops"]["evaluate_fp"] = {"config": {"preset": 4}}
    with pytest.raises(dg.DagsterInvalidConfigError, match="preset"):
        dg.validate_run_config(job, config)


# ------------------------------------------------------------------------------------------------
# Every result says which sampler produced it


def test_metrics_and_table_cells_carry_the_label(tmp_path):
    import json

    import pandas as pd

    from instructcv_core.evaluation import tables as T
    from instructcv_core.evaluation.reporting import METRICS_COLUMNS, metrics_table

    frame = metrics_table("nyuv2", {"paper": {"rmse": 0.3}, "standard": {"rmse": 0.9}}, sampler="few-4")
    assert list(frame.columns) == METRICS_COLUMNS and frame["sampler"].tolist() == ["few-4", "few-4"]

    def write(folder, sampler: SamplerConfig):
        folder.mkdir(parents=True)
        metrics_table("nyuv2", {"paper": {"rmse": 0.3}, "standard": {"rmse": 0.9}}, sampler=sampler.label).to_parquet(
            folder / "metrics.parquet")
        (folder / "identity.json").write_text(json.dumps({"checkpoint": "c", "manifest": "m", "queries": "q",
                                                          "sampler": sampler.to_dict(), "instructions": "fp"}))
        pd.DataFrame({"query_id": ["q0"], "image_id": ["a"]}).to_parquet(folder / "queries.parquet")
        return folder

    one = SamplerConfig.from_preset("one", resolution=64, batch_size=64)
    sources = {("fp", "nyuv2"): write(tmp_path / "fp", one), ("rp", "nyuv2"): write(tmp_path / "rp", one)}
    cells = T.read_results(sources)
    assert set(cells["sampler"]) == {"one: scheduler ddim, timestep_spacing trailing, steps 1, text_guidance 1.0, "
                                     "image_guidance 1.0, resolution 64, dtype float32"}
    assert not math.isnan(T.table1(cells).set_index("benchmark").loc["nyuv2", "FP ours (paper)"])
    # FP by `one`, RP by `few`: not one table row
    sources[("rp", "nyuv2")] = write(tmp_path / "rp_few", SamplerConfig.from_preset("few", resolution=64))
    cells = T.read_results(sources)
    assert cells.set_index("variant").loc["rp", "sampler"].iloc[0].startswith("few-4: scheduler ddim")
    with pytest.raises(T.IncomparableCells, match="differ in sampler"):
        T.table1(cells)
    # a result recorded before presets existed (no `preset`, no `timestep_spacing`) gets its label too
    legacy = {"steps": 100, "text_guidance": 7.5, "image_guidance": 1.5, "scheduler": "euler_ancestral",
              "resolution": 256, "batch_size": 16, "dtype": "float16", "device": "auto"}
    assert T.sampler_summary(legacy).startswith("paper: scheduler euler_ancestral, steps 100")
