"""The files of a benchmark's results: the metrics table, JSON-safe details, the sample grid."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from instructcv_core.evaluation.data import BenchmarkData
from instructcv_core.tasks import task
from instructcv_core.tasks.base import ImageReader


#: The columns of ``metrics.parquet``: ``n`` is the number of images a metric is computed on,
#: ``ci_low``/``ci_high`` its 95 % percentile-bootstrap interval over those images (NaN: none),
#: ``subset`` whether it was scored on a seeded subset of the images (subset mode, `evaluation.subset`),
#: ``sampler`` the label of the sampler that generated the outputs (``SamplerConfig.label``: paper, few-4, one, ...).
METRICS_COLUMNS = ["benchmark", "protocol", "metric", "value", "n", "ci_low", "ci_high", "mlflow_key", "subset", "sampler"]


def metrics_table(benchmark: str, metrics: dict[str, dict[str, float]], intervals: dict | None = None,
                  subset: Iterable[str] = (), sampler: str = "") -> pd.DataFrame:
    """One row per (protocol, metric): value, images, 95 % interval, the MLflow key it is logged under,
    ``subset = True`` for the protocols in ``subset`` (scored on a seeded subset of the images) and
    ``sampler``, the sampler's label."""
    from instructcv_core.evaluation.intervals import Interval

    none = Interval(0, math.nan, math.nan)
    subset = set(subset)
    rows = []
    for protocol, values in metrics.items():
        for metric, value in values.items():
            interval = (intervals or {}).get(protocol, {}).get(metric, none)
            rows.append({"benchmark": benchmark, "protocol": protocol, "metric": metric, "value": value,
                         "n": int(interval.n), "ci_low": interval.low, "ci_high": interval.high,
                         "mlflow_key": f"eval/{benchmark}/{protocol}/{metric}", "subset": protocol in subset,
                         "sampler": sampler})
    return pd.DataFrame(rows, columns=METRICS_COLUMNS).astype({"n": "int64", "ci_low": "float64", "ci_high": "float64",
                                                               "subset": "bool", "sampler": "str"})


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def jsonable(value):
    """``value`` with numpy scalars as Python numbers and non-finite floats as None (JSON null)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def sample_grid(bench: BenchmarkData, table: pd.DataFrame, output_image: ImageReader, input_image: ImageReader,
                target_image: ImageReader, config, cell: int = 96):
    """Rows of input | output | prediction | ground truth for a few paper-protocol queries."""
    from PIL import Image, ImageDraw

    previews = task(bench.task)
    chosen = table[table["paper"]] if table["paper"].any() else table
    chosen = chosen.drop_duplicates("image_id").head(config.sample_rows)
    header = Image.new("RGB", (cell * 4, 14), (230, 230, 230))
    for i, title in enumerate(("input", "output", "prediction", "ground truth")):
        ImageDraw.Draw(header).text((i * cell + 2, 1), title, fill="black")
    rows = [header]
    for row in chosen.itertuples():
        image = input_image(row.input_digest)
        output = output_image(row.output_digest)
        prediction = previews.preview(output, image, row.colour, row.colour2, config)
        truth = previews.truth_preview(bench, row, target_image)
        cells = [Image.fromarray(a).resize((cell, cell), Image.Resampling.BILINEAR) for a in (image, output, prediction, truth)]
        strip = Image.new("RGB", (cell * 4, cell + 14), "white")
        for i, c in enumerate(cells):
            strip.paste(c, (i * cell, 14))
        ImageDraw.Draw(strip).text((2, 1), row.instruction[:4 * cell // 6], fill="black")
        rows.append(strip)
    grid = Image.new("RGB", (cell * 4, sum(r.height for r in rows)), "white")
    y = 0
    for r in rows:
        grid.paste(r, (0, y))
        y += r.height
    return grid


__all__ = ["METRICS_COLUMNS", "file_digest", "jsonable", "metrics_table", "sample_grid"]
