"""A CLIP tokenizer built locally (no hub): byte-level alphabet plus whole-word merges.

The ``text_encoder="clip"`` variant of the tiny base model needs a ``CLIPTokenizer`` but the hub
(and SD's ``vocab.json``/``merges.txt``) cannot be reached. CLIP's BPE reads two files:

* ``vocab.json``: token -> id. Here: the 256 byte-level characters (GPT-2's ``bytes_to_unicode``),
  the same with the end-of-word marker ``</w>``, one token per merge result, then
  ``<|startoftext|>`` and ``<|endoftext|>`` (as in CLIP's own vocabulary).
* ``merges.txt``: ranked pairs: a left-to-right chain per word (``c a``, ``ca t</w>``), plus, for a
  word whose chain another word's earlier merge pre-empts, a chain over the pieces it ends up in;
  so every listed word becomes one token. Any other text still tokenizes, into byte-level pieces.

Trap (cpu-feasibility.md): an empty or missing tokenizer folder silently loads as a 2-token
tokenizer; :func:`build_clip_tokenizer` asserts the vocabulary size after loading.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from transformers import CLIPTokenizer

from instructcv_core.instructions.paraphrase import hub_offline

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 77

#: Object names of COCO, VOC and Pets (species) that mini-benchmark prompts use besides the bank's words.
EXTRA_WORDS = """
person bicycle car motorcycle motorbike airplane aeroplane bus train truck boat traffic light fire hydrant stop sign
parking meter bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag tie suitcase
frisbee skis snowboard sports ball kite baseball bat glove skateboard surfboard tennis racket bottle wine glass cup
fork knife spoon bowl banana apple sandwich orange broccoli carrot hot pizza donut cake chair couch sofa potted plant
bed dining table toilet tv monitor laptop mouse remote keyboard cell phone microwave oven toaster sink refrigerator
book clock vase scissors teddy hair drier toothbrush wall floor ceiling window door sky tree grass road building
""".split()


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from the 256 byte values to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def default_words() -> list[str]:
    """Words of every instruction this project writes (FP templates, paraphrase bank, held-out
    phrasings), the palette colour names and common object names, lower case, sorted."""
    from instructcv_core.tasks.colours import PALETTE
    from instructcv_core.instructions.templates import FP_TEMPLATES, HELDOUT, load_bundled_bank

    texts = list(FP_TEMPLATES.values()) + [h.text for h in HELDOUT] + list(PALETTE) + EXTRA_WORDS
    try:
        texts += [e.text for e in load_bundled_bank()]
    except (OSError, ValueError):  # the bank is optional for a tokenizer
        pass
    words = set()
    for text in texts:
        words.update(re.findall(r"[a-z]+", text.lower().replace("%", " ")))
    return sorted(words)


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE of one pre-split word: repeatedly merge the adjacent pair of lowest rank."""
    symbols = list(symbols)
    while len(symbols) > 1:
        pairs = [(ranks.get((a, b), len(ranks) + 1), i) for i, (a, b) in enumerate(zip(symbols, symbols[1:]))]
        rank, _ = min(pairs)
        if rank > len(ranks):
            break
        first, second = next((symbols[i], symbols[i + 1]) for r, i in pairs if r == rank)
        merged, i = [], 0
        while i < len(symbols):
            if i < len(symbols) - 1 and symbols[i] == first and symbols[i + 1] == second:
                merged.append(first + second)
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


def write_clip_vocab(out_dir: Path, words: Iterable[str]) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` for ``words`` into ``out_dir``; returns ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    byte_chars = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for token in byte_chars + [c + "</w>" for c in byte_chars]:
        vocab.setdefault(token, len(vocab))
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}

    def add_chain(symbols: list[str]) -> None:
        left = symbols[0]
        for right in symbols[1:]:
            pair = (left, right)
            left = left + right
            if pair not in ranks:
                ranks[pair] = len(merges)
                merges.append(pair)
                vocab.setdefault(left, len(vocab))

    encoder = bytes_to_unicode()
    spelled = []
    for word in sorted(set(words)):
        chars = [encoder[b] for b in word.encode("utf-8")]
        if len(chars) >= 2:
            spelled.append(chars[:-1] + [chars[-1] + "</w>"])
    for symbols in spelled:
        add_chain(symbols)
    # A chain can be pre-empted by an earlier merge of another word. Appending a chain over the
    # pieces such a word ends up in fixes it without splitting any word that is already whole
    # (appended merges rank last, so they fire only once no earlier merge applies).
    for _ in range(8):
        broken = [pieces for pieces in (_bpe(symbols, ranks) for symbols in spelled) if len(pieces) > 1]
        if not broken:
            break
        for pieces in broken:
            add_chain(pieces)
    for special in (BOS, EOS):
        vocab.setdefault(special, len(vocab))
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return out_dir


def build_clip_tokenizer(out_dir: Path, words: Iterable[str] | None = None) -> CLIPTokenizer:
    """A ``CLIPTokenizer`` (77 tokens, pad = ``<|endoftext|>`` as SD's) from locally written files."""
    words = default_words() if words is None else list(words)
    write_clip_vocab(out_dir, words)
    with hub_offline(True):  # a local folder: never look anything up
        tokenizer = CLIPTokenizer.from_pretrained(
            str(out_dir), local_files_only=True, pad_token=EOS, model_max_length=MAX_LENGTH
        )
    if len(tokenizer) < 2 * 256:
        raise RuntimeError(f"locally built CLIP tokenizer has only {len(tokenizer)} tokens (expected > 512)")
    return tokenizer
