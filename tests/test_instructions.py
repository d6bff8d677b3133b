"""FP templates, held-out phrasings, rendering, sampling and the bundled paraphrase bank."""

from __future__ import annotations

import json
import re
from collections import Counter
from importlib import resources

import pytest

from instructcv_core.instructions.templates import (
    BANK_PATH,
    FP_TEMPLATES,
    HELDOUT,
    PLACEHOLDERS,
    load_bundled_bank,
    normalise,
    pick,
    placeholders_in,
    render,
)
from instructcv_core.tasks import TASK_NAMES as TASKS

TABLE3 = [
    "Segment the %category%.",
    "Segment %category%.",
    "Can you help me segment the %category%?",
    "Highlight the image parts corresponding to the %category%.",
    "Please highlight the image segment containing %category%.",
    "Which image segments contain the %category%?",
]
MIN_COUNTS = {"segmentation": 60, "detection": 60, "depth": 25, "classification": 15}


@pytest.fixture(scope="module")
def bank():
    return load_bundled_bank()


def test_fp_templates_and_placeholders():
    assert set(FP_TEMPLATES) == set(TASKS) == set(PLACEHOLDERS)
    assert FP_TEMPLATES["segmentation"] == "Segment the %category%."
    assert FP_TEMPLATES["detection"] == "Detect the %category%."
    assert FP_TEMPLATES["depth"] == "Estimate the depth of this image."
    assert FP_TEMPLATES["classification"] == "Show %color% if the picture has %category%, otherwise show %color2%."
    for task, tpl in FP_TEMPLATES.items():
        assert sorted(placeholders_in(tpl)) == sorted(PLACEHOLDERS[task])
    assert PLACEHOLDERS["depth"] == ()


def test_heldout_contains_table3_verbatim():
    paper = [h for h in HELDOUT if h.source == "paper_table3"]
    assert [h.text for h in paper] == TABLE3
    assert all(h.task == "segmentation" for h in paper)
    assert [h.is_fp_template for h in paper] == [True] + [False] * 5
    assert paper[0].text == FP_TEMPLATES["segmentation"]


def test_heldout_own_phrasings():
    own = Counter(h.task for h in HELDOUT if h.source == "instructcv")
    assert own["segmentation"] >= 4 and own["detection"] >= 4 and own["depth"] >= 4 and own["classification"] >= 3
    assert {h.source for h in HELDOUT} == {"paper_table3", "instructcv"}
    for h in HELDOUT:
        assert Counter(placeholders_in(h.text)) == Counter(PLACEHOLDERS[h.task]), h
        assert not h.is_fp_template or h.text == FP_TEMPLATES[h.task]
    norms = [normalise(h.text) for h in HELDOUT]
    assert len(norms) == len(set(norms))


def test_bundled_bank_counts_and_ids(bank):
    counts = Counter(e.task for e in bank)
    for task, n in MIN_COUNTS.items():
        assert counts[task] >= n, (task, counts[task])
    assert all(e.source == "bundled" for e in bank)
    ids = [e.template_id for e in bank]
    assert len(ids) == len(set(ids))
    for task in TASKS:
        task_ids = [e.template_id for e in bank if e.task == task]
        assert task_ids == [f"{task[:3]}-{i:03d}" for i in range(len(task_ids))]


def test_bundled_bank_placeholders_exact(bank):
    for e in bank:
        got = Counter(placeholders_in(e.text))
        assert got == Counter(PLACEHOLDERS[e.task]), e
        assert all(v == 1 for v in got.values()), e
        # no stray "%" (the official lists have "cat"->"%" artifacts such as "lo%e")
        assert "%" not in re.sub(r"%(category|color|color2)%", "", e.text), e
        assert e.text == e.text.strip() and "  " not in e.text, e
        assert e.text[0].isupper() and e.text[-1] in ".?", e


def test_bundled_bank_no_duplicates_no_heldout_no_known_typos(bank):
    norms = [normalise(e.text) for e in bank]
    dupes = [t for t, c in Counter(norms).items() if c > 1]
    assert not dupes
    held = {normalise(h.text) for h in HELDOUT}
    fp = {normalise(t) for t in FP_TEMPLATES.values()}
    assert not (set(norms) & held)
    assert not (set(norms) & fp)
    for bad in ("plese", "exsits", "lo%e", "the this", " % "):
        assert not any(bad in e.text.lower() for e in bank), bad


def test_bank_json_format_and_package_data():
    data = json.loads(BANK_PATH.read_text(encoding="utf-8"))
    assert data["version"] == 1 and isinstance(data["description"], str)
    assert all(set(e) == {"task", "text"} for e in data["entries"])
    res = resources.files("instructcv_core") / "instructions" / "paraphrases.json"
    assert res.is_file()


def test_render_fills_and_strips():
    assert render(FP_TEMPLATES["segmentation"], category="bed ") == "Segment the bed."
    assert render(FP_TEMPLATES["detection"], category="dining table") == "Detect the dining table."
    assert render(FP_TEMPLATES["depth"]) == "Estimate the depth of this image."
    assert (render(FP_TEMPLATES["classification"], category="cat", color="red", color2="green")
            == "Show red if the picture has cat, otherwise show green.")


def test_render_errors_name_template_and_placeholder():
    tpl = FP_TEMPLATES["segmentation"]
    with pytest.raises(ValueError) as ei:
        render(tpl)
    assert tpl in str(ei.value) and "%category%" in str(ei.value)
    with pytest.raises(ValueError) as ei:
        render(tpl, category="cat", color="red")
    assert tpl in str(ei.value) and "%color%" in str(ei.value) and "red" in str(ei.value)
    cls = FP_TEMPLATES["classification"]
    with pytest.raises(ValueError) as ei:
        render(cls, category="cat", color="red")
    assert cls in str(ei.value) and "%color2%" in str(ei.value)
    with pytest.raises(ValueError) as ei:
        render(FP_TEMPLATES["depth"], category="cat")
    assert "%category%" in str(ei.value)
    with pytest.raises(ValueError) as ei:
        render("Find the %thing%.", category="cat")
    assert "%thing%" in str(ei.value)
    with pytest.raises(ValueError):
        render(tpl, category="   ")


def test_pick_deterministic_uniform_all_indices():
    n = 7
    draws = [pick(23, f"img_{i:05d}", n) for i in range(2000)]
    assert draws == [pick(23, f"img_{i:05d}", n) for i in range(2000)]
    assert all(0 <= d < n for d in draws)
    counts = Counter(draws)
    assert set(counts) == set(range(n))  # index 0 included (the official sampler never picks it)
    expected = 2000 / n
    assert all(abs(c - expected) < 0.25 * expected for c in counts.values()), counts
    assert [pick(1, f"img_{i:05d}", n) for i in range(50)] != draws[:50]  # the seed matters
    assert pick(0, "x", 1) == 0
    with pytest.raises(ValueError):
        pick(0, "x", 0)


def test_normalise():
    assert normalise("  Segment   the %category%. ") == "segment the %category%"
    assert normalise("Can you help me segment the %category%?") == "can you help me segment the %category%"
    assert normalise("Is it here?!") == "is it here"
    assert normalise("A\tB\nC...") == "a b c"
