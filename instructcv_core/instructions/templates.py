"""Task instructions: fixed-prompt (FP) templates, held-out phrasings, rendering and sampling.

InstructCV turns every vision task into "edit this image according to the instruction". The
official code keeps one fixed template per task (FP) and, for the rephrased variant (RP), text
files of paraphrases (`build_data/txt/*.txt`). Those files have flaws we deliberately do not copy:

* a global "cat" -> "%" substitution left artifacts such as "lo%e" (from "locate");
* typos ("Plese", "how deep the this image is", "exsits");
* the classification list has no slot for the negative colour, so it never appears in a prompt;
* the sampler draws ``random.randint(1, len - 1)``, so line 1 of every list is never used.

Here templates carry named placeholders (``%category%``, ``%color%`` for the positive colour and
``%color2%`` for the negative colour), rendering refuses unfilled or unexpected placeholders, and
:func:`pick` draws every index, including 0, deterministically from a seed and a sample id.

The bundled paraphrase bank lives in ``instructcv_core/instructions/paraphrases.json`` (hand-written and
reviewed); :mod:`instructcv_core.instructions.paraphrase` can extend or replace it with an LLM.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

#: The fixed (FP) prompt of each task.
FP_TEMPLATES: dict[str, str] = {
    "segmentation": "Segment the %category%.",
    "detection": "Detect the %category%.",
    "depth": "Estimate the depth of this image.",
    "classification": "Show %color% if the picture has %category%, otherwise show %color2%.",
}

#: The test-time pool of the official ``--rephrase`` option (``infer/edit_cli_seg.py``,
#: ``inference_seg``), verbatim: ``%`` is the class name, the literal ``\into`` and the repeated
#: entry are the official text. The official script draws one with ``random.choice`` per (image,
#: class); :func:`test_instruction` draws it with :func:`pick`. The official code has no such pool
#: for detection or classification, and the depth pool the reference mentions is not in the
#: released code, so those tasks are asked their fixed template under either mode.
OFFICIAL_RP_TEST_POOL: dict[str, tuple[str, ...]] = {
    "segmentation": (
        "Could someone please break down the % \\into individual parts?",
        "Can you provide me with a segment of the %?",
        "Please divide the % \\into smaller parts",
        "Segment the %",
        "Can you provide me with a segment of the %?",
        "Help me segment the %",
        "Would you be willing to split the % with me?",
    ),
}
#: How an evaluation asks its questions: the fixed templates, or as the paper asked the RP model.
INSTRUCTION_MODES = ("fp", "rp_pool")

#: The placeholders each task's templates must contain (each exactly once).
PLACEHOLDERS: dict[str, tuple[str, ...]] = {
    "segmentation": ("%category%",),
    "detection": ("%category%",),
    "depth": (),
    "classification": ("%color%", "%category%", "%color2%"),
}

#: Keyword of :func:`render` for each placeholder.
PLACEHOLDER_ARGS: dict[str, str] = {"%category%": "category", "%color%": "color", "%color2%": "color2"}

_PLACEHOLDER_RE = re.compile(r"%[a-z0-9_]+%")


@dataclass(frozen=True)
class HeldoutPhrasing:
    """An instruction never used for training: evaluates generalisation to new user phrasings."""

    task: str
    text: str
    source: str  # "paper_table3" (InstructCV paper, Table 3) or "instructcv" (written for this project)
    is_fp_template: bool = False


@dataclass(frozen=True)
class BankEntry:
    """One paraphrase of a task's FP template."""

    task: str
    template_id: str
    text: str
    source: str = "bundled"


def _h(task: str, text: str, source: str = "instructcv", fp: bool = False) -> HeldoutPhrasing:
    return HeldoutPhrasing(task=task, text=text, source=source, is_fp_template=fp)


#: Held-out instructions. The six segmentation phrasings of the paper's Table 3 verbatim (the first
#: is the FP template itself), then our own user-style phrasings for every task. None of them may
#: appear (after :func:`normalise`) in a training bank.
HELDOUT: list[HeldoutPhrasing] = [
    # Paper, Table 3 (ADE20K, 200 test images).
    _h("segmentation", "Segment the %category%.", "paper_table3", True),
    _h("segmentation", "Segment %category%.", "paper_table3"),
    _h("segmentation", "Can you help me segment the %category%?", "paper_table3"),
    _h("segmentation", "Highlight the image parts corresponding to the %category%.", "paper_table3"),
    _h("segmentation", "Please highlight the image segment containing %category%.", "paper_table3"),
    _h("segmentation", "Which image segments contain the %category%?", "paper_table3"),
    # Ours: segmentation.
    _h("segmentation", "I need a mask for every %category% you can see here."),
    _h("segmentation", "Could you cut out the %category% from this photo for me?"),
    _h("segmentation", "Paint the %category% white and leave everything else black."),
    _h("segmentation", "Where exactly is the %category%? Give me its pixels."),
    # Ours: detection.
    _h("detection", "Can you put a box around each %category% for me?"),
    _h("detection", "I'm looking for the %category%; frame it with a rectangle."),
    _h("detection", "Draw a tight box around any %category% you spot."),
    _h("detection", "Where is the %category%? Show me with bounding boxes."),
    # Ours: depth.
    _h("depth", "How far away is everything in this picture?"),
    _h("depth", "Can you show me what is close and what is far in this photo?"),
    _h("depth", "Turn this picture into a depth map, please."),
    _h("depth", "I'd like to see the distance of each pixel from the camera."),
    # Ours: classification.
    _h("classification", "If you see %category% in this photo, fill it with %color%; if not, fill it with %color2%."),
    _h("classification", "Is there %category% here? Answer with %color% for yes and %color2% for no."),
    _h("classification", "Paint the whole picture %color% when it contains %category%, and %color2% when it doesn't."),
]


def placeholders_in(template: str) -> list[str]:
    """All ``%name%`` placeholders of *template*, in order, with repeats."""
    return _PLACEHOLDER_RE.findall(template)


def render(template: str, category: str | None = None, color: str | None = None,
           color2: str | None = None) -> str:
    """Fill the placeholders of *template*.

    Categories and colours are inserted as given, with surrounding whitespace stripped (ADE20K's
    class list has ``"bed "``). Raises ``ValueError`` naming the template and the placeholder when
    a placeholder has no value, a value is given for a placeholder the template lacks, or the
    template contains an unknown placeholder.
    """
    values = {"%category%": category, "%color%": color, "%color2%": color2}
    present = set(placeholders_in(template))
    unknown = present - set(values)
    if unknown:
        raise ValueError(f"template {template!r} has unknown placeholder(s) {sorted(unknown)}")
    for ph, value in values.items():
        arg = PLACEHOLDER_ARGS[ph]
        if ph in present and (value is None or not str(value).strip()):
            raise ValueError(f"template {template!r} needs a value for {ph} (argument {arg}=), none given")
        if ph not in present and value is not None:
            raise ValueError(f"template {template!r} has no {ph} placeholder, but {arg}={value!r} was given")
    out = template
    for ph in present:
        out = out.replace(ph, str(values[ph]).strip())
    return out


def pick(seed: int, sample_id: str, n: int) -> int:
    """Deterministic, uniform index in ``[0, n)`` for a sample: ``sha256(f"{seed}:{sample_id}") mod n``.

    Every index is reachable, index 0 included. (The official RP sampler,
    ``random.randint(1, len - 1)``, never picks the first line of a prompt list.) The modulo bias
    of a 256-bit hash is negligible for any realistic *n*.
    """
    if n <= 0:
        raise ValueError(f"pick needs n >= 1, got {n}")
    digest = hashlib.sha256(f"{seed}:{sample_id}".encode("utf-8")).digest()
    return int.from_bytes(digest, "big") % n


def test_instruction(task: str, mode: str, seed: int, key: str, **slots: str) -> str:
    """The instruction evaluation asks: ``mode="fp"`` renders the task's fixed template;
    ``mode="rp_pool"`` draws from :data:`OFFICIAL_RP_TEST_POOL` (seeded by ``key``, e.g.
    benchmark|image|class) where the task has a pool, and renders the fixed template otherwise."""
    if mode not in INSTRUCTION_MODES:
        raise ValueError(f"instruction mode must be one of {INSTRUCTION_MODES}, got {mode!r}")
    pool = OFFICIAL_RP_TEST_POOL.get(task) if mode == "rp_pool" else None
    if not pool:
        return render(FP_TEMPLATES[task], **slots)
    return pool[pick(seed, key, len(pool))].replace("%", str(slots["category"]).strip())


_TRAILING_PUNCT = ".!?;:,"


def normalise(text: str) -> str:
    """Lower-case, collapse whitespace, strip trailing punctuation (for dedup and held-out exclusion)."""
    t = " ".join(text.lower().split())
    return t.rstrip(_TRAILING_PUNCT + " ").strip()


BANK_PATH = Path(__file__).resolve().parent / "paraphrases.json"


def load_bundled_bank(path: str | Path | None = None) -> list[BankEntry]:
    """The bundled, hand-reviewed paraphrase bank; ``template_id = f"{task[:3]}-{index:03d}"`` per task, in file order."""
    p = Path(path) if path is not None else BANK_PATH
    data = json.loads(p.read_text(encoding="utf-8"))
    if data.get("version") != 1:
        raise ValueError(f"{p}: unsupported paraphrase bank version {data.get('version')!r}")
    counters: dict[str, int] = {}
    entries: list[BankEntry] = []
    for e in data["entries"]:
        task = e["task"]
        if task not in FP_TEMPLATES:
            raise ValueError(f"{p}: unknown task {task!r} in entry {e!r}")
        i = counters.get(task, 0)
        counters[task] = i + 1
        entries.append(BankEntry(task=task, template_id=f"{task[:3]}-{i:03d}", text=e["text"], source="bundled"))
    return entries
