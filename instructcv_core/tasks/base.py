"""The shape every task module has: the :class:`Task` protocol and the records it exchanges.

A task knows everything specific to one kind of label: how the label ``y`` is drawn as a target
image ``v(y)`` and read back, which pairs an image yields for training, which questions evaluation
asks of an image, how a generated output is post-processed into a prediction, how the `paper` and
`standard` protocols reduce predictions to metrics, how a prediction is previewed, how the
instruction-following check probes it (what a task switch asks and expects, how a category swap
is built and judged), how many questions a split of a given size asks (the cost plan), and which
folders of the official evaluation scripts are its own. The rest of the library asks the registry
(`instructcv_core.tasks.TASKS`) and never branches on a task name.

This module is the bottom of the package: it imports no task module, and nothing of
`instructcv_core.evaluation` at load (the helpers both use, such as :func:`query_seed` and
:func:`present_categories`, live here).
"""

from __future__ import annotations

import hashlib
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

    # -- the cost plan (`instructcv_core.evaluation.cost_plan`)
    def query_counts(self, benchmark: Benchmark, images: int, classes: int, present: int,
                     phrasings: int) -> tuple[int, int, int]:
        """``(paper, standard, generated)`` question counts of ``images`` images of a split with ``classes``
        categories and ``present`` ground-truth-present (image, category) pairs in all, asked in
        ``phrasings`` held-out phrasings: :meth:`questions`' rule by count, before a test manifest exists."""

    # -- category swaps of the instruction-following check (`instructcv_core.evaluation.instruction_following`)
    def swap_candidates(self, bench: BenchmarkData, config: EvalConfig,
                        rank: Callable[[str], str]) -> list[tuple[str, str, str]]:
        """Every category-swap candidate ``(image_id, asked, other)`` of the evaluated images (the check
        orders them by ``rank`` of their ``|``-joined fields and keeps ``config.following_pairs``); ``rank``
        also serves seeded choices within. Empty where this kind asks no category swap."""

    def swap_asks(self, asked: str, other: str) -> list[tuple[str, str]]:
        """The outputs one swap pair generates, as ``(category, role)``: the asked category (role
        ``asked``) and, where judging compares two answers, the other one (role ``other``)."""

    def judge_swap(self, bench: BenchmarkData, pair: pd.DataFrame, output_image: ImageReader, config: EvalConfig,
                   cache: dict) -> tuple[float, float]:
        """``(score for the asked category, score for the other)`` of one generated swap pair (its probe
        rows, with ``output_digest``): the pair is followed when the first is larger. ``cache`` lives for
        one judging (e.g. ground truth per image)."""


class Task(Protocol):
    """One vision task cast as image generation (see the module docstring)."""

    name: str
    #: Its evaluations, by metric kind (the ``kind`` of a benchmark).
    evaluations: Mapping[str, Evaluation]
    #: How a person names it in an instruction (the command line's task inference).
    instruction_hint: str
    #: Whether a match of :meth:`recognise` settles the task whatever other tasks' keywords say.
    decisive: bool
    #: What its outputs look like, one of the kinds the instruction-following check tells apart
    #: (`instructcv_core.evaluation.instruction_following.output_kind`: ``mask``, ``boxes``, ``depth``,
    #: ``colour``): what an image asked for this task in a task switch must come back as.
    draws: str
    #: The last ``_``-separated field of this task's per-(image, category) folders in the official
    #: evaluation scripts' layout (``{image}_{category}_det``); None where they read no such folders.
    official_folder_tag: str | None

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

    # -- the task-switch probes of the instruction-following check
    def probe_instruction(self, bench: BenchmarkData, category: str | None, config: EvalConfig) -> str:
        """The instruction that asks an image of ``bench`` for this task in the instruction-following
        probes (its fixed FP template), naming ``category`` where the task names one ("object" when None)."""


# --------------------------------------------------------------------------------------------
# helpers of the task modules and of evaluation


def query_seed(seed: int, benchmark: str, image_id: str, instruction: str) -> int:
    """The noise seed of one output: a hash of what is asked, so it never depends on batching."""
    digest = hashlib.sha256(f"{seed}|{benchmark}|{image_id}|{instruction}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def present_categories(bench: BenchmarkData) -> dict[str, list[str]]:
    """image id -> the categories its test rows name (sorted): what is in the image."""
    return bench.frame.groupby("image_id")["category"].apply(lambda s: sorted(set(s.dropna()))).to_dict()


def standard_categories(bench: BenchmarkData, config) -> list[str]:
    """The categories the standard protocol asks of every image."""
    if config.standard_classes == "all":
        return list(bench.categories)
    import pandas as pd

    # the categories occurring anywhere in the test split (not only in the evaluated subset), in the dataset's order
    in_split = set(pd.read_parquet(bench.manifest_path, columns=["category"])["category"].dropna())
    return [c for c in bench.categories if c in in_split]


def region_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool regions of one shape; 0 when both are empty."""
    union = int(np.count_nonzero(a | b))
    return int(np.count_nonzero(a & b)) / union if union else 0.0


def swap_probe(pair: pd.DataFrame, role: str = "asked") -> Any:
    """The probe row of ``role`` (``asked`` or ``other``) of one category-swap pair."""
    return pair[pair["role"] == role].iloc[0]


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
           "per_image", "per_image_means", "per_image_results", "present_categories", "query_seed", "record_size",
           "region_iou", "standard_categories", "swap_probe"]
