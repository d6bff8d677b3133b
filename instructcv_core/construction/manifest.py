"""Parquet manifests: one row per (input, instruction, target), built from pairs and instructions.

- ``fp_manifest``: every training pair with its task's fixed template (FP).
- ``rp_manifest``: every training pair with a paraphrase drawn from the accepted bank (RP); the
  paraphrase is chosen by `instructions.pick(seed, pair_id)`, so it depends only on the seed and
  the pair, and every paraphrase of the bank is reachable.
- test manifests (one per benchmark): the test pairs with the FP template; evaluation decides what
  else to ask.

Images are referenced by digest (`ImageStore`); rows are sorted by sample key and written with a
fixed schema, so the same config and seed give byte-identical files.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from instructcv_core.data.records import atomic_write
from instructcv_core.instructions import templates as instructions
from instructcv_core.tasks import task

_BOX = pa.struct([("x", pa.float64()), ("y", pa.float64()), ("w", pa.float64()), ("h", pa.float64())])
PAIR_SCHEMA = pa.schema(
    [
        ("pair_id", pa.string()),
        ("sample_key", pa.string()),
        ("role", pa.string()),
        ("benchmark", pa.string()),
        ("task", pa.string()),
        ("dataset", pa.string()),
        ("split", pa.string()),
        ("image_id", pa.string()),
        ("category", pa.string()),
        ("category_text", pa.string()),
        ("variant", pa.string()),
        ("positive", pa.bool_()),
        ("color", pa.string()),
        ("color2", pa.string()),
        ("boxes", pa.list_(_BOX)),
        ("orig_width", pa.int32()),
        ("orig_height", pa.int32()),
        ("source_path", pa.string()),
        ("source_digest", pa.string()),
        ("input_digest", pa.string()),
        ("target_digest", pa.string()),
        ("input_original_digest", pa.string()),
        ("target_original_digest", pa.string()),
    ]
)
MANIFEST_SCHEMA = PAIR_SCHEMA.append(pa.field("instruction", pa.string())).append(
    pa.field("template_id", pa.string())
).append(pa.field("prompt_source", pa.string()))


def write_table(rows: list[dict] | pd.DataFrame, path: Path, schema: pa.Schema, metadata: dict | None = None) -> Path:
    """Write rows with ``schema`` atomically (sorted by sample key; no pandas index)."""
    if isinstance(rows, pd.DataFrame):  # pandas holds missing values as NaN; Parquet wants nulls
        rows = rows.astype(object).where(rows.notna(), None).to_dict("records")
    rows = sorted(rows, key=lambda r: r["sample_key"])
    table = pa.Table.from_pylist(rows, schema=schema)
    if metadata:
        table = table.replace_schema_metadata({k.encode(): json.dumps(v, sort_keys=True).encode() for k, v in metadata.items()})
    atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))
    return path


def write_table_frame(frame: pd.DataFrame, path: Path) -> Path:
    """Write a small DataFrame (banks, reports) as Parquet atomically, without its index."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))
    return path


def read_pairs(paths: list[Path]) -> pd.DataFrame:
    """All pair rows of the given shard files, in sample-key order."""
    frames = [pq.read_table(p).to_pandas() for p in sorted(paths)]
    if not frames:
        return pd.DataFrame(columns=PAIR_SCHEMA.names)
    return pd.concat(frames, ignore_index=True).sort_values("sample_key", kind="stable").reset_index(drop=True)


def fp_pairs(pairs: pd.DataFrame) -> pd.DataFrame:
    """The pairs of the FP manifest: all but those only RP takes (Pets' binary questions with random
    colours), where FP has them with the official fixed colours instead. Pairs built with
    ``BuildConfig.fp_binary_colours: random`` have no fixed-colour questions: FP then takes the
    random-colour ones, as RP."""
    from instructcv_core.tasks.classification import FP_ONLY_VARIANTS, RP_ONLY_VARIANTS

    if "variant" not in pairs:
        return pairs
    if not pairs["variant"].isin(FP_ONLY_VARIANTS).any():
        return pairs
    return pairs[~pairs["variant"].isin(RP_ONLY_VARIANTS)]


def rp_pairs(pairs: pd.DataFrame) -> pd.DataFrame:
    """The pairs of the RP manifest: all but the FP-only fixed-colour binary questions."""
    from instructcv_core.tasks.classification import FP_ONLY_VARIANTS

    return pairs[~pairs["variant"].isin(FP_ONLY_VARIANTS)] if "variant" in pairs else pairs


def attach_fp(pairs: pd.DataFrame) -> pd.DataFrame:
    """Each FP pair (:func:`fp_pairs`) with its task's fixed template, rendered."""
    out = fp_pairs(pairs).copy()
    out["template_id"] = out["task"].map(lambda t: f"fp-{t[:3]}")
    out["instruction"] = [
        instructions.render(instructions.FP_TEMPLATES[row.task], **_slots(row)) for row in out.itertuples()
    ]
    out["prompt_source"] = "fp"
    return out


def attach_rp(pairs: pd.DataFrame, bank: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Each pair with a paraphrase of its task's template, picked from the accepted bank by (seed, pair id)."""
    accepted = bank[bank["accepted"]].sort_values(["task", "template_id"], kind="stable")
    by_task = {task: group.reset_index(drop=True) for task, group in accepted.groupby("task")}
    pairs = rp_pairs(pairs)
    missing = sorted(set(pairs["task"]) - set(by_task))
    if missing:
        raise ValueError(f"the paraphrase bank has no accepted paraphrase for task(s) {', '.join(missing)}")
    out = rp_pairs(pairs).copy()
    texts, ids, sources = [], [], []
    for row in out.itertuples():
        options = by_task[row.task]
        choice = options.iloc[instructions.pick(seed, row.pair_id, len(options))]
        texts.append(instructions.render(choice["paraphrase"], **_slots(row)))
        ids.append(choice["template_id"])
        sources.append(choice["source"])
    out["instruction"], out["template_id"], out["prompt_source"] = texts, ids, sources
    return out


def _slots(row) -> dict:
    """The placeholder values of one pair (its task's: category, colours)."""
    return task(row.task).instruction_slots(row)


def leaked_sources(train: pd.DataFrame, test: pd.DataFrame) -> pd.DataFrame:
    """Training rows whose source image (by pixel digest) or resized input appears in a test set."""
    leaked = train[train["source_digest"].isin(set(test["source_digest"])) | train["input_digest"].isin(set(test["input_digest"]))]
    return leaked[["dataset", "split", "image_id", "source_path", "source_digest"]].drop_duplicates()


def instruction_diversity(manifest: pd.DataFrame) -> dict[str, dict]:
    """Per task: distinct templates used, pairs, and the share of the most frequent template."""
    out = {}
    for task, group in manifest.groupby("task"):
        counts = Counter(group["template_id"])
        out[task] = {
            "pairs": len(group),
            "templates_used": len(counts),
            "top_count": max(counts.values()),
            "top_share": max(counts.values()) / len(group),
        }
    return out


def counts_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """Pairs per (task, dataset, split) as a small table for metadata."""
    return (
        manifest.groupby(["task", "dataset", "split"], sort=True).size().rename("pairs").reset_index()
    )
