"""The pretrained mini base: its corpus, its command, the versioned folder and the noise schedule it fixes."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from instructcv_core.model.loading import BaseModelError
from instructcv_core.model.pretrain_corpus import all_captions, build_corpus, caption_of, render_item
from instructcv_core.model.pretrain_mini import (
    CHECKSUMS, RECORD, VERSIONED_BASE, PretrainConfig, assemble_base, check_shape, main, sha256_file, verify_checksums,
)
from instructcv_core.model.tiny_base import sd_noise_scheduler


def test_captions_name_categories_once_in_alphabetical_order():
    assert caption_of(["bus", "cat"]) == "a photo of a bus and a cat"
    assert caption_of(["arrowhead", "bus", "tv"]) == "a photo of an arrowhead, a bus and a tv"
    assert caption_of(["samoyed dog"]) == "a photo of a samoyed dog"


def test_corpus_is_seeded_independent_of_workers_and_within_the_caption_set():
    one = build_corpus(seed=0, count=12, size=64, workers=1)
    two = build_corpus(seed=0, count=12, size=64, workers=2)
    assert np.array_equal(one[0], two[0]) and one[1] == two[1] and np.array_equal(one[2], two[2])
    assert one[0].shape == (12, 64, 64, 3) and one[2].shape == (48, 64, 64, 3)
    assert set(one[1]) <= set(all_captions())
    other = build_corpus(seed=1, count=12, size=64)
    assert not np.array_equal(one[0], other[0])


def test_corpus_captions_name_what_the_scene_shows():
    from instructcv_core.data.mini.pets import MINI_BREEDS, species_of

    breeds = 0
    for index in range(40):
        item = render_item(0, index, 64)
        names = sorted({o.kind.name for o in item.scene.objects})
        if names[0] in MINI_BREEDS:
            breeds += 1
            assert item.caption == caption_of([f"{names[0]} {species_of(names[0])[1]}"])
        else:
            assert item.caption == caption_of(names)
    assert breeds > 0


def test_zero_terminal_snr_leaves_no_target_in_the_training_input_at_the_first_sampling_step():
    # The one-step sampler starts at t = 999 from pure noise; the training input there must be pure
    # noise too. SD's own schedule keeps 0.068 x the target there (the defect the mini base fixes).
    target = torch.randn(64, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(64, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.full((64,), 999)
    fixed = sd_noise_scheduler("v_prediction", zero_terminal_snr=True)
    assert torch.equal(fixed.add_noise(target, noise, t), noise)
    sd = sd_noise_scheduler("v_prediction")
    leaked = sd.add_noise(target, noise, t) - noise * (1 - sd.alphas_cumprod[999]).sqrt()
    assert float(sd.alphas_cumprod[999].sqrt()) == pytest.approx(0.068, abs=0.001)
    assert torch.allclose(leaked, target * sd.alphas_cumprod[999].sqrt(), atol=1e-6)
    # v at t = 999 is exactly -x0 on the fixed schedule: the sampler's one step returns the model's x0
    assert torch.equal(fixed.get_velocity(target, noise, t), -target)


def test_zero_terminal_snr_needs_v_prediction():
    from instructcv_core.model.config import TinyModelConfig

    with pytest.raises(ValueError, match="zero_terminal_snr needs prediction_type 'v_prediction'"):
        TinyModelConfig(prediction_type="epsilon", zero_terminal_snr=True)


def test_the_versioned_base_matches_its_checksums_and_was_made_by_the_documented_command():
    verify_checksums(VERSIONED_BASE)
    record = json.loads((VERSIONED_BASE / RECORD).read_text())
    assert record["config"] == dataclasses.asdict(PretrainConfig())
    assert record["model"] == json.loads(json.dumps(dataclasses.asdict(PretrainConfig().model())))
    assert record["command"] == "python -m instructcv_core.model.pretrain_mini build"
    size = sum(p.stat().st_size for p in VERSIONED_BASE.rglob("*") if p.is_file())
    assert size <= 30 * 2**20


def test_a_shape_other_than_the_base_is_refused_naming_the_knob():
    from instructcv_core.model.config import TinyModelConfig

    check_shape(VERSIONED_BASE, PretrainConfig().model())
    with pytest.raises(BaseModelError, match=r"unet_block_out_channels=\[32, 64\].*asks unet_block_out_channels=\(64, 128\)"):
        check_shape(VERSIONED_BASE, dataclasses.replace(PretrainConfig().model(), unet_block_out_channels=(64, 128)))
    with pytest.raises(BaseModelError, match="text_encoder='minilm'.*pretrained: false"):
        check_shape(VERSIONED_BASE, TinyModelConfig(text_encoder="clip", zero_terminal_snr=True))


def test_a_changed_or_extra_file_in_the_base_is_refused_by_name(tmp_path):
    copy = tmp_path / "base"
    shutil.copytree(VERSIONED_BASE, copy)
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(BaseModelError, match=r"unet/diffusion_pytorch_model.safetensors: sha256 differs"):
        verify_checksums(copy)
    shutil.copy(VERSIONED_BASE / "unet" / "diffusion_pytorch_model.safetensors", weights)
    (copy / "notes.txt").write_text("x")
    with pytest.raises(BaseModelError, match=r"notes.txt: not listed in SHA256SUMS"):
        verify_checksums(copy)


def test_the_assembled_base_is_a_stock_diffusers_folder_with_the_zero_snr_schedule(tmp_path):
    from instructcv_core.model.loading import load_base

    folder = assemble_base(VERSIONED_BASE, tmp_path / "base")
    components = load_base(str(folder))
    assert components.noise_scheduler.config.rescale_betas_zero_snr is True
    assert float(components.noise_scheduler.alphas_cumprod[-1]) == 0.0
    assert components.unet.config.in_channels == 4 and components.unet.config.cross_attention_dim == 384
    assert sha256_file(folder / "unet" / "diffusion_pytorch_model.safetensors") == \
        sha256_file(VERSIONED_BASE / "unet" / "diffusion_pytorch_model.safetensors")


def test_the_pretrain_command_writes_a_checked_folder_and_is_deterministic(tmp_path):
    args = ["--corpus-images", "8", "--autoencoder-steps", "2", "--autoencoder-batch", "4", "--unet-steps", "2",
            "--unet-batch", "4", "--workers", "1"]
    for name in ("a", "b"):
        assert main(["build", "--out", str(tmp_path / name), *args]) == 0
    verify_checksums(tmp_path / "a")
    record = json.loads((tmp_path / "a" / RECORD).read_text())
    assert record["config"]["unet_steps"] == 2 and len(record["text_to_image"]) == 1
    assert (tmp_path / "a" / CHECKSUMS).read_text() != ""
    for part in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"):
        assert sha256_file(tmp_path / "a" / part) == sha256_file(tmp_path / "b" / part)


def test_the_attention_heads_are_a_pretraining_knob_that_reaches_the_unet(tmp_path):
    assert PretrainConfig(attention_head_dim=4).model().attention_head_dim == 4
    with pytest.raises(ValueError, match="attention_head_dim must be >= 1"):
        PretrainConfig(attention_head_dim=0)
    args = ["--corpus-images", "4", "--autoencoder-steps", "1", "--autoencoder-batch", "2", "--unet-steps", "1",
            "--unet-batch", "2", "--workers", "1", "--attention-head-dim", "4"]
    assert main(["build", "--out", str(tmp_path / "b"), *args]) == 0
    assert json.loads((tmp_path / "b" / "unet" / "config.json").read_text())["attention_head_dim"] == 4
    check_shape(tmp_path / "b", PretrainConfig(attention_head_dim=4).model())
    with pytest.raises(BaseModelError, match="attention_head_dim"):
        check_shape(tmp_path / "b", PretrainConfig().model())


def test_the_command_line_help_lists_every_knob(capsys):
    # argparse expands %-formats in help texts: a knob's "5 %" once made --help crash
    with pytest.raises(SystemExit) as exit_info:
        main(["build", "--help"])
    assert exit_info.value.code == 0
    shown = capsys.readouterr().out
    for f in dataclasses.fields(PretrainConfig):
        assert "--" + f.name.replace("_", "-") in shown
    assert "cosine to 5 %" in shown
