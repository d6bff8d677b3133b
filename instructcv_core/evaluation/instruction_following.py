"""Does a model do what the instruction says? Category swaps and task-word switches on test images.

A model that learned to draw "a mask" or "some boxes" without reading the instruction can score
above the untrained base; this check asks the same image different things and requires the answer
to change the way the instruction changed:

* **category swap** (segmentation, detection, classification benchmarks): on images holding two or
  more categories, an ordered pair (A, B) asks for A; the output must match A's ground truth better
  than B's: ``IoU(output for A, GT of A) > IoU(output for A, GT of B)`` (detection: the filled
  boxes found in the output against the filled ground-truth boxes). Classification asks "Show
  <positive> if the picture has A ..." for the true class A and for another class B: the margin
  towards the positive colour must be larger for A than for B;
* **task-word switch** (every benchmark): one image asked for every registered task (segment,
  detect, estimate depth, classify); each output's kind (:func:`output_kind`) must be the kind the
  task draws.

What is particular to a task lives in its module (`instructcv_core.tasks`): its evaluation of the
benchmark's kind builds and judges the swaps (``swap_candidates``, ``swap_asks``, ``judge_swap``),
and each task says how it is asked in a switch and what it draws (``probe_instruction``,
``draws``). This module ranks, bounds and seeds the probes and judges the output kinds.

It passes when both rates reach :data:`FOLLOW_RATE` (90 %); with nothing to ask it fails. The
probes are a fixed, seeded, bounded set per benchmark (:func:`plan_probes`; at most 20 pairs and 5
images x 4 task words by default, ``EvalConfig.following_pairs`` / ``following_images``), generated with the
checkpoint's sampler and kept beside the benchmark's results (``instruction_following.parquet``,
``instruction_following.json``); a rerun with the same checkpoint and sampler reuses them.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from instructcv_core.evaluation.config import EvalConfig
from instructcv_core.evaluation.data import BenchmarkData
from instructcv_core.tasks import TASKS, evaluation, task
from instructcv_core.tasks.base import present_categories, query_seed, swap_probe

#: The share of category swaps and of task switches a model must follow.
FOLLOW_RATE = 0.9

#: The output kinds :func:`output_kind` tells apart (a task's ``draws`` is one of the first four).
OUTPUT_KINDS = ("mask", "boxes", "depth", "colour", "other")

# Thresholds of :func:`output_kind` (0..255 units, means over pixels)
GRAY_CHROMA = 24.0  # mean (max - min channel) below this: a gray image
BINARY_SHARE = 0.8  # share of gray pixels < 64 or > 191 from which a gray image is a mask
BLOCK_DEVIATION = 12.0  # mean |pixel - mean colour| below this: one flat colour
BLOCK_CHROMA = 20.0  # ... and a colour block when that colour is not gray (max - min channel)
INPUT_DISTANCE = 40.0  # mean |output - input| below this: the input redrawn (with outlines: boxes)


def task_kinds() -> dict[str, str]:
    """What each registered task draws (its ``draws``), by task name in the registry's order."""
    return {name: t.draws for name, t in TASKS.items()}


def output_kind(output: np.ndarray, image: np.ndarray) -> str:
    """The kind of picture a generated ``output`` is, judged against its ``input`` image.

    * ``colour``: one flat, non-gray colour (mean deviation from the mean colour < 12, its
      chroma ``max - min`` channel >= 20): a classification block. A gray block (the palette's
      white) cannot be told from a full mask and is judged as gray below;
    * gray images (mean chroma < 24): ``mask`` when at least 80 % of the pixels are dark (< 64)
      or bright (> 191), else ``depth`` (a gray map with mid tones);
    * ``boxes``: a coloured image close to the input (mean absolute difference < 40 after
      resizing the input to the output's size): the input redrawn, with its outlines;
    * ``other``: anything else (noise, a colour cast, an unrelated picture).
    """
    from PIL import Image

    out = np.asarray(output, dtype=np.float32)[..., :3]
    pixels = out.reshape(-1, 3)
    chroma = float((pixels.max(axis=1) - pixels.min(axis=1)).mean())
    mean_colour = pixels.mean(axis=0)
    deviation = float(np.abs(pixels - mean_colour).mean())
    if deviation < BLOCK_DEVIATION and float(mean_colour.max() - mean_colour.min()) >= BLOCK_CHROMA:
        return "colour"
    if chroma < GRAY_CHROMA:
        gray = pixels.mean(axis=1)
        return "mask" if float(((gray < 64) | (gray > 191)).mean()) >= BINARY_SHARE else "depth"
    source = np.asarray(image)[..., :3]
    if source.shape[:2] != out.shape[:2]:
        source = np.asarray(Image.fromarray(source.astype(np.uint8)).resize((out.shape[1], out.shape[0]), Image.Resampling.BILINEAR))
    if float(np.abs(out - source.astype(np.float32)).mean()) < INPUT_DISTANCE:
        return "boxes"
    return "other"


# --------------------------------------------------------------------------------------------
# the probes


def _rank(seed: int, name: str, key: str) -> str:
    return hashlib.sha256(f"{seed}|{name}|following|{key}".encode()).hexdigest()


def _image_category(bench: BenchmarkData, image_id: str, present: dict[str, list[str]]) -> str | None:
    """A category to name in this image's task-switch instructions: one it holds, else its label."""
    if present.get(image_id):
        return present[image_id][0]
    return getattr(bench.records[image_id], "label_name", None) or None


def plan_probes(bench: BenchmarkData, config: EvalConfig) -> pd.DataFrame:
    """The fixed, seeded probes of a benchmark, one row per output to generate: at most
    ``config.following_pairs`` category-swap pairs (one output each; classification two) and
    ``config.following_images`` task-switch images (one output per registered task each).

    Columns: probe (``swap`` | ``switch``), pair (the probe's group: a swap pair or a switch
    image), image_id, input_digest, task, category, other (the swapped-away category), role
    (swap: ``asked`` | ``other``, classification asks both), expected_kind (switch), instruction, seed.
    """
    inputs = bench.frame.groupby("image_id")["input_original_digest"].first().to_dict()
    present = present_categories(bench)
    rows = []
    own, scorer = task(bench.spec.task), evaluation(bench.spec.task, bench.spec.kind)
    rank = lambda key: _rank(config.seed, bench.name, key)  # noqa: E731
    candidates = scorer.swap_candidates(bench, config, rank)
    candidates.sort(key=lambda c: rank("|".join(c)))
    for n, (image_id, a, b) in enumerate(candidates[:config.following_pairs]):
        for category, role in scorer.swap_asks(a, b):
            rows.append({"probe": "swap", "pair": f"swap-{n:03d}", "image_id": image_id, "task": own.name,
                         "category": category, "other": b if role == "asked" else a, "role": role,
                         "expected_kind": None, "instruction": own.probe_instruction(bench, category, config)})
    chosen = sorted(bench.image_ids, key=lambda i: _rank(config.seed, bench.name, f"switch|{i}"))[:config.following_images]
    for n, image_id in enumerate(chosen):
        category = _image_category(bench, image_id, present)
        for asked in TASKS.values():
            rows.append({"probe": "switch", "pair": f"switch-{n:03d}", "image_id": image_id, "task": asked.name,
                         "category": category, "other": None, "role": "asked", "expected_kind": asked.draws,
                         "instruction": asked.probe_instruction(bench, category, config)})
    frame = pd.DataFrame(rows, columns=["probe", "pair", "image_id", "task", "category", "other", "role",
                                        "expected_kind", "instruction"])
    frame["input_digest"] = [inputs[i] for i in frame["image_id"]]
    frame["seed"] = [query_seed(config.seed, f"{bench.name}/following", i, t)
                     for i, t in zip(frame["image_id"], frame["instruction"])]
    return frame


# --------------------------------------------------------------------------------------------
# judging


def judge_probes(bench: BenchmarkData, probes: pd.DataFrame, output_image: Callable[[str], np.ndarray],
                 input_image: Callable[[str], np.ndarray], config: EvalConfig,
                 follow_rate: float = FOLLOW_RATE) -> tuple[dict, pd.DataFrame]:
    """Judge generated probes (``probes`` with ``output_digest``): (summary, one row per probe group).

    The summary holds ``pairs``, ``pairs_followed``, ``swap_rate``, ``switch_outputs``,
    ``switch_matched``, ``switch_rate``, ``kinds`` (expected -> found -> count), ``passed`` and
    ``reason``. The benchmark's evaluation judges each swap pair (its ``judge_swap``).
    """
    scorer = evaluation(bench.spec.task, bench.spec.kind)
    cache: dict = {}
    judged = []
    for pair, group in probes[probes["probe"] == "swap"].groupby("pair", sort=True):
        asked = swap_probe(group)
        mine, theirs = scorer.judge_swap(bench, group, output_image, config, cache)
        judged.append({"probe": "swap", "pair": pair, "image_id": asked.image_id, "category": asked.category,
                       "other": asked.other, "score_asked": float(mine), "score_other": float(theirs),
                       "expected_kind": None, "found_kind": None, "followed": bool(mine > theirs)})
    kinds: dict[str, dict[str, int]] = {}
    for row in probes[probes["probe"] == "switch"].itertuples():
        found = output_kind(output_image(row.output_digest), input_image(row.input_digest))
        kinds.setdefault(row.expected_kind, {}).setdefault(found, 0)
        kinds[row.expected_kind][found] += 1
        judged.append({"probe": "switch", "pair": row.pair, "image_id": row.image_id, "category": row.category,
                       "other": None, "score_asked": math.nan, "score_other": math.nan,
                       "expected_kind": row.expected_kind, "found_kind": found, "followed": found == row.expected_kind})
    table = pd.DataFrame(judged, columns=["probe", "pair", "image_id", "category", "other", "score_asked",
                                          "score_other", "expected_kind", "found_kind", "followed"])
    swaps, switches = table[table["probe"] == "swap"], table[table["probe"] == "switch"]
    rate = lambda frame: float(frame["followed"].mean()) if len(frame) else math.nan  # noqa: E731
    summary = {"pairs": len(swaps), "pairs_followed": int(swaps["followed"].sum()), "swap_rate": rate(swaps),
               "switch_outputs": len(switches), "switch_matched": int(switches["followed"].sum()),
               "switch_rate": rate(switches), "kinds": kinds, "follow_rate": follow_rate}
    problems = []
    if not len(table):
        problems.append("nothing to ask: no probe could be planned")
    if len(swaps) and summary["swap_rate"] < follow_rate:
        problems.append(f"category swaps followed on {summary['pairs_followed']}/{len(swaps)} pairs "
                        f"({summary['swap_rate']:.0%} < {follow_rate:.0%})")
    if len(switches) and summary["switch_rate"] < follow_rate:
        problems.append(f"task switches drew the asked kind on {summary['switch_matched']}/{len(switches)} outputs "
                        f"({summary['switch_rate']:.0%} < {follow_rate:.0%})")
    summary["passed"] = not problems
    summary["reason"] = "; ".join(problems) if problems else (
        f"followed {summary['pairs_followed']}/{len(swaps)} category swaps and "
        f"{summary['switch_matched']}/{len(switches)} task switches (>= {follow_rate:.0%})")
    return summary, table


def check_instruction_following(bench: BenchmarkData, sampler_factory: Callable[[], object], checkpoint_id: str,
                                config: EvalConfig, input_store, output_store, out_dir: Path,
                                log: Callable[[str], None] = print) -> dict:
    """Plan, generate (or reuse) and judge a benchmark's probes; write them under ``out_dir``."""
    from instructcv_core.construction.manifest import write_table_frame
    from instructcv_core.data.records import atomic_write_text
    from instructcv_core.evaluation.generation import generate_outputs
    from instructcv_core.evaluation.reporting import jsonable
    from instructcv_core.tasks.arrays import as_rgb

    probes = plan_probes(bench, config)
    out_dir = Path(out_dir)
    table_path, summary_path = out_dir / "instruction_following.parquet", out_dir / "instruction_following.json"
    identity = {"checkpoint": checkpoint_id, "sampler": config.sampler.to_dict(),
                "probes": hashlib.sha256(probes[["image_id", "instruction", "seed"]].to_json().encode()).hexdigest()}
    generated = None
    if table_path.exists() and summary_path.exists() and json.loads(summary_path.read_text()).get("identity") == identity:
        stored = pd.read_parquet(table_path)
        if all(output_store.path(d).exists() for d in stored["output_digest"]):
            generated = stored[list(probes.columns) + ["output_digest"]]
    if generated is None:
        log(f"{bench.name}: generating {len(probes)} instruction-following probes")
        generated = generate_outputs(sampler_factory(), probes, input_store, output_store)
    summary, judged = judge_probes(bench, generated, lambda d: as_rgb(output_store.get(d)),
                                   lambda d: as_rgb(input_store.get(d)), config)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_table_frame(generated, table_path)
    atomic_write_text(summary_path, json.dumps(jsonable({**summary, "identity": identity}), indent=1, sort_keys=True))
    return {**summary, "judged": judged, "path": str(summary_path)}


__all__ = ["FOLLOW_RATE", "OUTPUT_KINDS", "check_instruction_following", "judge_probes", "output_kind", "plan_probes",
           "task_kinds"]
