"""The benchmarks of InstructCV, in one table: what each evaluates, where its data comes from, where
its numbers go in the paper's tables, and the numbers the paper published.

Everything that repeats per benchmark is generated from :data:`BENCHMARKS`: the test manifests
(`instructcv_core.construction`), the evaluation assets and their checks (`assets/evaluate.py`), and
Tables 1–3 (`instructcv_core.evaluation.tables`). Adding a benchmark is one entry here (and, for a new
task, one module in `instructcv_core.tasks`).

This module is plain data: it imports nothing heavy, so the Dagster definitions can read it.
Published values: the InstructCV paper (ICLR 2024), Tables 1–3 (``math.nan`` = not published).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: The paper's results tables, with what each shows.
TABLES: dict[str, str] = {
    "table1": "Table 1: depth, segmentation, classification and detection on the in-domain and external "
              "benchmarks; published InstructCV-FP/RP numbers beside ours under both protocols.",
    "table2": "Table 2: open-vocabulary segmentation on FSS-1000 (mIoU), published rows and ours.",
    "table3": "Table 3: ADE20K segmentation with the six held-out instructions (mIoU), published and ours.",
}


@dataclass(frozen=True)
class TableRow:
    """One row of a results table: which of our metrics sit beside which published figures."""

    label: str  # the row's label: a metric ("depth RMSE ↓ (m)"), a model column or an instruction
    paper_metric: str  # our metric beside the published figure under the `paper` protocol
    standard_metric: str  # ... and under the `standard` protocol
    published_fp: float  # InstructCV-FP as published (nan: not published)
    published_rp: float  # InstructCV-RP as published
    position: int  # the row's place in its table (Table 1 rows are ordered as the paper's columns)

    def metric(self, protocol: str) -> str:
        return self.paper_metric if protocol == "paper" else self.standard_metric


@dataclass(frozen=True)
class Benchmark:
    """One evaluation: a task on a dataset split, and where its numbers are reported."""

    name: str
    task: str  # a name of the `instructcv_core.tasks` registry
    dataset: str  # the raw dataset (`raw_<dataset>`)
    split: str  # its test split
    in_domain: bool  # trained on (a failed trained-vs-untrained check blocks) or external (it warns)
    description: str
    kind: str  # the metric kind: which evaluation of the task scores it (its queries and metrics)
    table: str  # the results table it appears in (a key of TABLES)
    rows: tuple[TableRow, ...]
    #: The benchmark whose test manifest (images, targets) it evaluates: itself, except for the
    #: held-out-phrasing evaluation, which asks other instructions of ADE20K's images.
    test_set: str | None = None
    #: The untrained base is evaluated on it too, and each checkpoint is checked not to lose to it.
    untrained_reference: bool = True
    #: Which image-count setting of the evaluation config limits it ("max_images" | "heldout_images").
    image_limit: str = "max_images"
    background_class: bool = False  # labels with a background class 0 that no query asks for (VOC)
    eigen_crop: bool = False  # the standard depth protocol scores the Eigen crop (NYUv2)
    binary_species: bool = False  # images also answer the binary cat/dog question (Oxford-IIIT Pet)

    @property
    def test_manifest(self) -> str:
        """The name of the test manifest (``datasets/test/<name>.parquet``) it reads."""
        return self.test_set or self.name


def _row(label: str, metrics: tuple[str, str], fp: float, rp: float, position: int) -> tuple[TableRow, ...]:
    return (TableRow(label, metrics[0], metrics[1], fp, rp, position),)


_DEPTH, _SEG, _CLS, _DET = ("rmse", "rmse"), ("miou", "miou"), ("accuracy", "accuracy"), ("map", "ap")
_NAN = math.nan

#: The held-out phrasings of Table 3 with their published mIoU (FP, RP); ADE20K, 200 test images.
TABLE3_INSTRUCTIONS: dict[str, tuple[float, float]] = {
    "Segment the %category%.": (45.503, 42.793),
    "Segment %category%.": (36.315, 48.739),
    "Can you help me segment the %category%?": (44.035, 45.686),
    "Highlight the image parts corresponding to the %category%.": (19.988, 44.758),
    "Please highlight the image segment containing %category%.": (21.952, 40.153),
    "Which image segments contain the %category%?": (39.348, 47.972),
}

_ENTRIES = (
    # in-domain (the training tasks' own datasets)
    Benchmark("nyuv2", "depth", "nyuv2", "test", True, "NYUv2 depth (in-domain)", "depth", "table1",
              _row("depth RMSE ↓ (m)", _DEPTH, 0.275, 0.297, 0), eigen_crop=True),
    Benchmark("ade20k", "segmentation", "ade20k", "val", True, "ADE20K semantic segmentation (in-domain)",
              "segmentation", "table1", _row("seg mIoU ↑", _SEG, 52.3, 47.235, 2)),
    # The paper's detection "mAP" is COCOeval stats[0] (AP@[.5:.95]) under its protocol; the standard
    # protocol's counterpart is AP. AP50 is reported too: the paper's header says mAP@0.5.
    Benchmark("coco", "detection", "coco", "val", True, "COCO detection (in-domain)", "detection", "table1",
              _row("det mAP ↑", _DET, 49.1, 48.500, 6) + _row("det AP50 ↑", ("map50", "ap50"), _NAN, _NAN, 8)),
    Benchmark("pets", "classification", "pets", "test", True, "Oxford-IIIT Pet classification (in-domain)",
              "classification", "table1", _row("cls accuracy ↑", _CLS, 80.4, 82.135, 4), binary_species=True),
    # external
    Benchmark("sunrgbd", "depth", "sunrgbd", "test", False, "SUN RGB-D depth (external)", "depth", "table1",
              _row("depth RMSE ↓ (m)", _DEPTH, 0.268, 0.279, 1)),
    Benchmark("voc_seg", "segmentation", "voc", "val", False, "PASCAL VOC segmentation (external)",
              "segmentation", "table1", _row("seg mIoU ↑", _SEG, 53.5, 52.125, 3), background_class=True),
    Benchmark("voc_det", "detection", "voc", "val", False, "PASCAL VOC detection (external)", "detection", "table1",
              _row("det mAP ↑", _DET, 62.00, 61.700, 7) + _row("det AP50 ↑", ("map50", "ap50"), _NAN, _NAN, 9)),
    Benchmark("imagenet_sub", "classification", "imagenet_sub", "val", False,
              "ImageNet-sub classification (external)", "classification", "table1",
              _row("cls accuracy ↑", _CLS, 75.1, 74.665, 5)),
    Benchmark("fss1000", "segmentation", "fss1000", "test", False, "FSS-1000 open-vocabulary segmentation (external)",
              "open_vocabulary", "table2", _row("InstructCV-RP", _SEG, _NAN, 69.8, 0)),
    # Table 3: ADE20K's images asked with the paper's six held-out instructions (checkpoints only).
    Benchmark("ade20k_heldout", "segmentation", "ade20k", "val", True,
              "ADE20K segmentation with the six held-out instructions of Table 3", "heldout", "table3",
              tuple(TableRow(text, "miou", "miou", fp, rp, i) for i, (text, (fp, rp)) in enumerate(TABLE3_INSTRUCTIONS.items())),
              test_set="ade20k", untrained_reference=False, image_limit="heldout_images"),
)

#: Every benchmark by name, in evaluation order (in-domain first, then external, then Table 3).
BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in _ENTRIES}

#: Which raw splits train which task (the official recipe: ADE20K seg, COCO det, NYUv2 depth, Pets cls).
TRAIN_SOURCES: dict[str, tuple[tuple[str, str], ...]] = {
    "segmentation": (("ade20k", "train"),),
    "detection": (("coco", "train"),),
    "depth": (("nyuv2", "train"), ("nyuv2", "train_sync")),
    "classification": (("pets", "trainval"),),
}


def benchmark(name: str) -> Benchmark:
    """The table entry of ``name``; a ``KeyError`` naming the known benchmarks otherwise."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}") from None


def manifest_benchmarks() -> list[Benchmark]:
    """The benchmarks with a test manifest of their own, in table order."""
    return [b for b in BENCHMARKS.values() if b.test_manifest == b.name]


def in_table(table: str) -> list[tuple[Benchmark, TableRow]]:
    """The (benchmark, row) pairs of a results table, in the table's row order."""
    if table not in TABLES:
        raise KeyError(f"unknown table {table!r}; known: {', '.join(TABLES)}")
    rows = [(b, row) for b in BENCHMARKS.values() if b.table == table for row in b.rows]
    return sorted(rows, key=lambda pair: pair[1].position)


__all__ = ["BENCHMARKS", "TABLES", "TABLE3_INSTRUCTIONS", "TRAIN_SOURCES", "Benchmark", "TableRow", "benchmark",
           "in_table", "manifest_benchmarks"]
