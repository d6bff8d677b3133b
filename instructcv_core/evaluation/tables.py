"""The paper's Tables 1–3, regenerated from our evaluation results beside the published numbers.

Every table is a long DataFrame (one row per benchmark/metric or instruction) with the published
InstructCV-FP and -RP numbers in the columns next to ours under both protocols, so a reader sees at
once how close the `paper` protocol comes to the published figure and how far the `standard` one
moves it. A ``released`` column shows the authors' released weights evaluated here under both
protocols (``not evaluated`` until the `released_evaluation` job has run); its provenance (hub
commit or sha256) is each cell's ``checkpoint``. Released cells computed on other terms than the
FP/RP cells of their row (sampler, image set) are left out of the row with a note. Which benchmark fills which row, with which metric, and the published InstructCV figures
come from the benchmark table (`instructcv_core.benchmarks`); the published rows of other models
are kept here as published tables of their own.

Published values: the InstructCV paper (ICLR 2024), Tables 1–3.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import fields
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from instructcv_core.benchmarks import in_table

#: Published baselines of Table 1, in the order of its benchmark columns (:func:`table1_columns`);
#: None = not reported; "*" cells = the model cannot run the external set.
TABLE1_BASELINES: list[tuple[str, list[float | str | None]]] = [
    ("DepthFormer", [0.339, 0.427, None, None, None, None, None, None]),
    ("BinsFormer", [0.330, 0.433, None, None, None, None, None, None]),
    ("SSA", [None, None, 47.150, "*", None, None, None, None]),
    ("Mask2Former", [None, None, 56.100, "*", None, None, None, None]),
    ("ResNet", [None, None, None, None, 97.500, "*", None, None]),
    ("ViT", [None, None, None, None, 98.400, "*", None, None]),
    ("DETR", [None, None, None, None, None, None, 60.600, "*"]),
    ("Mask R-CNN", [None, None, None, None, None, None, 60.500, "*"]),
    ("UViM", [0.468, "*", None, None, None, None, None, None]),
    ("Unified-IO", [0.387, 0.287, 25.713, 27.724, 96.514, 89.877, None, None]),
    ("Pix2SeqV2", [None, None, None, None, None, None, 57.400, 38.500]),
    ("Painter", [0.288, 0.285, 49.9, 52.5, None, None, None, None]),
    ("InstructCV-FP", [0.275, 0.268, 52.3, 53.5, 80.4, 75.1, 49.1, 62.00]),
    ("InstructCV-RP", [0.297, 0.279, 47.235, 52.125, 82.135, 74.665, 48.500, 61.700]),
]
#: Published rows of Table 2 from other models (InstructCV's own row comes from the benchmark table).
TABLE2_BASELINES = {"Inpainting (visual prompting)": 58.5, "Painter": 62.3}
VARIANTS = ("fp", "rp")
#: The authors' released weights, evaluated here: a column beside FP and RP (`assets/evaluate.py`).
RELEASED = "released"
PROTOCOLS = ("paper", "standard")
#: What an empty released cell says in Markdown when the released weights were not evaluated.
NOT_EVALUATED = "not evaluated"


def table1_columns() -> list[str]:
    """Table 1's benchmark columns, in the paper's order (each benchmark's first row)."""
    return list(dict.fromkeys(b.name for b, _ in in_table("table1")))


#: Sampler settings that change the outputs (batch size and device do not: every output has its own seed).
SAMPLER_KEYS = ("scheduler", "timestep_spacing", "steps", "text_guidance", "image_guidance", "resolution", "dtype")
#: One row per (variant, benchmark, protocol, metric): the value and where it comes from.
CELL_COLUMNS = ["variant", "benchmark", "protocol", "metric", "value", "ci_low", "ci_high", "n", "checkpoint",
                "sampler", "image_set", "instructions", "source"]
#: Row notes of benchmarks whose `paper` column cannot be read beside the published figure as is.
PAPER_NOTES = {
    "classification": "paper column inverted: the official scorer (evaluate_cls.py at 5814835) takes the output "
                      "nearer green, the colour its own inference prompt asks for when the class is ABSENT, so an "
                      "ideal model scores about 0 % (near-ties count as correct); not comparable to the published "
                      "accuracy (see docs/protocols.md, classification quirk 1)",
}


class IncomparableCells(ValueError):
    """Two cells a table would put side by side were computed on different terms."""


def read_result(directory: Path, variant: str) -> pd.DataFrame:
    """One benchmark's evaluation results folder as table cells (:data:`CELL_COLUMNS`).

    Reads ``metrics.parquet`` (``value``, and ``n``/``ci_low``/``ci_high`` where written),
    ``identity.json`` (checkpoint, test manifest digest, sampler, how the instructions were asked)
    and ``queries.parquet`` (the images evaluated). ``n`` is the metrics table's own sample size
    where it has one, else the number of images; ``image_set`` is a digest of the test manifest and
    the evaluated image ids; ``sampler`` the sampler's label (``paper``, ``few-4``, ``one``, ...,
    :attr:`~instructcv_core.inference.config.SamplerConfig.label`, derived from the recorded values)
    followed by the settings that change the outputs.
    """
    directory = Path(directory)
    paths = {name: directory / name for name in ("metrics.parquet", "identity.json", "queries.parquet")}
    for path in paths.values():
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing; the evaluation result folder {directory} is incomplete "
                                    "(re-materialise its evaluation asset)")
    metrics = pd.read_parquet(paths["metrics.parquet"])
    identity = json.loads(paths["identity.json"].read_text())
    images = sorted(set(pd.read_parquet(paths["queries.parquet"], columns=["image_id"])["image_id"].astype(str)))
    image_set = hashlib.sha256((str(identity.get("manifest")) + "\n" + "\n".join(images)).encode()).hexdigest()[:16]
    sampler = identity.get("sampler") or {}
    cells = pd.DataFrame({
        "variant": variant,
        "benchmark": metrics["benchmark"],
        "protocol": metrics["protocol"],
        "metric": metrics["metric"],
        "value": metrics["value"].astype(float),
        "ci_low": metrics["ci_low"].astype(float) if "ci_low" in metrics else math.nan,
        "ci_high": metrics["ci_high"].astype(float) if "ci_high" in metrics else math.nan,
        "n": metrics["n"].astype("Int64") if "n" in metrics else len(images),
        "checkpoint": str(identity.get("checkpoint", "")),
        "sampler": sampler_summary(sampler),
        "image_set": f"{len(images)} images #{image_set}",
        "instructions": str(identity.get("instructions", "fp templates (not recorded)")),
        "source": str(directory),
    })
    return cells[CELL_COLUMNS]


def sampler_summary(sampler: Mapping) -> str:
    """A recorded sampler config (``identity.json``) as ``<label>: <settings that change the outputs>``,
    e.g. ``one: scheduler ddim, timestep_spacing trailing, steps 1, ...`` (an empty timestep spacing,
    the model's own, is left out). The label is computed from
    the recorded values, so results written before sampler presets existed get theirs too."""
    from instructcv_core.inference.config import SamplerConfig

    known = {f.name for f in fields(SamplerConfig)}
    label = SamplerConfig(**{k: v for k, v in sampler.items() if k in known}).label
    return f"{label}: " + ", ".join(f"{k} {sampler[k]}" for k in SAMPLER_KEYS if sampler.get(k, "") != "")


def read_results(sources: Mapping[tuple[str, str], Path | None]) -> pd.DataFrame:
    """The cells of exactly the given results folders: ``{(variant, benchmark): folder}``.

    The folders are those the upstream evaluation assets recorded (their ``results_dir``
    metadata), never a search of the evaluation folder: a table shows what its inputs produced.
    A ``None`` folder (not materialised) contributes no cell. A folder whose metrics name another
    benchmark is refused.
    """
    frames = []
    for (variant, benchmark), directory in sorted(sources.items()):
        if directory is None:
            continue
        cells = read_result(Path(directory), variant)
        wrong = set(cells["benchmark"]) - {benchmark}
        if wrong:
            raise ValueError(f"{directory}: holds results of {', '.join(sorted(wrong))}, expected {benchmark}")
        frames.append(cells)
    if not frames:
        return pd.DataFrame(columns=CELL_COLUMNS)
    return pd.concat(frames, ignore_index=True)


def _cell(results: pd.DataFrame, variant: str, benchmark: str, protocol: str, metric: str) -> pd.Series | None:
    hit = results[(results["variant"] == variant) & (results["benchmark"] == benchmark)
                  & (results["protocol"] == protocol) & (results["metric"] == metric)]
    if len(hit) > 1:
        raise ValueError(f"{len(hit)} results for {variant}/{benchmark}/{protocol}/{metric}: {', '.join(hit['source'])}")
    return hit.iloc[0] if len(hit) else None


def _is_subset(cell: pd.Series | None) -> bool:
    """Whether a cell was computed on a seeded subset of the images (subset mode, `evaluation.subset`)."""
    value = None if cell is None else cell.get("subset")
    return value is not None and value == value and bool(value)  # NaN (results without the column): no


def _mark_subset(frame: pd.DataFrame, cells: list[tuple[int, str]]) -> pd.DataFrame:
    """Remember which cells come from a subset (``frame.attrs["subset_cells"]``); :func:`to_markdown` labels them."""
    frame.attrs["subset_cells"] = cells
    return frame


def check_comparable(results: pd.DataFrame, benchmark: str) -> None:
    """Refuse to set FP and RP cells of one benchmark side by side unless they were computed on the
    same terms: the same sampler settings and the same evaluated images (test manifest and ids).
    Released cells are not refused here: :func:`released_conflict` leaves them out of the row instead."""
    cells = results[(results["benchmark"] == benchmark) & results["variant"].isin(VARIANTS)]
    for column in ("sampler", "image_set"):
        values = cells.groupby("variant")[column].first().to_dict()
        if len(set(values.values())) > 1:
            found = "; ".join(f"{v.upper()}: {values[v]} ({cells[cells['variant'] == v]['source'].iloc[0]})"
                              for v in sorted(values))
            raise IncomparableCells(f"{benchmark}: the FP and RP results differ in {column.replace('_', ' ')} and "
                                    f"cannot share a table row ({found}); re-evaluate them with the same settings")


def released_conflict(results: pd.DataFrame, benchmark: str) -> str | None:
    """Why the released cells of ``benchmark`` cannot sit beside its FP/RP cells (another sampler or
    image set, named with both values), or None when they can (or either side is missing)."""
    cells = results[results["benchmark"] == benchmark]
    released, ours = cells[cells["variant"] == RELEASED], cells[cells["variant"].isin(VARIANTS)]
    if released.empty or ours.empty:
        return None
    for column in ("sampler", "image_set"):
        theirs, mine = released[column].iloc[0], ours[column].iloc[0]
        if theirs != mine:
            return (f"{benchmark}: the released weights were evaluated with another {column.replace('_', ' ')} "
                    f"({theirs}) than FP/RP ({mine}), so their cells are left out of the row; re-evaluate them "
                    f"with the same settings ({released['source'].iloc[0]})")
    return None


def _released_cell(results: pd.DataFrame, benchmark: str, protocol: str, metric: str) -> pd.Series | None:
    """The released cell, or None when there is none or it was computed on other terms than FP/RP."""
    if released_conflict(results, benchmark) is not None:
        return None
    return _cell(results, RELEASED, benchmark, protocol, metric)


def _released_evaluated(results: pd.DataFrame, benchmark: str) -> bool:
    return bool(((results["variant"] == RELEASED) & (results["benchmark"] == benchmark)).any())


def table_rows(results: pd.DataFrame, table: str) -> pd.DataFrame:
    """One row per (benchmark, table row): published FP/RP beside ours under both protocols, then the
    released weights evaluated here (``released (<protocol>)``), with each cell's 95 % CI
    (``<column> ci_low`` / ``ci_high``, NaN where the results have none) and a row ``note`` where a
    column cannot be read beside the published figure as is."""
    from instructcv_core.benchmarks import BENCHMARKS

    rows, subset_cells, not_evaluated = [], [], []
    for benchmark, spec in in_table(table):
        check_comparable(results, benchmark.name)
        row = {"benchmark": benchmark.name, "metric": spec.label}
        for variant, published in (("fp", spec.published_fp), ("rp", spec.published_rp), (RELEASED, None)):
            if published is not None:
                row[f"{variant.upper()} published"] = published
            for protocol in PROTOCOLS:
                metric = spec.metric(protocol)
                if variant == RELEASED:
                    column, cell = released_column(protocol), _released_cell(results, benchmark.name, protocol, metric)
                else:
                    column, cell = f"{variant.upper()} ours ({protocol})", _cell(results, variant, benchmark.name, protocol, metric)
                row[column] = math.nan if cell is None else float(cell["value"])
                row[f"{column} ci_low"] = math.nan if cell is None else float(cell["ci_low"])
                row[f"{column} ci_high"] = math.nan if cell is None else float(cell["ci_high"])
                if _is_subset(cell):
                    subset_cells.append((len(rows), column))
                if variant == RELEASED and not _released_evaluated(results, benchmark.name):
                    not_evaluated.append((len(rows), column))
        row["note"] = PAPER_NOTES.get(BENCHMARKS[benchmark.name].task, "")
        rows.append(row)
    return _mark_not_evaluated(_mark_subset(pd.DataFrame(rows), subset_cells), not_evaluated)


def released_column(protocol: str) -> str:
    """The table column of the released weights under ``protocol``."""
    return f"released ({protocol})"


def _mark_not_evaluated(frame: pd.DataFrame, cells: list[tuple[int, str]]) -> pd.DataFrame:
    """Remember which released cells were not evaluated (``frame.attrs["not_evaluated_cells"]``);
    :func:`to_markdown` writes :data:`NOT_EVALUATED` there."""
    frame.attrs["not_evaluated_cells"] = cells
    return frame


def table1(results: pd.DataFrame) -> pd.DataFrame:
    """Table 1: the eight benchmarks, published FP/RP beside ours under both protocols."""
    return table_rows(results, "table1")


def cells_table(results: pd.DataFrame, benchmarks: Iterable[str]) -> pd.DataFrame:
    """The provenance of every cell of a table: value, CI, n, checkpoint, sampler, image set,
    how the instructions were asked, protocol and the results folder."""
    names = list(benchmarks)
    return results[results["benchmark"].isin(names)].reset_index(drop=True)


def table_notes(results: pd.DataFrame, benchmarks: Iterable[str], statuses: Mapping[str, str] | None = None) -> list[str]:
    """What a reader must know beside a table: cells without a confidence interval, released cells left
    out because they were computed on other terms than FP/RP, which released weights the released
    cells are (source and revision), and upstream data that is incomplete (``statuses``: asset name
    -> its status line, e.g. ``raw_nyuv2``)."""
    notes = []
    benchmarks = list(benchmarks)
    cells = results[results["benchmark"].isin(benchmarks)]
    bare = cells[cells["ci_low"].isna() | cells["ci_high"].isna()]
    if len(bare):
        names = sorted({f"{v.upper()} {b}" for v, b in zip(bare["variant"], bare["benchmark"])})
        notes.append(f"no 95 % CI in the metrics.parquet of {', '.join(names)} (results written before confidence "
                     "intervals were recorded): those values are shown without one")
    notes += [conflict for conflict in (released_conflict(results, b) for b in benchmarks) if conflict]
    weights = sorted(set(cells[cells["variant"] == RELEASED]["checkpoint"]))
    if weights:
        notes.append("released: the authors' released weights evaluated here, " + "; ".join(weights)
                     + " (source @ hub commit or sha256), asked the fixed templates")
    for asset, status in sorted((statuses or {}).items()):
        if status and status != "complete":
            notes.append(f"{asset} is {status}")
    return notes


def table1_baselines() -> pd.DataFrame:
    """Table 1's published rows (baselines and InstructCV) as printed in the paper."""
    columns = table1_columns()
    return pd.DataFrame([{"model": name, **dict(zip(columns, values))} for name, values in TABLE1_BASELINES])


def table2(results: pd.DataFrame) -> pd.DataFrame:
    """Table 2: open-vocabulary mIoU; published rows, then ours (FP and RP, both protocols, with CIs)."""
    entries = in_table("table2")
    published = dict(TABLE2_BASELINES)
    for benchmark, spec in entries:
        published[spec.label] = spec.published_rp  # the paper reports the RP model only
    rows = [{"model": name, "source": "published", "protocol": "paper", "mIoU": value, "mIoU ci_low": math.nan,
             "mIoU ci_high": math.nan} for name, value in published.items()]
    subset_cells, not_evaluated = [], []
    for benchmark, spec in entries:
        check_comparable(results, benchmark.name)
        for variant in (*VARIANTS, RELEASED):
            for protocol in PROTOCOLS:
                if variant == RELEASED:
                    cell = _released_cell(results, benchmark.name, protocol, spec.metric(protocol))
                    if not _released_evaluated(results, benchmark.name):
                        not_evaluated.append((len(rows), "mIoU"))
                    model, source = "InstructCV released weights (evaluated here)", RELEASED
                else:
                    cell = _cell(results, variant, benchmark.name, protocol, spec.metric(protocol))
                    model, source = f"InstructCV-{variant.upper()} (ours)", "ours"
                if _is_subset(cell):
                    subset_cells.append((len(rows), "mIoU"))
                rows.append({"model": model, "source": source, "protocol": protocol,
                             "mIoU": math.nan if cell is None else float(cell["value"]),
                             "mIoU ci_low": math.nan if cell is None else float(cell["ci_low"]),
                             "mIoU ci_high": math.nan if cell is None else float(cell["ci_high"])})
    return _mark_not_evaluated(_mark_subset(pd.DataFrame(rows), subset_cells), not_evaluated)


def table3(heldout: dict[str, dict[str, dict[str, float]]], results: pd.DataFrame | None = None) -> pd.DataFrame:
    """Table 3: mIoU per held-out instruction. ``heldout[variant][protocol][instruction] = mIoU``
    (variants ``fp``, ``rp`` and ``released``); ``results`` (the cells of the evaluations) leaves out
    released values computed on other terms than FP/RP (:func:`released_conflict`)."""
    rows, not_evaluated = [], []
    conflict = results is not None and any(released_conflict(results, b.name) for b, _ in in_table("table3"))
    for _benchmark, spec in in_table("table3"):
        row = {"instruction": spec.label}
        for variant, published in (("fp", spec.published_fp), ("rp", spec.published_rp)):
            row[f"{variant.upper()} published"] = published
            for protocol in PROTOCOLS:
                row[f"{variant.upper()} ours ({protocol})"] = heldout.get(variant, {}).get(protocol, {}).get(spec.label, math.nan)
        for protocol in PROTOCOLS:
            column = released_column(protocol)
            value = heldout.get(RELEASED, {}).get(protocol, {}).get(spec.label, math.nan)
            row[column] = math.nan if conflict else value
            if RELEASED not in heldout:
                not_evaluated.append((len(rows), column))
        rows.append(row)
    return _mark_not_evaluated(pd.DataFrame(rows), not_evaluated)


def to_markdown(frame: pd.DataFrame) -> str:
    """A table as Markdown, numbers to 3 decimals, missing values blank; a column with ``ci_low`` /
    ``ci_high`` companions is shown as ``52.100 [48.000, 56.300]`` (the value alone where the
    interval is missing); cells computed on a seeded subset of the images (subset mode) carry a
    ``†`` and a note under the table; released cells that were not evaluated say so."""
    from instructcv_core.evaluation.subset import SUBSET_MARK

    shown = frame.copy()
    companions = [c for c in shown.columns if c.endswith(" ci_low") or c.endswith(" ci_high")]
    for column in shown.columns:
        if column in companions:
            continue
        low, high = f"{column} ci_low", f"{column} ci_high"
        if low in shown.columns and high in shown.columns:
            shown[column] = [_with_ci(v, lo, hi) for v, lo, hi in zip(shown[column], shown[low], shown[high])]
        elif pd.api.types.is_numeric_dtype(shown[column]) or shown[column].dtype == object:
            shown[column] = shown[column].map(_cell_text)
    cells = frame.attrs.get("subset_cells", [])
    for row, column in cells:
        if shown.at[row, column]:
            shown.at[row, column] = f"{shown.at[row, column]} {SUBSET_MARK}"
    for row, column in frame.attrs.get("not_evaluated_cells", []):
        if not shown.at[row, column]:
            shown.at[row, column] = NOT_EVALUATED
    text = shown.drop(columns=companions).to_markdown(index=False)
    if cells:
        text += (f"\n\n{SUBSET_MARK} standard protocol on a seeded subset of the test images "
                 "(`standard_subset`; see the `subset` column of each metrics.parquet).")
    return text


def _with_ci(value, low, high) -> str:
    text = _cell_text(value)
    if text and isinstance(low, float) and isinstance(high, float) and math.isfinite(low) and math.isfinite(high):
        return f"{text} [{low:.3f}, {high:.3f}]"
    return text


def _cell_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.3f}"
    return str(value)


__all__ = ["CELL_COLUMNS", "NOT_EVALUATED", "PAPER_NOTES", "RELEASED", "SAMPLER_KEYS", "TABLE1_BASELINES", "TABLE2_BASELINES",
           "IncomparableCells", "cells_table", "check_comparable", "read_result", "read_results", "released_column",
           "released_conflict", "sampler_summary", "table1", "table1_baselines", "table1_columns", "table2", "table3",
           "table_notes", "table_rows", "to_markdown"]
