"""The shape every task module has: the :class:`Task` protocol and the records it exchanges.

A task knows everything specific to one kind of label: how the label ``y`` is drawn as a target
image ``v(y)`` and read back, which pairs an image yields for training, which questions evaluation
asks of an image, how a generated output is post-processed into a prediction, how the `paper` and
`standard` protocols reduce predictions to metrics, and how a prediction is previewed. The rest of
the library asks the registry (`instructcv_core.tasks.TASKS`) and never branches on a task name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from instructcv_core.benchmarks import Benchmark
    from instructcv_core.construction.config import BuildConfig
    from instructcv_core.data.records import ImageRecord
    from instructcv_core.evaluation.config import EvalConfig
    from instructcv_core.evaluation.data import BenchmarkData

#: Reads an image by its content digest (uint8 RGB; gray images come back as three channels).
ImageReader = Callable[[str], np.ndarray]
#: (low, high, higher is better) of one metric.
MetricRange = tuple[float, float, bool]
#: Colour of mask overlays and drawn boxes in what the command line writes (RGB), and the overlay's opacity.
OVERLAY_RGB = (255, 0, 0)
OVERLAY_ALPHA = 0.5


@dataclass
class Target:
    """One training or test target of an image: the image to draw and what it answers."""

    image: np.ndarray
    category: str | None = None
    category_text: str | None = None
    variant: str | None = None
    positive: bool | None = None
    color: str | None = None
    color2: str | None = None
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    #: Tells apart targets of one image that share category, variant and polarity (part of the pair key).
    tag: str | None = None


class Question(NamedTuple):
    """One question evaluation asks of an image, and which protocols score its answer."""

    image_id: str
    instruction: str
    category: str | None = None
    paper: bool = False
    standard: bool = False
    colour: str | None = None
    colour2: str | None = None
    phrasing: str | None = None


@dataclass(frozen=True)
class MetricSpec:
    """The metrics each protocol reports, their valid ranges, and the headline metric."""

    ranges: Mapping[str, Mapping[str, MetricRange]]  # protocol -> metric -> (low, high, higher is better)
    headline: Mapping[str, str]  # protocol -> the metric of the tables and the trained-vs-untrained check


@dataclass(frozen=True)
class Prediction:
    """A decoded output as the command line shows it: files to write (by suffix: ``.png`` uint8
    image, ``.npy`` array, ``.json`` text), summary fields, and one line of text."""

    files: Mapping[str, tuple[str, Any]]  # name -> (file suffix, content)
    fields: Mapping[str, Any]
    text: str


class Evaluation(Protocol):
    """How one metric kind of a task is evaluated: its questions, its reducers, its metrics."""

    kind: str
    metrics: MetricSpec

    def metric_ranges(self, benchmark: Benchmark) -> Mapping[str, Mapping[str, MetricRange]]:
        """The metrics ``benchmark`` must report, by protocol (``metrics.ranges`` less what it lacks)."""

    def questions(self, bench: BenchmarkData, config: EvalConfig, phrasings: list[str] | None) -> Iterable[Question]:
        """Every question of the evaluated images (repeats are merged by the planner)."""

    def score(self, bench: BenchmarkData, outputs: pd.DataFrame, output_image: ImageReader,
              target_image: ImageReader, config: EvalConfig) -> dict:
        """Post-process every output and reduce it under each configured protocol.

        Returns ``{"predictions": DataFrame (query_id + what each output decoded to), <protocol>:
        {metric: value, ..., details}}``; ``per_image`` in the standard details holds the headline
        metric of each image alone (the unit of the trained-vs-untrained comparison); ``bootstrap``
        in each protocol's result maps every metric to its resampling statistic
        (`instructcv_core.evaluation.intervals`), from which its 95 % interval over images comes.
        """


class Task(Protocol):
    """One vision task cast as image generation (see the module docstring)."""

    name: str
    #: Its evaluations, by metric kind (the ``kind`` of a benchmark).
    evaluations: Mapping[str, Evaluation]
    #: How a person names it in an instruction (the command line's task inference).
    instruction_hint: str
    #: Whether a match of :meth:`recognise` settles the task whatever other tasks' keywords say.
    decisive: bool

    # -- training and test pairs
    def has_labels(self, record: ImageRecord) -> bool:
        """Whether ``record`` carries this task's labels."""

    def targets(self, record: ImageRecord, root: Path, image: np.ndarray, class_names: tuple[str, ...],
                config: BuildConfig) -> list[Target]:
        """The targets of one source image (original resolution)."""

    def expected_pairs(self, record: ImageRecord, class_names: tuple[str, ...], config: BuildConfig) -> int:
        """How many targets :meth:`targets` makes for ``record``, from the record alone."""

    def instruction_slots(self, row: Any) -> dict[str, str]:
        """The placeholder values of one pair's instruction (``category``, colours)."""

    # -- the command line
    def recognise(self, instruction: str) -> str | None:
        """The words of ``instruction`` that ask for this task, or None."""

    def instruction_arguments(self, instruction: str) -> dict[str, Any]:
        """What decoding needs from the instruction (classification: its colours); ``ValueError`` if missing."""

    def describe(self, output: np.ndarray, image: np.ndarray, arguments: Mapping[str, Any]) -> Prediction:
        """The decoded result of one generated ``output`` at the size of the input ``image``."""

    # -- previews and the autoencoder's ceiling
    def preview(self, output: np.ndarray, image: np.ndarray, colour: str | None, colour2: str | None,
                config: EvalConfig) -> np.ndarray:
        """The decoded prediction drawn as an image at the input's size (sample grids)."""

    def truth_preview(self, bench: BenchmarkData, row: Any, target_image: ImageReader) -> np.ndarray:
        """The expected answer of one evaluation query as an image."""

    def reconstruction_metrics(self, originals: np.ndarray, round_trips: np.ndarray) -> dict[str, float]:
        """Task figures of how well ``round_trips`` (``(N, H, W, 3)`` uint8) keep ``originals``' labels."""


def expected_target(bench: BenchmarkData, row: Any, target_image: ImageReader) -> np.ndarray:
    """The encoded test target of a query, or an empty mask for a category absent from the image."""
    from instructcv_core.tasks.segmentation import encode_segmentation

    frame = bench.frame
    match = frame[(frame["image_id"] == row.image_id) & ((frame["category"] == row.category) | frame["category"].isna())]
    if match.empty:  # a category absent from the image (standard protocol): an empty mask
        record = bench.records[row.image_id]
        return encode_segmentation(np.zeros((record.height, record.width), bool))
    return target_image(match.iloc[0]["target_original_digest"])


def per_image_results(metric_fn, image_ids: list[str], samples: list) -> dict[str, dict]:
    """``metric_fn``'s whole result on each image alone (samples grouped by image, in first-seen order)."""
    values: dict[str, list] = {}
    for image_id, sample in zip(image_ids, samples):
        values.setdefault(image_id, []).append(sample)
    return {image_id: metric_fn(group) for image_id, group in values.items()}


def per_image(metric_fn, image_ids: list[str], samples: list, metric: str) -> dict[str, float]:
    """The headline metric of each image alone (the unit of the paired trained-vs-untrained check)."""
    return {image_id: float(result[metric]) for image_id, result in per_image_results(metric_fn, image_ids, samples).items()}


def per_image_means(results: Mapping[str, Mapping], metrics) -> dict:
    """Bootstrap statistics (:class:`~instructcv_core.evaluation.intervals.PerImageMean`) of metrics that
    are a mean over images, from :func:`per_image_results`."""
    from instructcv_core.evaluation.intervals import PerImageMean

    return {m: PerImageMean({i: float(r[m]) for i, r in results.items()}) for m in metrics}


def record_size(record: ImageRecord) -> tuple[int, int]:
    """``(width, height)`` of a record's image."""
    return int(record.width), int(record.height)


__all__ = ["OVERLAY_ALPHA", "OVERLAY_RGB", "Evaluation", "ImageReader", "MetricRange", "MetricSpec", "Prediction", "Question", "Target", "Task",
           "expected_target", "per_image", "per_image_means", "per_image_results", "record_size"]
