"""From raw records to (input, target) pairs: which images feed which task, and their visual targets.

A *pair* is one input image, one task, one category (where the task has one) and the target image
the model must draw (its task's ``targets`` in `instructcv_core.tasks`). Instructions are attached later
(`instructcv_core.construction.manifest`), so the same pairs serve the FP and RP manifests (except
Pets' binary questions, which FP asks with the official fixed colours and RP with random pairs).

Which raw splits feed training and which benchmarks are tested: `instructcv_core.benchmarks`.

- Segmentation: one pair per (image, category present); the target is the white-on-black mask of
  every pixel of that category (instances merged; void pixels are black).
- Detection: one pair per (image, category with at least one box); the target is the input with box
  outlines around every instance of that category (crowd boxes excluded unless configured).
- Depth: one pair per image; the target is the 8-bit gray depth map (255 = 10 m) computed from the
  metric depth (the hole-filled map where the dataset has one).
- Classification: per image, one positive pair (its class named, target = the positive colour) and
  negatives (another class named, target = the negative colour). Oxford-IIIT Pet (records with a
  species) yields the paper's binary cat/dog variant and a 37-breed variant. Colours are drawn per pair, seeded,
  except in the binary variant's FP copy, which uses the official FP builder's fixed colours.
- Open-vocabulary test sets (FSS-1000) leave out every image whose class a training dataset names.

Inputs and targets are resized to the training resolution (square, LANCZOS, as the official loader)
and stored content-addressed (`ImageStore`); test pairs also keep the original-resolution input and
target for evaluation. Pair ids are stable hashes of a readable sample key.
"""

from __future__ import annotations

import hashlib
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image

from instructcv_core.benchmarks import TRAIN_SOURCES, manifest_benchmarks
from instructcv_core.construction.config import BuildConfig
from instructcv_core.data.images import ImageRefused, read_rgb
from instructcv_core.data.imagestore import ImageStore, pixel_digest
from instructcv_core.data.records import ImageRecord, QuarantineEntry
from instructcv_core.tasks import task


@dataclass(frozen=True)
class WorkUnit:
    """One source image and the task it feeds, in the role of training or of one test benchmark."""

    task: str
    role: str  # "train" | "test"
    benchmark: str | None
    record: ImageRecord
    root: str  # the record's dataset root
    class_names: tuple[str, ...] = field(default=())  # classification: the classes negatives come from


class SourceImageError(OSError):
    """A source image could not be read or decoded (it is quarantined, never fatal)."""


@dataclass
class UnitResult:
    rows: list[dict]
    quarantine: list[QuarantineEntry]


def shard_of(dataset: str, image_id: str, n_shards: int) -> int:
    """Stable shard of a source image (the same image always lands in the same shard)."""
    return zlib.crc32(f"{dataset}/{image_id}".encode()) % n_shards


def plan_units(sources: dict[str, tuple[list[ImageRecord], Path, list[str]]]) -> list[WorkUnit]:
    """Every (image, task, role) to build, from each dataset's (records, root, class names).

    A dataset missing from ``sources`` contributes nothing (the caller decides which are required).
    """
    units: list[WorkUnit] = []
    for task_name, splits in TRAIN_SOURCES.items():
        for dataset, split in splits:
            if dataset in sources:
                records, root, classes = sources[dataset]
                units += [WorkUnit(task_name, "train", None, r, str(root), tuple(classes)) for r in records if r.split == split]
    seen = training_class_names(sources)
    for benchmark in manifest_benchmarks():
        if benchmark.dataset in sources:
            records, root, classes = sources[benchmark.dataset]
            labelled = task(benchmark.task).has_labels
            unseen = (lambda r: not seen_categories(r, seen)) if benchmark.kind == "open_vocabulary" else (lambda r: True)
            units += [
                WorkUnit(benchmark.task, "test", benchmark.name, r, str(root), tuple(classes))
                for r in records
                if r.split == benchmark.split and labelled(r) and unseen(r)
            ]
    return units


def class_key(name: str) -> str:
    """A category name compared across datasets: lower case, ``_``/``-`` as spaces, spaces collapsed
    ("African_elephant" and "african elephant" are one class)."""
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


#: The training tasks whose instructions name a category (depth names none; NYUv2's scene types
#: are never asked).
NAMING_TASKS = ("segmentation", "detection", "classification")


def training_class_names(sources: dict[str, tuple[list[ImageRecord], Path, list[str]]]) -> set[str]:
    """Every category a training instruction can name (:func:`class_key`): the class list of each
    segmentation, detection and classification training source, plus the categories, labels and
    species its training records carry (Pets: the breeds, cat, dog)."""
    names: set[str] = set()
    for task_name, splits in TRAIN_SOURCES.items():
        if task_name not in NAMING_TASKS:
            continue
        for dataset, split in splits:
            if dataset not in sources:
                continue
            records, _root, classes = sources[dataset]
            names.update(class_key(c) for c in classes)
            for record in records:
                if record.split == split:
                    names.update(class_key(c) for c in record.categories)
                    names.update(class_key(c) for c in (record.label_name, record.species) if c)
    return names


def seen_categories(record: ImageRecord, seen: set[str]) -> list[str]:
    """The record's categories that a training source also names: an open-vocabulary test image
    (FSS-1000, paper Table 2) must have none, so such images are left out of its test set."""
    return [c for c in record.categories if class_key(c) in seen]


def build_units(units: list[WorkUnit], config: BuildConfig, store_root: Path, workers: int = 1) -> UnitResult:
    """Build every unit's pairs, in a process pool when ``workers`` > 1; rows sorted by sample key."""
    chunks = [units[i : i + 32] for i in range(0, len(units), 32)]
    results: list[UnitResult] = []
    if workers <= 1 or len(chunks) <= 1:
        results = [_build_chunk(c, config, str(store_root)) for c in chunks]
    else:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            results = list(pool.map(_build_chunk, chunks, [config] * len(chunks), [str(store_root)] * len(chunks)))
    rows = [row for r in results for row in r.rows]
    rows.sort(key=lambda row: row["sample_key"])
    quarantine = sorted((q for r in results for q in r.quarantine), key=lambda q: q.path)
    return UnitResult(rows, quarantine)


def _build_chunk(units: list[WorkUnit], config: BuildConfig, store_root: str) -> UnitResult:
    store = ImageStore(Path(store_root))
    out = UnitResult([], [])
    for unit in units:
        try:
            out.rows += build_unit(unit, config, store)
        except Exception as exc:  # one bad image, label, box or depth file costs its item, not the stage
            item = f"{unit.task} {unit.record.dataset}/{unit.record.split}/{unit.record.image_id}"
            out.quarantine.append(QuarantineEntry(
                f"{unit.record.dataset}/{unit.record.image_path}", f"{item}: {type(exc).__name__}: {exc}"
            ))
    return out


def build_unit(unit: WorkUnit, config: BuildConfig, store: ImageStore) -> list[dict]:
    """The pairs of one work unit; images go into ``store``."""
    record, root = unit.record, Path(unit.root)
    image = _load_rgb(root / record.image_path)
    base = {
        "role": unit.role,
        "benchmark": unit.benchmark,
        "task": unit.task,
        "dataset": record.dataset,
        "split": record.split,
        "image_id": record.image_id,
        "orig_width": image.shape[1],
        "orig_height": image.shape[0],
        "source_path": record.image_path,
        "source_digest": pixel_digest(image),
        "input_digest": store.put(resize(image, config.resolution)),
        "input_original_digest": store.put(image) if unit.role == "test" else None,
    }
    targets = task(unit.task).targets(record, root, image, unit.class_names, config)
    rows = []
    for target in targets:
        key = "|".join(
            str(v) for v in (unit.role, unit.benchmark or "-", unit.task, record.dataset, record.split,
                             record.image_id, target.category or "-", target.variant or "-", target.positive)
        ) + (f"|{target.tag}" if target.tag is not None else "")
        rows.append({
            **base,
            "sample_key": key,
            "pair_id": hashlib.sha1(key.encode()).hexdigest()[:16],
            "category": target.category,
            "category_text": target.category_text,
            "variant": target.variant,
            "positive": target.positive,
            "color": target.color,
            "color2": target.color2,
            "boxes": [{"x": b[0], "y": b[1], "w": b[2], "h": b[3]} for b in target.boxes],
            "target_digest": store.put(resize(target.image, config.resolution)),
            "target_original_digest": store.put(target.image) if unit.role == "test" else None,
        })
    return rows


def resize(image: np.ndarray, resolution: int) -> np.ndarray:
    """Square resize to ``resolution`` (aspect ignored) with LANCZOS, as the official training loader."""
    return np.asarray(Image.fromarray(image).resize((resolution, resolution), Image.Resampling.LANCZOS))


def _load_rgb(path: Path) -> np.ndarray:
    try:
        return read_rgb(path)  # the readers' own pixel cap and mode policy
    except ImageRefused as exc:
        raise SourceImageError(f"{path}: unreadable image ({exc.reason})") from exc


def expected_pairs(unit: WorkUnit, config: BuildConfig, manifest: str | None = None) -> int:
    """How many pairs `build_unit` makes for ``unit``, from the record alone (for count checks); with
    ``manifest`` ("fp" | "rp"), how many of them that training manifest takes (a task may give each
    manifest its own variants: ``manifest_pairs``)."""
    handler = task(unit.task)
    if manifest is not None and hasattr(handler, "manifest_pairs"):
        return handler.manifest_pairs(unit.record, unit.class_names, config, manifest)
    return handler.expected_pairs(unit.record, unit.class_names, config)
