"""From raw records to (input, target) pairs: which images feed which task, and their visual targets.

A *pair* is one input image, one task, one category (where the task has one) and the target image
the model must draw (`instructcv_core.encoding`). Instructions are attached later
(`instructcv_core.construction.manifest`), so the same pairs serve the FP and RP manifests.

- Segmentation: one pair per (image, category present); the target is the white-on-black mask of
  every pixel of that category (instances merged; void pixels are black).
- Detection: one pair per (image, category with at least one box); the target is the input with box
  outlines around every instance of that category (crowd boxes excluded unless configured).
- Depth: one pair per image; the target is the 8-bit gray depth map (255 = 10 m) computed from the
  metric depth (the hole-filled map where the dataset has one).
- Classification: per image, one positive pair (its class named, target = the positive colour) and
  negatives (another class named, target = the negative colour). Oxford-IIIT Pet yields the paper's
  binary cat/dog variant and a 37-breed variant. Colours are drawn per pair, seeded.

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

from instructcv_core import encoding
from instructcv_core.data.images import ImageRefused, read_rgb
from instructcv_core.data.imagestore import ImageStore, pixel_digest
from instructcv_core.data.labels import load_class_masks, load_depth_m
from instructcv_core.data.records import ImageRecord, QuarantineEntry

TASKS = ("segmentation", "detection", "depth", "classification")

# Which raw splits train which task (the official recipe: ADE20K seg, COCO det, NYUv2 depth, Pets cls).
TRAIN_SOURCES: dict[str, tuple[tuple[str, str], ...]] = {
    "segmentation": (("ade20k", "train"),),
    "detection": (("coco", "train"),),
    "depth": (("nyuv2", "train"), ("nyuv2", "train_sync")),
    "classification": (("pets", "trainval"),),
}
# Test benchmarks: name -> (task, dataset, split). In-domain first, then external.
BENCHMARKS: dict[str, tuple[str, str, str]] = {
    "nyuv2": ("depth", "nyuv2", "test"),
    "ade20k": ("segmentation", "ade20k", "val"),
    "coco": ("detection", "coco", "val"),
    "pets": ("classification", "pets", "test"),
    "sunrgbd": ("depth", "sunrgbd", "test"),
    "voc_seg": ("segmentation", "voc", "val"),
    "voc_det": ("detection", "voc", "val"),
    "imagenet_sub": ("classification", "imagenet_sub", "val"),
    "fss1000": ("segmentation", "fss1000", "test"),
}
# Names as they read in an instruction, where a dataset's own name does not.
PROMPT_NAMES = {
    ("voc", "aeroplane"): "aeroplane",
    ("voc", "diningtable"): "dining table",
    ("voc", "pottedplant"): "potted plant",
    ("voc", "tvmonitor"): "tv monitor",
    ("voc", "motorbike"): "motorbike",
}


@dataclass(frozen=True)
class BuildConfig:
    """How targets are made. Everything here changes the pairs, so it is part of their identity."""

    resolution: int = 256
    seed: int = 0
    box_colour: str = "blue"  # a PALETTE name; the official COCO targets are blue, the paper text says red
    box_width: int = 4
    include_crowd: bool = False
    pets_variants: tuple[str, ...] = ("binary", "breeds")
    classification_negatives: int = 1  # negative pairs per image for the multi-class variants

    def __post_init__(self) -> None:
        if self.box_colour not in encoding.PALETTE:
            raise ValueError(f"box_colour {self.box_colour!r} is not a palette colour ({', '.join(encoding.PALETTE)})")
        unknown = set(self.pets_variants) - {"binary", "breeds"}
        if unknown:
            raise ValueError(f"pets_variants: unknown variant(s) {sorted(unknown)} (known: binary, breeds)")


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
    for task, splits in TRAIN_SOURCES.items():
        for dataset, split in splits:
            if dataset in sources:
                records, root, classes = sources[dataset]
                units += [WorkUnit(task, "train", None, r, str(root), tuple(classes)) for r in records if r.split == split]
    for benchmark, (task, dataset, split) in BENCHMARKS.items():
        if dataset in sources:
            records, root, classes = sources[dataset]
            units += [
                WorkUnit(task, "test", benchmark, r, str(root), tuple(classes))
                for r in records
                if r.split == split and _has_labels(r, task)
            ]
    return units


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
    targets = _TARGETS[unit.task](unit, image, config)
    rows = []
    for target in targets:
        key = "|".join(
            str(v) for v in (unit.role, unit.benchmark or "-", unit.task, record.dataset, record.split,
                             record.image_id, target.category or "-", target.variant or "-", target.positive)
        )
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


@dataclass
class Target:
    image: np.ndarray
    category: str | None = None
    category_text: str | None = None
    variant: str | None = None
    positive: bool | None = None
    color: str | None = None
    color2: str | None = None
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)


def _segmentation_targets(unit: WorkUnit, image: np.ndarray, config: BuildConfig) -> list[Target]:
    masks, _void = load_class_masks(unit.record, Path(unit.root))
    return [
        Target(encoding.encode_segmentation(mask), name, prompt_name(unit.record.dataset, name))
        for name, mask in sorted(masks.items())
        if mask.any()
    ]


def _detection_targets(unit: WorkUnit, image: np.ndarray, config: BuildConfig) -> list[Target]:
    by_category: dict[str, list[tuple[float, float, float, float]]] = {}
    for box in unit.record.boxes:
        if box.iscrowd and not config.include_crowd:
            continue
        by_category.setdefault(box.category, []).append((box.x, box.y, box.w, box.h))
    colour = encoding.PALETTE[config.box_colour]
    return [
        Target(encoding.encode_detection(image, boxes, colour, config.box_width), name,
               prompt_name(unit.record.dataset, name), boxes=boxes)
        for name, boxes in sorted(by_category.items())
    ]


def _depth_targets(unit: WorkUnit, image: np.ndarray, config: BuildConfig) -> list[Target]:
    depth = load_depth_m(unit.record, Path(unit.root), dense=True)
    if depth.shape != image.shape[:2]:
        raise ValueError(f"depth map is {depth.shape[::-1]} but the image is {image.shape[1::-1]}")
    return [Target(encoding.encode_depth(depth))]


def _classification_targets(unit: WorkUnit, image: np.ndarray, config: BuildConfig) -> list[Target]:
    """Positive and negative colour blocks; every draw is seeded by the image and the question."""
    record = unit.record
    size = (image.shape[1], image.shape[0])
    questions: list[tuple[str, str, bool]] = []  # (variant, class named, is it the image's class)
    if record.dataset == "pets":
        if "binary" in config.pets_variants:
            for species in ("cat", "dog"):
                questions.append(("binary", species, species == record.species))
        if "breeds" in config.pets_variants:
            questions += _with_negatives("breeds", record.label_name, unit.class_names, record, config)
    else:
        questions += _with_negatives("classes", record.label_name, unit.class_names, record, config)

    targets = []
    for variant, name, positive in questions:
        rng = _rng(config.seed, record.dataset, record.image_id, variant, name)
        color, color2 = encoding.draw_colour_pair(rng)
        block = encoding.encode_classification(encoding.PALETTE[color if positive else color2], size)
        targets.append(Target(block, name, prompt_name(record.dataset, name), variant, positive, color, color2))
    return targets


def _with_negatives(variant, true_class, class_names, record, config) -> list[tuple[str, str, bool]]:
    if true_class is None:
        raise ValueError(f"{record.image_path}: no class label")
    others = sorted(c for c in class_names if c != true_class)
    rng = _rng(config.seed, record.dataset, record.image_id, variant, "negatives")
    k = min(config.classification_negatives, len(others))
    negatives = [others[i] for i in sorted(rng.choice(len(others), size=k, replace=False))] if k else []
    return [(variant, true_class, True)] + [(variant, n, False) for n in negatives]


_TARGETS = {
    "segmentation": _segmentation_targets,
    "detection": _detection_targets,
    "depth": _depth_targets,
    "classification": _classification_targets,
}


def prompt_name(dataset: str, name: str) -> str:
    """A category as it reads in an instruction ("tvmonitor" -> "tv monitor", "american_bulldog" -> "american bulldog")."""
    if (dataset, name) in PROMPT_NAMES:
        return PROMPT_NAMES[(dataset, name)]
    return name.strip().replace("_", " ")


def resize(image: np.ndarray, resolution: int) -> np.ndarray:
    """Square resize to ``resolution`` (aspect ignored) with LANCZOS, as the official training loader."""
    return np.asarray(Image.fromarray(image).resize((resolution, resolution), Image.Resampling.LANCZOS))


def _load_rgb(path: Path) -> np.ndarray:
    try:
        return read_rgb(path)  # the readers' own pixel cap and mode policy
    except ImageRefused as exc:
        raise SourceImageError(f"{path}: unreadable image ({exc.reason})") from exc


def _rng(seed: int, *parts: str) -> np.random.Generator:
    digest = hashlib.sha256("|".join([str(seed), *map(str, parts)]).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def expected_pairs(unit: WorkUnit, config: BuildConfig) -> int:
    """How many pairs `build_unit` makes for ``unit``, from the record alone (for count checks)."""
    record = unit.record
    if unit.task == "segmentation":
        return len(record.categories)
    if unit.task == "detection":
        return len({b.category for b in record.boxes if config.include_crowd or not b.iscrowd})
    if unit.task == "depth":
        return 1
    negatives = min(config.classification_negatives, max(0, len(unit.class_names) - 1))
    if record.dataset == "pets":
        return 2 * ("binary" in config.pets_variants) + (1 + negatives) * ("breeds" in config.pets_variants)
    return 1 + negatives


def _has_labels(record: ImageRecord, task: str) -> bool:
    if task == "segmentation":
        return record.mask_format is not None
    if task == "detection":
        return bool(record.boxes)
    if task == "depth":
        return record.depth_path is not None
    return record.label_name is not None
