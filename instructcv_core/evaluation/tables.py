"""The paper's Tables 1–3, regenerated from our evaluation results beside the published numbers.

Every table is a long DataFrame (one row per benchmark/metric or instruction) with the published
InstructCV-FP and -RP numbers in the columns next to ours under both protocols, so a reader sees at
once how close the `paper` protocol comes to the published figure and how far the `standard` one
moves it. Which benchmark fills which row, with which metric, and the published InstructCV figures
come from the benchmark table (`instructcv_core.benchmarks`); the published rows of other models
are kept here as published tables of their own.

Published values: the InstructCV paper (ICLR 2024), Tables 1–3.
"""

from __future__ import annotations

import math
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
PROTOCOLS = ("paper", "standard")


def table1_columns() -> list[str]:
    """Table 1's benchmark columns, in the paper's order (each benchmark's first row)."""
    return list(dict.fromkeys(b.name for b, _ in in_table("table1")))


def read_results(eval_dir: Path, variants=VARIANTS) -> pd.DataFrame:
    """Every ``metrics.parquet`` under ``eval_dir/<variant>/<benchmark>/`` as one frame (with a variant column)."""
    frames = []
    for variant in variants:
        for path in sorted((Path(eval_dir) / variant).glob("*/metrics.parquet")):
            frames.append(pd.read_parquet(path).assign(variant=variant))
    if not frames:
        return pd.DataFrame(columns=["benchmark", "protocol", "metric", "value", "mlflow_key", "variant"])
    return pd.concat(frames, ignore_index=True)


def _lookup(results: pd.DataFrame, variant: str, benchmark: str, protocol: str, metric: str) -> float:
    hit = results[(results["variant"] == variant) & (results["benchmark"] == benchmark)
                  & (results["protocol"] == protocol) & (results["metric"] == metric)]
    return float(hit["value"].iloc[0]) if len(hit) else math.nan


def _from_subset(results: pd.DataFrame, variant: str, benchmark: str, protocol: str, metric: str) -> bool:
    """Whether that number was computed on a seeded subset of the images (subset mode, `evaluation.subset`)."""
    if "subset" not in results.columns:
        return False
    hit = results[(results["variant"] == variant) & (results["benchmark"] == benchmark)
                  & (results["protocol"] == protocol) & (results["metric"] == metric)]
    return bool(len(hit)) and bool(hit["subset"].fillna(False).iloc[0])


def _mark_subset(frame: pd.DataFrame, cells: list[tuple[int, str]]) -> pd.DataFrame:
    """Remember which cells come from a subset (``frame.attrs["subset_cells"]``); :func:`to_markdown` labels them."""
    frame.attrs["subset_cells"] = cells
    return frame


def table1(results: pd.DataFrame) -> pd.DataFrame:
    """Table 1: the eight benchmarks, published FP/RP beside ours under both protocols."""
    rows, subset_cells = [], []
    for benchmark, spec in in_table("table1"):
        row = {"benchmark": benchmark.name, "metric": spec.label}
        for variant, published in (("fp", spec.published_fp), ("rp", spec.published_rp)):
            row[f"{variant.upper()} published"] = published
            for protocol in PROTOCOLS:
                column = f"{variant.upper()} ours ({protocol})"
                row[column] = _lookup(results, variant, benchmark.name, protocol, spec.metric(protocol))
                if _from_subset(results, variant, benchmark.name, protocol, spec.metric(protocol)):
                    subset_cells.append((len(rows), column))
        rows.append(row)
    return _mark_subset(pd.DataFrame(rows), subset_cells)


def table1_baselines() -> pd.DataFrame:
    """Table 1's published rows (baselines and InstructCV) as printed in the paper."""
    columns = table1_columns()
    return pd.DataFrame([{"model": name, **dict(zip(columns, values))} for name, values in TABLE1_BASELINES])


def table2(results: pd.DataFrame) -> pd.DataFrame:
    """Table 2: open-vocabulary mIoU; published rows, then ours (FP and RP, both protocols)."""
    entries = in_table("table2")
    published = dict(TABLE2_BASELINES)
    for benchmark, spec in entries:
        published[spec.label] = spec.published_rp  # the paper reports the RP model only
    rows = [{"model": name, "source": "published", "protocol": "paper", "mIoU": value} for name, value in published.items()]
    subset_cells = []
    for benchmark, spec in entries:
        for variant in VARIANTS:
            for protocol in PROTOCOLS:
                if _from_subset(results, variant, benchmark.name, protocol, spec.metric(protocol)):
                    subset_cells.append((len(rows), "mIoU"))
                rows.append({"model": f"InstructCV-{variant.upper()} (ours)", "source": "ours", "protocol": protocol,
                             "mIoU": _lookup(results, variant, benchmark.name, protocol, spec.metric(protocol))})
    return _mark_subset(pd.DataFrame(rows), subset_cells)


def table3(heldout: dict[str, dict[str, dict[str, float]]]) -> pd.DataFrame:
    """Table 3: mIoU per held-out instruction. ``heldout[variant][protocol][instruction] = mIoU``."""
    rows = []
    for _benchmark, spec in in_table("table3"):
        row = {"instruction": spec.label}
        for variant, published in (("fp", spec.published_fp), ("rp", spec.published_rp)):
            row[f"{variant.upper()} published"] = published
            for protocol in PROTOCOLS:
                row[f"{variant.upper()} ours ({protocol})"] = heldout.get(variant, {}).get(protocol, {}).get(spec.label, math.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def to_markdown(frame: pd.DataFrame) -> str:
    """A table as Markdown, numbers to 3 decimals, missing values blank; cells computed on a seeded
    subset of the images (subset mode) carry a ``†`` and a note under the table."""
    from instructcv_core.evaluation.subset import SUBSET_MARK

    shown = frame.copy()
    for column in shown.columns:
        if pd.api.types.is_numeric_dtype(shown[column]) or shown[column].dtype == object:
            shown[column] = shown[column].map(_cell)
    cells = frame.attrs.get("subset_cells", [])
    for row, column in cells:
        if shown.at[row, column]:
            shown.at[row, column] = f"{shown.at[row, column]} {SUBSET_MARK}"
    text = shown.to_markdown(index=False)
    if cells:
        text += (f"\n\n{SUBSET_MARK} standard protocol on a seeded subset of the test images "
                 "(`standard_subset`; see the `subset` column of each metrics.parquet).")
    return text


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.3f}"
    return str(value)


__all__ = ["TABLE1_BASELINES", "TABLE2_BASELINES", "read_results", "table1", "table1_baselines", "table1_columns",
           "table2", "table3", "to_markdown"]
