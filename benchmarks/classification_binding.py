"""Why the mini model does not learn classification: the species, or the colour words' roles?

    # once: the mini data and the base, as the job builds them (see mini_recipe_levers.py)
    .venv/bin/python benchmarks/classification_binding.py --data /tmp/levers/mini [--steps 300] \\
        [--variants cat-random cat-fixed ...] [--text-only]

A classification question reads "Show A if the picture has C, otherwise show B.": the model must
recognise the pet *and* output the colour named in the right slot (A or B, drawn at random per
question from the 16 palette colours). Each variant fine-tunes the base on a classification-only
manifest derived from the job's FP manifest, for the same fixed step count (the mini `train` preset
otherwise), and measures, with the one-step mini sampler, how often the output's mean colour is
nearer the right colour than the wrong one, on its training questions and on the Pets test images
(the binary question naming "cat", coloured by the variant's rule), with 95 % bootstrap intervals:

* ``all-classification``: every Pets classification pair of the FP manifest (binary and breeds);
* ``cat-random``: the binary questions naming "cat" (half cats, half dogs), with their random colours;
* ``cat-fixed``: the same questions, always "Show red if the picture has cat, otherwise show green."
  (species recognition alone: no colour word to read);
* ``cat-swapped-order``: red and green, in a random order per question (the colour words' slots
  decide the answer; the vocabulary is two words);
* ``cat-both-orders``: each question twice, red/green and green/red (the pet alone no longer answers
  a training question; the test asks each pet in one random order);
* ``cat-redrawn-x4``: each question four times, with four fresh random colour pairs (the answer of a
  training question can no longer be memorised from its colour pair).

Two text-side experiments (not project knobs): ``--causal-text`` fine-tunes a copy of the base whose
MiniLM has ``is_decoder: true`` (a causal attention mask, in training and sampling alike: the copy's
pipeline carries it); ``--position-code A`` adds a fixed sinusoidal position code of norm ``A`` to every
token state, in training and sampling (MiniLM's token states have norms of about 5-12).

``--text-only`` prints only how much the frozen text encoder's states separate a colour word's slot
from its identity: the cosine of "red" in the first slot with "red" in the second slot of the swapped
sentence, and of "red" and "green" in the same slot, at every hidden layer, as the pipelines run it
(bidirectional) and with a causal attention mask (each token sees only those before it, as in the
CLIP text encoder of Stable Diffusion).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

VARIANTS = ("all-classification", "cat-random", "cat-fixed", "cat-swapped-order", "cat-both-orders", "cat-redrawn-x4")
PAIR = ("red", "green")


def _sentence(first: str, second: str) -> str:
    return f"Show {first} if the picture has cat, otherwise show {second}."


def variant_frames(name: str, manifest, test, seed: int = 3):
    """(training rows, test rows) of a variant: manifest-shaped frames whose ``color``/``color2``/
    ``instruction`` (and, for training, ``target_digest``) follow the variant's rule."""
    import numpy as np
    import pandas as pd

    cls = manifest[manifest["task"] == "classification"]
    shown = cls["color"].where(cls["positive"], cls["color2"])
    block = {c: cls["target_digest"][shown == c].iloc[0] for c in sorted(set(shown))}  # a solid block per colour
    if name == "all-classification":
        return cls.reset_index(drop=True), test[test["task"] == "classification"].reset_index(drop=True)
    train = cls[(cls["variant"] == "binary") & (cls["category"] == "cat")]
    test = test[(test["variant"] == "binary") & (test["category"] == "cat")]
    if name == "cat-random":
        return train.reset_index(drop=True), test.reset_index(drop=True)
    rng = np.random.default_rng(seed)

    def recoloured(frame, draws: int, with_targets: bool):
        rows = []
        for row in frame.to_dict("records"):
            for k in range(draws):
                if name == "cat-fixed":
                    a, b = PAIR
                elif name == "cat-swapped-order" or (name == "cat-both-orders" and not with_targets):
                    a, b = PAIR if rng.random() < 0.5 else PAIR[::-1]
                elif name == "cat-both-orders":
                    a, b = PAIR if k == 0 else PAIR[::-1]
                else:
                    a, b = (str(c) for c in rng.choice(sorted(block), 2, replace=False))
                new = {**row, "color": a, "color2": b, "instruction": _sentence(a, b), "pair_id": f"{row['pair_id']}-{k}"}
                if with_targets:
                    new["target_digest"] = block[a if row["positive"] else b]
                rows.append(new)
        return pd.DataFrame(rows)

    draws = {"cat-redrawn-x4": 4, "cat-both-orders": 2}.get(name, 1)
    return recoloured(train, draws, True), recoloured(test, 1, False)


def colour_accuracy(sampler, frame, images) -> dict:
    """Share of rows whose output's mean colour is nearer the right colour (n, 95 % bootstrap interval),
    and the share answering the first colour."""
    import numpy as np

    from instructcv_core.evaluation.intervals import resample_indices
    from instructcv_core.inference.config import Request
    from instructcv_core.tasks.classification import decode_classification

    requests = [Request(r.input_digest, r.instruction, 7) for r in frame.itertuples()]
    outputs = dict(sampler.generate(requests, images))
    right, first = [], []
    for i, row in enumerate(frame.itertuples()):
        says_first = decode_classification(outputs[i], row.color, row.color2)  # the task's own decoding
        right.append(says_first == bool(row.positive))
        first.append(says_first)
    right = np.array(right, float)
    resampled = right[resample_indices(len(right))].mean(1)
    low, high = np.percentile(resampled, [2.5, 97.5])
    return {"n": len(right), "accuracy": round(float(right.mean()), 3), "ci": [round(float(low), 3), round(float(high), 3)],
            "says_first": round(float(np.mean(first)), 3)}


def text_slots() -> list[dict]:
    """Per hidden layer of the frozen MiniLM: cosine of a colour word across slots vs across words."""
    import torch

    from instructcv_core.model.tiny_base import minilm_text_encoder

    text_encoder, tokenizer = minilm_text_encoder()
    sentences = [_sentence(*PAIR), _sentence(*PAIR[::-1])]
    tokens = tokenizer(sentences, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt")
    words = tokenizer.convert_ids_to_tokens(tokens.input_ids[0])
    first, second = words.index(PAIR[0]), words.index(PAIR[1])
    length = tokens.input_ids.shape[1]
    causal = torch.tril(torch.ones(length, length, dtype=torch.bool))[None, None].expand(2, 1, length, length)
    rows = []
    for attention, mask in (("bidirectional", None), ("causal", causal)):
        with torch.no_grad():
            hidden = text_encoder(tokens.input_ids, attention_mask=mask, output_hidden_states=True).hidden_states
        for layer, states in enumerate(hidden):
            s = torch.nn.functional.normalize(states, dim=-1)
            rows.append({"attention": attention, "layer": layer,
                         "same_word_other_slot": round(float(s[0, first] @ s[1, second]), 3),
                         "same_slot_other_word": round(float(s[0, first] @ s[1, first]), 3)})
    return rows


def causal_copy(base: Path, out: Path) -> Path:
    """A copy of the base folder whose text encoder runs with a causal attention mask."""
    import shutil

    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(base, out)
    config_path = out / "text_encoder" / "config.json"
    config = json.loads(config_path.read_text())
    config["is_decoder"] = True
    config_path.write_text(json.dumps(config, indent=2))
    return out


def add_position_code(norm: float) -> None:
    """Every prompt's token states plus a sinusoidal position code of norm ``norm`` (training and sampler)."""
    import torch

    from instructcv_core.inference import sampler
    from instructcv_core.model import prompts

    encode = prompts.encode_prompt

    def encode_with_positions(tokenizer, text_encoder, texts):
        states = encode(tokenizer, text_encoder, texts)
        length, width = states.shape[1:]
        angles = torch.arange(length)[:, None] / 10000 ** (torch.arange(0, width, 2) / width)
        code = torch.zeros(length, width)
        code[:, 0::2], code[:, 1::2] = torch.sin(angles), torch.cos(angles)
        code = code / code.norm(dim=-1, keepdim=True) * norm
        return states + code.to(states.device, states.dtype)

    prompts.encode_prompt = sampler.encode_prompt = encode_with_positions


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, help="the profile folder of a job's data root (<data_root>/mini)")
    parser.add_argument("--base", type=Path, default=None, help="the base to fine-tune (default <data>/model/base)")
    parser.add_argument("--steps", type=int, default=300, help="fine-tuning steps of every variant (fixed)")
    parser.add_argument("--override", default="{}", help="other TrainConfig overrides as JSON, on the mini train preset")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=Path("/tmp/classification-binding"))
    parser.add_argument("--text-only", action="store_true", help="only the text encoder's slot cosines")
    parser.add_argument("--causal-text", action="store_true", help="fine-tune a copy of the base with a causal MiniLM")
    parser.add_argument("--position-code", type=float, default=0.0, help="norm of a position code added to token states")
    args = parser.parse_args(argv)
    if args.position_code:
        add_position_code(args.position_code)

    summary: dict = {"text_slots": text_slots()}
    for row in summary["text_slots"]:
        print(f"MiniLM ({row['attention']}) layer {row['layer']}: 'red' first slot vs second slot {row['same_word_other_slot']:.3f}; "
              f"'red' vs 'green' in the first slot {row['same_slot_other_word']:.3f}", flush=True)
    if args.text_only:
        return summary
    if args.data is None:
        parser.error("--data is required unless --text-only")

    import pandas as pd

    from instructcv_core.data.imagestore import ImageStore
    from instructcv_core.data.records import atomic_write_text
    from instructcv_core.evaluation.generation import LazyImages
    from instructcv_core.inference.config import SamplerConfig
    from instructcv_core.inference.sampler import InstructCVSampler
    from instructcv_core.presets import resolve
    from instructcv_core.training.config import TrainConfig
    from instructcv_core.training.loop import train

    datasets = args.data / "datasets"
    manifest = pd.read_parquet(datasets / "fp_manifest.parquet")
    test = pd.read_parquet(datasets / "test" / "pets.parquet")
    images = LazyImages(ImageStore(datasets / "images"))
    sampler_config = resolve(SamplerConfig, "mini", "sampler", {"resolution": 64})
    base = args.base or args.data / "model" / "base"
    if args.causal_text:
        base = causal_copy(base, args.out / "causal_base")
    summary.update(steps=args.steps, override=json.loads(args.override), causal_text=args.causal_text,
                   position_code=args.position_code, variants={})
    for name in args.variants:
        out = args.out / name
        out.mkdir(parents=True, exist_ok=True)
        train_rows, test_rows = variant_frames(name, manifest, test)
        train_rows.to_parquet(out / "manifest.parquet")
        config = resolve(TrainConfig, "mini", "train", {"checkpointing_steps": 100_000, **json.loads(args.override), "max_steps": args.steps},
                         base_model=str(base), manifest=str(out / "manifest.parquet"),
                         image_store=str(datasets / "images"), output_dir=str(out / "train"), resolution=64, seed=0)
        result = train(config)
        sampler = InstructCVSampler.from_pretrained(result.pipeline_dir, sampler_config)
        row = {"pairs": len(train_rows), "final_loss": round(result.final_loss, 4),
               "train": colour_accuracy(sampler, train_rows, images), "test": colour_accuracy(sampler, test_rows, images)}
        summary["variants"][name] = row
        print(f"{name}: {row['pairs']} pairs, {result.steps} steps of {config.train_batch_size}, loss {row['final_loss']}; "
              f"train {row['train']['accuracy']} {row['train']['ci']} (n={row['train']['n']}); "
              f"test {row['test']['accuracy']} {row['test']['ci']} (n={row['test']['n']}), "
              f"says the first colour {row['test']['says_first']}", flush=True)
    atomic_write_text(args.out / "summary.json", json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
