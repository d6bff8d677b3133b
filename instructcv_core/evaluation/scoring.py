"""Scoring generated outputs: the task's reducers under each protocol, each metric's 95 % interval over
images, and what a valid result is."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import pandas as pd

from instructcv_core.benchmarks import benchmark
from instructcv_core.evaluation.config import EvalConfig
from instructcv_core.evaluation.data import BenchmarkData
from instructcv_core.evaluation.intervals import Interval, intervals
from instructcv_core.tasks import evaluation
from instructcv_core.tasks.base import ImageReader, MetricRange


@dataclass
class Scores:
    metrics: dict[str, dict[str, float]]  # protocol -> metric -> value
    details: dict[str, dict]  # protocol -> counts, warnings, per-class values
    predictions: pd.DataFrame  # one row per query: what it was decoded to
    #: protocol -> metric -> images and 95 % bootstrap interval (`instructcv_core.evaluation.intervals`)
    intervals: dict[str, dict[str, Interval]] = field(default_factory=dict)


def metric_ranges(name: str) -> Mapping[str, Mapping[str, MetricRange]]:
    """protocol -> metric -> (low, high, higher is better) of what benchmark ``name`` reports."""
    spec = benchmark(name)
    return evaluation(spec.task, spec.kind).metric_ranges(spec)


def score(bench: BenchmarkData, outputs: pd.DataFrame, output_image: ImageReader, target_image: ImageReader,
          config: EvalConfig) -> Scores:
    """Post-process every output and compute the metrics of each configured protocol.

    ``output_image`` reads a generated output by digest, ``target_image`` an encoded test target
    (original resolution) by digest.
    """
    scorer = evaluation(bench.spec.task, bench.spec.kind)
    raw = scorer.score(bench, outputs, output_image, target_image, config)
    ranges = scorer.metrics.ranges
    metrics, details = {}, {}
    statistics = {}
    for protocol in config.protocols:
        result = dict(raw[protocol])
        metrics[protocol] = {k: float(result.pop(k)) for k in ranges[protocol] if k in result}
        statistics[protocol] = {k: v for k, v in result.pop("bootstrap", {}).items() if k in metrics[protocol]}
        details[protocol] = result
    found = intervals(statistics)
    for protocol, values in metrics.items():  # a metric without a resampling statistic has no interval
        for metric in values:
            found[protocol].setdefault(metric, Interval(int(details[protocol].get("images", 0) or 0), math.nan, math.nan))
    return Scores(metrics, details, raw["predictions"], found)


def primary_metric(name: str, protocol: str) -> tuple[str, bool]:
    """(metric name, higher is better) of benchmark ``name``'s headline number under ``protocol``."""
    spec = benchmark(name)
    metrics = evaluation(spec.task, spec.kind).metrics
    metric = metrics.headline[protocol]
    return metric, metrics.ranges[protocol][metric][2]


def invalid_metrics(name: str, metrics: dict[str, dict[str, float]]) -> list[str]:
    """Metrics that are not finite or fall outside their valid range (empty list: all valid)."""
    ranges = metric_ranges(name)
    problems = []
    for protocol, values in metrics.items():
        for metric, (low, high, _) in ranges[protocol].items():
            if metric not in values:
                problems.append(f"{protocol}/{metric}: missing")
                continue
            v = values[metric]
            if not math.isfinite(v) or not low <= v <= high:
                problems.append(f"{protocol}/{metric} = {v} (valid range {low}..{high})")
    return problems


__all__ = ["Scores", "invalid_metrics", "metric_ranges", "primary_metric", "score"]
