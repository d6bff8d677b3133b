"""The classification diagnostic's manifests (`benchmarks/classification_binding.py`): each variant asks
what it says, and every training target is the solid block of the colour its question's answer names."""

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "classification_binding.py"


@pytest.fixture(scope="module")
def binding():
    spec = importlib.util.spec_from_file_location("classification_binding", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(n: int, role: str) -> pd.DataFrame:
    colours = ["red", "green", "blue", "gold", "peru", "aqua"]
    rows = []
    for i in range(n):
        positive = (i // 6) % 2 == 0  # with n = 12, every colour is shown by some answer
        a, b = colours[i % 6], colours[(i + 1) % 6]
        for variant, category in (("binary", "cat"), ("binary", "dog"), ("breeds", "Bengal")):
            rows.append({"pair_id": f"{role}{i}{category}", "task": "classification", "variant": variant,
                         "category": category, "positive": positive, "color": a, "color2": b,
                         "instruction": f"Show {a} if the picture has {category}, otherwise show {b}.",
                         "input_digest": f"in{i}", "target_digest": f"block-{a if positive else b}"})
    rows.append({"pair_id": f"{role}seg", "task": "segmentation", "variant": "", "category": "cat", "positive": True,
                 "color": "", "color2": "", "instruction": "segment the cat", "input_digest": "x", "target_digest": "m"})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("name", ["cat-random", "cat-fixed", "cat-swapped-order", "cat-both-orders", "cat-redrawn-x4"])
def test_each_variant_asks_about_cat_and_targets_the_answers_colour(binding, name):
    train, test = binding.variant_frames(name, _rows(12, "t"), _rows(6, "e"))
    assert len(train) == 12 * {"cat-redrawn-x4": 4, "cat-both-orders": 2}.get(name, 1) and len(test) == 6
    for frame in (train, test):
        assert set(frame["category"]) == {"cat"} and set(frame["variant"]) == {"binary"}
        assert all(f"has cat, otherwise show {r.color2}." in r.instruction and r.instruction.startswith(f"Show {r.color} ")
                   for r in frame.itertuples())
    assert all(r.target_digest == f"block-{r.color if r.positive else r.color2}" for r in train.itertuples())
    if name == "cat-fixed":
        assert set(zip(train["color"], train["color2"])) == {("red", "green")}
    if name == "cat-swapped-order":
        assert set(zip(train["color"], train["color2"])) == {("red", "green"), ("green", "red")}
    if name == "cat-both-orders":  # every pet in both orders, its two answers two different colours
        assert (train.groupby("input_digest")["color"].agg(sorted) == pd.Series([["green", "red"]] * 12)
                .set_axis(sorted(train["input_digest"].unique()))).all()
        assert train.groupby("input_digest")["target_digest"].nunique().eq(2).all()
    if name == "cat-redrawn-x4":
        assert train["pair_id"].is_unique and train.groupby("input_digest")["instruction"].nunique().min() > 1


def test_all_classification_keeps_every_classification_pair(binding):
    train, test = binding.variant_frames("all-classification", _rows(12, "t"), _rows(6, "e"))
    assert len(train) == 36 and len(test) == 18 and set(train["task"]) == {"classification"}


def test_the_position_code_experiment_adds_a_code_of_the_given_norm_per_position(binding, monkeypatch):
    import torch

    from instructcv_core.inference import sampler
    from instructcv_core.model import prompts

    states = torch.ones(2, 77, 384)
    monkeypatch.setattr(prompts, "encode_prompt", lambda tokenizer, text_encoder, texts: states.clone())
    monkeypatch.setattr(sampler, "encode_prompt", prompts.encode_prompt)
    binding.add_position_code(8.0)
    assert sampler.encode_prompt is prompts.encode_prompt  # training and sampling see the same code
    code = prompts.encode_prompt(None, None, ["a", "b"]) - states
    assert torch.allclose(code.norm(dim=-1), torch.full((2, 77), 8.0), atol=1e-4)
    assert torch.equal(code[0], code[1]) and not torch.allclose(code[0, 2], code[0, 11])


def test_the_causal_copy_sets_only_is_decoder(binding, tmp_path):
    import json

    base = tmp_path / "base"
    (base / "text_encoder").mkdir(parents=True)
    (base / "text_encoder" / "config.json").write_text(json.dumps({"hidden_size": 384, "use_attention_mask": True}))
    (base / "unet").mkdir()
    (base / "unet" / "w").write_text("weights")
    copy = binding.causal_copy(base, tmp_path / "causal")
    assert json.loads((copy / "text_encoder" / "config.json").read_text()) == {
        "hidden_size": 384, "use_attention_mask": True, "is_decoder": True}
    assert (copy / "unet" / "w").read_text() == "weights"
    assert "is_decoder" not in json.loads((base / "text_encoder" / "config.json").read_text())
