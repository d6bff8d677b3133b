"""Evaluate a checkpoint on one benchmark: plan the queries, generate, post-process, score both protocols.

One benchmark evaluation runs in four steps, each a function here:

1. :func:`load_benchmark` gathers the test manifest rows and the raw records (full label maps, raw
   depth, every box including crowds) of a benchmark, and picks the evaluated image subset.
2. :func:`plan_queries` lists the (image, instruction) outputs to generate. The two protocols ask
   different questions of the same images, and the `paper` questions are a subset of the `standard`
   ones (the paper asks only ground-truth-present categories, the standard protocol asks every
   category), so each output is generated once and shared.
3. :func:`generate_outputs` runs the batched sampler (`instructcv_core.sampling`) and stores every
   output image content-addressed; a rerun with the same checkpoint and config reuses them.
4. :func:`score` post-processes the outputs (`instructcv_core.postprocess`) and computes the metrics
   of each protocol (`instructcv_core.protocols`).

Units: mIoU, AP and accuracy in percent (as the paper's tables); RMSE in metres; AbsRel and δ as
fractions.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from instructcv_core import encoding, postprocess
from instructcv_core.data.imagestore import ImageStore
from instructcv_core.instructions.templates import FP_TEMPLATES, render
from instructcv_core.construction.pairs import BENCHMARKS, prompt_name
from instructcv_core.protocols import paper, standard
from instructcv_core.data.records import ImageRecord, atomic_write_text, read_records
from instructcv_core.sampling import Request, SamplerConfig

PROTOCOLS = ("paper", "standard")
#: The held-out-phrasing evaluation behind Table 3: ADE20K images, the present categories, and each
#: of the paper's six Table 3 instructions.
HELDOUT_BENCHMARK = "ade20k_heldout"
HELDOUT_SOURCE = "ade20k"

#: Metrics each protocol reports per task, with their valid range and whether higher is better.
METRICS: dict[str, dict[str, dict[str, tuple[float, float, bool]]]] = {
    "segmentation": {
        "paper": {"miou": (0, 100, True)},
        "standard": {"miou": (0, 100, True), "pixel_acc": (0, 100, True)},
    },
    "open_vocabulary": {
        "paper": {"miou": (0, 100, True)},
        "standard": {"miou": (0, 100, True)},
    },
    "detection": {
        "paper": {"map": (0, 100, True), "map50": (0, 100, True)},
        "standard": {"ap": (0, 100, True), "ap50": (0, 100, True), "ap75": (0, 100, True)},
    },
    "depth": {
        "paper": {"rmse": (0, 10, False), "abs_rel": (0, math.inf, False), "delta1": (0, 1, True),
                  "delta2": (0, 1, True), "delta3": (0, 1, True)},
        "standard": {"rmse": (0, 10, False), "abs_rel": (0, math.inf, False), "log10": (0, math.inf, False),
                     "delta1": (0, 1, True), "delta2": (0, 1, True), "delta3": (0, 1, True)},
    },
    "classification": {
        "paper": {"accuracy": (0, 100, True)},
        "standard": {"accuracy": (0, 100, True), "binary_accuracy": (0, 100, True)},
    },
    "heldout": {
        "paper": {"miou": (0, 100, True)},
        "standard": {"miou": (0, 100, True)},
    },
}
#: The headline metric of each kind of benchmark (tables, and the trained-beats-untrained check).
PRIMARY = {"segmentation": "miou", "open_vocabulary": "miou", "detection": ("map", "ap"), "depth": "rmse",
           "classification": "accuracy", "heldout": "miou"}


def metric_kind(benchmark: str) -> str:
    """Which metric family a benchmark reports (FSS-1000 is segmentation scored per class)."""
    if benchmark == HELDOUT_BENCHMARK:
        return "heldout"
    if benchmark == "fss1000":
        return "open_vocabulary"
    return BENCHMARKS[benchmark][0]


def primary_metric(benchmark: str, protocol: str) -> tuple[str, bool]:
    """(metric name, higher is better) of the benchmark's headline number under ``protocol``."""
    kind = metric_kind(benchmark)
    name = PRIMARY[kind]
    if isinstance(name, tuple):
        name = name[0] if protocol == "paper" else name[1]
    return name, METRICS[kind][protocol][name][2]


@dataclass(frozen=True)
class EvalConfig:
    """What an evaluation asks and how it decodes the answers. Everything here is part of its identity."""

    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    protocols: tuple[str, ...] = PROTOCOLS
    max_images: int | None = None  # per benchmark; None = the whole test split
    heldout_images: int | None = 200  # Table 3: the paper used 200 ADE20K test images
    seed: int = 0
    standard_classes: str = "split"  # "split": categories occurring in the test split; "all": the dataset's list
    standard_threshold: float = 127.0  # seg: channel mean > threshold at ground-truth size
    paper_threshold: float = 10.0  # seg: blue channel > 10 at generation size (official)
    positive_colour: str = "red"  # classification questions: "Show red if ..., otherwise show green."
    negative_colour: str = "green"
    sample_rows: int = 6

    def __post_init__(self) -> None:
        unknown = set(self.protocols) - set(PROTOCOLS)
        if unknown or not self.protocols:
            raise ValueError(f"protocols must be a non-empty subset of {PROTOCOLS}, got {self.protocols}")
        if self.standard_classes not in ("split", "all"):
            raise ValueError(f"standard_classes must be 'split' or 'all', got {self.standard_classes!r}")
        for colour in (self.positive_colour, self.negative_colour):
            if colour not in encoding.PALETTE:
                raise ValueError(f"unknown colour {colour!r}; choose from {list(encoding.PALETTE)}")
        if self.positive_colour == self.negative_colour:
            raise ValueError("positive_colour and negative_colour must differ")

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------------
# 1. benchmark data


@dataclass
class Benchmark:
    """Everything evaluation needs about one benchmark (test rows, raw records, categories)."""

    name: str
    task: str
    dataset: str
    frame: pd.DataFrame  # test-manifest rows of the evaluated images
    records: dict[str, ImageRecord]  # image_id -> raw record
    root: Path  # the raw dataset root (label files)
    categories: list[str]  # the dataset's category list, in its native order
    image_ids: list[str]  # evaluated images, in evaluation order
    manifest_path: Path


def select_images(image_ids, limit: int | None, seed: int, benchmark: str) -> list[str]:
    """A deterministic subset of ``limit`` images (all when None), ordered by a seeded hash of the id."""
    ids = sorted(set(image_ids))
    ranked = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}|{benchmark}|{i}".encode()).hexdigest())
    return ranked if limit is None else ranked[: max(0, int(limit))]


def load_benchmark(name: str, datasets_dir: Path, raw_dir: Path, limit: int | None, seed: int) -> Benchmark:
    """Read a benchmark's test manifest and its dataset's raw records; pick the evaluated images."""
    source = HELDOUT_SOURCE if name == HELDOUT_BENCHMARK else name
    task, dataset, split = BENCHMARKS[source]
    manifest_path = Path(datasets_dir) / "test" / f"{source}.parquet"
    if not manifest_path.exists():
        raise FileNotFoundError(f"{manifest_path}: missing test manifest; materialise test_manifests first")
    frame = pd.read_parquet(manifest_path)
    records_path = Path(raw_dir) / dataset / "records.parquet"
    if not records_path.exists():
        raise FileNotFoundError(f"{records_path}: missing raw records; materialise raw_{dataset} first")
    records, root, categories = read_records(records_path)
    image_ids = select_images(frame["image_id"], limit, seed, name)
    by_id = {r.image_id: r for r in records if r.split == split}
    missing = [i for i in image_ids if i not in by_id]
    if missing:
        raise ValueError(f"{manifest_path}: images {missing[:5]} have no raw record in {records_path}")
    frame = frame[frame["image_id"].isin(image_ids)].reset_index(drop=True)
    return Benchmark(name, task, dataset, frame, {i: by_id[i] for i in image_ids}, root,
                     [c.name for c in categories], image_ids, manifest_path)


# ------------------------------------------------------------------------------------------------
# 2. queries


def query_seed(seed: int, benchmark: str, image_id: str, instruction: str) -> int:
    """The noise seed of one output: a hash of what is asked, so it never depends on batching."""
    digest = hashlib.sha256(f"{seed}|{benchmark}|{image_id}|{instruction}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def standard_categories(bench: Benchmark, config: EvalConfig) -> list[str]:
    """The categories the standard protocol asks of every image."""
    if config.standard_classes == "all":
        return list(bench.categories)
    # the categories occurring anywhere in the test split (not only in the evaluated subset), in the dataset's order
    in_split = set(pd.read_parquet(bench.manifest_path, columns=["category"])["category"].dropna())
    return [c for c in bench.categories if c in in_split]


def plan_queries(bench: Benchmark, config: EvalConfig, heldout_phrasings: list[str] | None = None) -> pd.DataFrame:
    """Every output to generate, one row each, with the protocols that use it.

    Columns: query_id, image_id, input_digest (original resolution), category, instruction, colour,
    colour2, seed, paper, standard (bools: which protocol scores this output), phrasing.
    """
    rows: list[dict] = []
    inputs = bench.frame.groupby("image_id")["input_original_digest"].first().to_dict()
    want_paper, want_standard = "paper" in config.protocols, "standard" in config.protocols

    def add(image_id, instruction, category=None, paper_use=False, standard_use=False, colour=None, colour2=None, phrasing=None):
        rows.append({"image_id": image_id, "input_digest": inputs[image_id], "category": category,
                     "instruction": instruction, "colour": colour, "colour2": colour2,
                     "paper": bool(paper_use and want_paper), "standard": bool(standard_use and want_standard),
                     "phrasing": phrasing})

    present = bench.frame.groupby("image_id")["category"].apply(lambda s: sorted(set(s.dropna()))).to_dict()
    if bench.name == HELDOUT_BENCHMARK:
        for image_id in bench.image_ids:
            for phrasing in heldout_phrasings or []:
                for category in present.get(image_id, []):
                    text = render(phrasing, category=prompt_name(bench.dataset, category))
                    add(image_id, text, category, True, True, phrasing=phrasing)
    elif bench.task in ("segmentation", "detection") and bench.name != "fss1000":
        asked = standard_categories(bench, config) if want_standard else []
        for image_id in bench.image_ids:
            mine = present.get(image_id, [])
            for category in dict.fromkeys([*mine, *asked]):
                text = render(FP_TEMPLATES[bench.task], category=prompt_name(bench.dataset, category))
                add(image_id, text, category, category in mine, category in asked or not want_standard)
    elif bench.name == "fss1000":  # open vocabulary: each image is asked for its own (unseen) class
        for image_id in bench.image_ids:
            for category in present.get(image_id, []):
                add(image_id, render(FP_TEMPLATES["segmentation"], category=prompt_name(bench.dataset, category)),
                    category, True, True)
    elif bench.task == "depth":
        for image_id in bench.image_ids:
            add(image_id, FP_TEMPLATES["depth"], None, True, True)
    else:
        for image_id, category, paper_use, standard_use in _classification_questions(bench, config):
            pos, neg = config.positive_colour, config.negative_colour
            text = render(FP_TEMPLATES["classification"], category=prompt_name(bench.dataset, category), color=pos, color2=neg)
            add(image_id, text, category, paper_use, standard_use, pos, neg)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    # several purposes can ask the same question (e.g. the binary cat/dog queries): generate it once
    frame = (frame.groupby(["image_id", "instruction"], sort=False, as_index=False)
             .agg({"input_digest": "first", "category": "first", "colour": "first", "colour2": "first",
                   "paper": "any", "standard": "any", "phrasing": "first"}))
    frame = frame[frame["paper"] | frame["standard"]].reset_index(drop=True)
    frame["seed"] = [query_seed(config.seed, bench.name, i, t) for i, t in zip(frame["image_id"], frame["instruction"])]
    frame["query_id"] = [hashlib.sha1(f"{bench.name}|{i}|{t}".encode()).hexdigest()[:16]
                         for i, t in zip(frame["image_id"], frame["instruction"])]
    return frame.sort_values(["image_id", "instruction"], kind="stable").reset_index(drop=True)


def _classification_questions(bench: Benchmark, config: EvalConfig) -> Iterator[tuple[str, str, bool, bool]]:
    """(image, class asked, used by paper, used by standard) of a classification benchmark.

    Standard: every class of the dataset (the N-way decision), plus cat and dog for Pets (binary).
    Paper: Pets asks cat and dog (the official binary script); other datasets ask the true class
    and one seeded other class, scored with the same official rule.
    """
    for image_id in bench.image_ids:
        record = bench.records[image_id]
        classes = list(bench.categories)
        for name in classes:
            yield image_id, name, False, True
        if bench.dataset == "pets":
            for species in ("cat", "dog"):
                yield image_id, species, True, True
        else:
            others = [c for c in classes if c != record.label_name]
            rng = np.random.default_rng(query_seed(config.seed, bench.name, image_id, "negative"))
            yield image_id, record.label_name, True, False
            if others:
                yield image_id, others[int(rng.integers(len(others)))], True, False


# ------------------------------------------------------------------------------------------------
# 3. generation


def generate_outputs(sampler, queries: pd.DataFrame, input_store: ImageStore, output_store: ImageStore,
                     on_progress: Callable[[int], None] | None = None) -> pd.DataFrame:
    """Generate every query's output with ``sampler``; returns ``queries`` plus an ``output_digest`` column."""
    queries = queries.reset_index(drop=True)
    images = _LazyImages(input_store)
    requests = [Request(d, t, int(s)) for d, t, s in zip(queries["input_digest"], queries["instruction"], queries["seed"])]
    digests = [""] * len(requests)
    for index, output in sampler.generate(requests, images, on_batch=on_progress):
        digests[index] = output_store.put(output)
    return queries.assign(output_digest=digests)


class _LazyImages(dict):
    """digest -> image, read from the store on first use (keeps only what the sampler asks for)."""

    def __init__(self, store: ImageStore):
        super().__init__()
        self.store = store

    def __missing__(self, digest: str) -> np.ndarray:
        image = self.store.get(digest)
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        return image


# ------------------------------------------------------------------------------------------------
# 4. scoring


@dataclass
class Scores:
    metrics: dict[str, dict[str, float]]  # protocol -> metric -> value
    details: dict[str, dict]  # protocol -> counts, warnings, per-class values
    predictions: pd.DataFrame  # one row per query: what it was decoded to


def score(bench: Benchmark, outputs: pd.DataFrame, output_store: ImageStore, input_store: ImageStore,
          config: EvalConfig) -> Scores:
    """Post-process every output and compute the metrics of each configured protocol."""
    kind = metric_kind(bench.name)
    scorer = {"segmentation": _score_segmentation, "detection": _score_detection, "depth": _score_depth,
              "classification": _score_classification, "open_vocabulary": _score_fss, "heldout": _score_heldout}[kind]
    raw = scorer(bench, outputs, output_store, input_store, config)
    metrics, details = {}, {}
    for protocol in config.protocols:
        result = dict(raw[protocol])
        names = METRICS[kind][protocol]
        metrics[protocol] = {k: float(result.pop(k)) for k in names if k in result}
        details[protocol] = result
    return Scores(metrics, details, raw["predictions"])


def _output(store: ImageStore, digest: str) -> np.ndarray:
    image = store.get(digest)
    return np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image


def _size(record: ImageRecord) -> tuple[int, int]:
    return int(record.width), int(record.height)


def _gt_masks(bench: Benchmark, image_id: str):
    from instructcv_core.data.labels import load_class_masks

    return load_class_masks(bench.records[image_id], bench.root)


def _score_segmentation(bench, outputs, store, inputs, config):
    from_names = {name: i for i, name in enumerate(bench.categories)}
    background = 0 if bench.dataset == "voc" else None
    offset = 1 if background is not None else 0  # VOC: 0 = background, classes 1..20
    num_classes = len(bench.categories) + offset
    ignore = 255
    predictions = []
    paper_samples, standard_images, standard_ids = [], [], []
    for image_id, group in outputs.groupby("image_id", sort=False):
        record = bench.records[image_id]
        masks, void = _gt_masks(bench, image_id)
        labels = np.full((record.height, record.width), ignore if background is None else background, dtype=np.int32)
        for name, mask in masks.items():
            labels[mask] = from_names[name] + offset
        if void is not None:
            labels[void] = ignore
        scores = {}
        for row in group.itertuples():
            output = _output(store, row.output_digest)
            gt = masks.get(row.category, np.zeros((record.height, record.width), bool))
            if row.paper:
                pred = postprocess.segmentation_mask(output, threshold=config.paper_threshold, channel=2)
                paper_samples.append((image_id, row.category, pred, gt))
            s = postprocess.segmentation_scores(output, size=_size(record))
            if row.standard:
                scores[from_names[row.category] + offset] = s
            predictions.append({"query_id": row.query_id, "foreground_fraction": float((s > config.standard_threshold).mean())})
        if scores:
            standard_images.append((scores, labels))
            standard_ids.append(image_id)
    out = {"predictions": pd.DataFrame(predictions)}
    if "paper" in config.protocols:
        out["paper"] = paper.segmentation_miou(paper_samples)
    if "standard" in config.protocols:
        seg = lambda images: standard.segmentation_miou(images, num_classes=num_classes, ignore_index=ignore,  # noqa: E731
                                                        threshold=config.standard_threshold, background=background)
        out["standard"] = {**seg(standard_images),
                           "per_image": _per_image(seg, standard_ids, standard_images, "miou")}
    return out


def _per_image(metric_fn, image_ids: list[str], samples: list, metric: str) -> dict[str, float]:
    """The headline metric of each image alone (the unit of the paired trained-vs-untrained check)."""
    values: dict[str, list] = {}
    for image_id, sample in zip(image_ids, samples):
        values.setdefault(image_id, []).append(sample)
    return {image_id: float(metric_fn(group)[metric]) for image_id, group in values.items()}


def _score_fss(bench, outputs, store, inputs, config):
    predictions, paper_samples, standard_samples = [], [], []
    for row in outputs.itertuples():
        record = bench.records[row.image_id]
        masks, _ = _gt_masks(bench, row.image_id)
        gt = masks.get(row.category, np.zeros((record.height, record.width), bool))
        output = _output(store, row.output_digest)
        paper_samples.append((row.image_id, row.category, postprocess.segmentation_mask(output, config.paper_threshold, 2), gt))
        mask = postprocess.segmentation_mask(output, config.standard_threshold, "mean", size=_size(record))
        standard_samples.append((row.category, mask, gt))
        predictions.append({"query_id": row.query_id, "foreground_fraction": float(mask.mean())})
    out = {"predictions": pd.DataFrame(predictions)}
    if "paper" in config.protocols:
        out["paper"] = paper.fss_miou(paper_samples)
    if "standard" in config.protocols:
        out["standard"] = {**standard.fss_miou(standard_samples),
                           "per_image": _per_image(standard.fss_miou, list(outputs["image_id"]), standard_samples, "miou")}
    return out


def _score_heldout(bench, outputs, store, inputs, config):
    """Table 3: both protocols per phrasing (standard: per-class accumulated IoU over the asked classes)."""
    predictions, per_phrasing = [], {p: {"paper": [], "standard": []} for p in outputs["phrasing"].unique()}
    masks_cache: dict[str, dict] = {}
    for row in outputs.itertuples():
        record = bench.records[row.image_id]
        if row.image_id not in masks_cache:
            masks_cache[row.image_id] = _gt_masks(bench, row.image_id)[0]
        gt = masks_cache[row.image_id].get(row.category, np.zeros((record.height, record.width), bool))
        output = _output(store, row.output_digest)
        per_phrasing[row.phrasing]["paper"].append(
            (row.image_id, row.category, postprocess.segmentation_mask(output, config.paper_threshold, 2), gt))
        mask = postprocess.segmentation_mask(output, config.standard_threshold, "mean", size=_size(record))
        per_phrasing[row.phrasing]["standard"].append((row.category, mask, gt))
        predictions.append({"query_id": row.query_id, "foreground_fraction": float(mask.mean())})
    out = {"predictions": pd.DataFrame(predictions)}
    for protocol in config.protocols:
        by_phrasing = {}
        for phrasing, samples in per_phrasing.items():
            result = paper.segmentation_miou(samples["paper"]) if protocol == "paper" else standard.fss_miou(samples["standard"])
            by_phrasing[phrasing] = float(result["miou"])
        values = [v for v in by_phrasing.values() if not math.isnan(v)]
        out[protocol] = {"miou": float(np.mean(values)) if values else math.nan, "by_phrasing": by_phrasing}
    return out


def _score_detection(bench, outputs, store, inputs, config):
    predictions, folders, images = [], [], []
    for image_id, group in outputs.groupby("image_id", sort=False):
        record = bench.records[image_id]
        size = _size(record)
        detections = []
        for row in group.itertuples():
            output = _output(store, row.output_digest)
            found = postprocess.detect_boxes(output, size=size)
            if row.paper:
                gt = [_xyxy(b) for b in record.boxes if b.category == row.category]  # crowd boxes count (official)
                folders.append((_folder_name(image_id, row.category), gt, postprocess.paper_boxes(output, size)))
            if row.standard:
                detections += [(row.category, (d.x, d.y, d.w, d.h), d.score) for d in found]
            predictions.append({"query_id": row.query_id, "boxes": json.dumps([[d.x, d.y, d.w, d.h, d.score] for d in found])})
        gt_boxes = [(b.category, (b.x, b.y, b.w, b.h), bool(b.iscrowd)) for b in record.boxes]
        images.append((image_id, size[0], size[1], gt_boxes, detections))
    out = {"predictions": pd.DataFrame(predictions)}
    if "paper" in config.protocols:
        out["paper"] = paper.detection_map(folders)
    if "standard" in config.protocols:
        categories = standard_categories(bench, config)
        det = lambda items: standard.detection_ap(items, categories)  # noqa: E731
        out["standard"] = {**det(images), "per_image": _per_image(det, [i[0] for i in images], images, "ap")}
    return out


def _folder_name(image_id: str, category: str) -> str:
    """The official ``{image}_{category}_det`` folder name ('_' and spaces inside names become '-')."""
    clean = lambda text: str(text).strip().replace("_", "-").replace(" ", "-")  # noqa: E731
    return f"{clean(image_id)}_{clean(category)}_det"


def _xyxy(box) -> tuple[float, float, float, float]:
    return float(box.x), float(box.y), float(box.x + box.w), float(box.y + box.h)


def _score_depth(bench, outputs, store, inputs, config):
    from instructcv_core.data.labels import load_depth_m

    predictions, paper_samples, standard_samples = [], [], []
    targets = bench.frame.groupby("image_id")["target_original_digest"].first().to_dict()
    for row in outputs.itertuples():
        record = bench.records[row.image_id]
        output = _output(store, row.output_digest)
        if "paper" in config.protocols:
            paper_samples.append((_output(inputs, targets[row.image_id]), output))
        pred = postprocess.depth_metres(output, size=_size(record))
        standard_samples.append((pred, load_depth_m(record, bench.root, dense=False)))
        predictions.append({"query_id": row.query_id, "mean_depth_m": float(pred.mean())})
    out = {"predictions": pd.DataFrame(predictions)}
    if "paper" in config.protocols:
        out["paper"] = paper.depth_metrics(paper_samples)
    if "standard" in config.protocols:
        depth = lambda samples: standard.depth_metrics(samples, eigen_crop=bench.dataset == "nyuv2")  # noqa: E731
        out["standard"] = {**depth(standard_samples),
                           "per_image": _per_image(depth, list(outputs["image_id"]), standard_samples, "rmse")}
    return out


def _score_classification(bench, outputs, store, inputs, config):
    predictions = []
    margins: dict[str, dict[str, float]] = {}
    paper_outputs: dict[str, dict[str, np.ndarray]] = {}
    for row in outputs.itertuples():
        output = _output(store, row.output_digest)
        margin = encoding.classification_margin(output, row.colour, row.colour2)
        margins.setdefault(row.image_id, {})[row.category] = margin
        if row.paper:
            paper_outputs.setdefault(row.image_id, {})[row.category] = output
        predictions.append({"query_id": row.query_id, "margin": margin})
    out = {"predictions": pd.DataFrame(predictions)}
    if "paper" in config.protocols:
        samples = []
        for image_id, asked in paper_outputs.items():
            record = bench.records[image_id]
            if bench.dataset == "pets":  # the official binary script: the cat answer and the dog answer
                samples.append((image_id, record.species, asked["cat"], asked["dog"]))
            else:  # the same rule on (true class, one other class): the true class plays "cat"
                other = next(c for c in sorted(asked) if c != record.label_name)
                samples.append((image_id, "cat", asked[record.label_name], asked[other]))
        out["paper"] = paper.classification_accuracy(samples)
    if "standard" in config.protocols:
        names = set(bench.categories)
        multi = [(bench.records[i].label_name, {c: m for c, m in asked.items() if c in names}) for i, asked in margins.items()]
        result = dict(standard.classification_accuracy(multi))
        result["per_image"] = _per_image(standard.classification_accuracy, list(margins), multi, "accuracy")
        if bench.dataset == "pets":
            binary = [(bench.records[i].species, {c: asked[c] for c in ("cat", "dog")}) for i, asked in margins.items()]
            result["binary_accuracy"] = standard.classification_accuracy(binary)["accuracy"]
        out["standard"] = result
    return out


# ------------------------------------------------------------------------------------------------
# one benchmark, end to end


@dataclass
class BenchmarkResult:
    benchmark: str
    metrics: dict[str, dict[str, float]]
    details: dict[str, dict]
    counts: dict[str, float]  # images, queries, unet_evaluations, generation_seconds, reused
    paths: dict[str, str]
    identity: dict  # checkpoint, test-manifest digest, queries digest, sampler config


def evaluate_benchmark(name: str, sampler_factory: Callable[[], object], checkpoint_id: str, config: EvalConfig,
                       datasets_dir: Path, raw_dir: Path, out_dir: Path, output_store: ImageStore,
                       heldout_phrasings: list[str] | None = None, log: Callable[[str], None] = print) -> BenchmarkResult:
    """Plan, generate (or reuse), score and write one benchmark's results under ``out_dir``.

    Files: ``queries.parquet`` (every output with its digest and decoded prediction),
    ``metrics.parquet`` / ``metrics.md`` (one row per protocol and metric), ``details.json``,
    ``samples.png`` (input | output | prediction | ground truth). The sampler is only built when
    something has to be generated: a rerun with the same checkpoint, data and config reuses the
    outputs (``identity.json``) and only re-scores them.
    """
    from instructcv_core.construction.manifest import write_table_frame
    from instructcv_core.data.records import atomic_write

    limit = config.heldout_images if name == HELDOUT_BENCHMARK else config.max_images
    bench = load_benchmark(name, datasets_dir, raw_dir, limit, config.seed)
    queries = plan_queries(bench, config, heldout_phrasings)
    input_store = ImageStore(Path(datasets_dir) / "images")
    identity = {"checkpoint": checkpoint_id, "manifest": _file_digest(bench.manifest_path),
                "queries": hashlib.sha256(pd.util.hash_pandas_object(queries[["query_id", "seed"]], index=False).values.tobytes()).hexdigest(),
                "sampler": config.sampler.to_dict()}
    out_dir = Path(out_dir)
    outputs_path, identity_path = out_dir / "queries.parquet", out_dir / "identity.json"
    reused = False
    start = time.monotonic()
    if identity_path.exists() and outputs_path.exists() and json.loads(identity_path.read_text()) == identity:
        outputs = pd.read_parquet(outputs_path)[list(queries.columns) + ["output_digest"]]
        reused = all(output_store.path(d).exists() for d in outputs["output_digest"])
    if not reused:
        log(f"{name}: generating {len(queries)} outputs for {len(bench.image_ids)} images")
        sampler = sampler_factory()
        done, step = [0], max(1, len(queries) // 10)

        def on_batch(n: int) -> None:  # a progress line about every 10 % (paper-scale runs take hours)
            before, done[0] = done[0], done[0] + n
            if done[0] // step > before // step or done[0] == len(queries):
                log(f"{name}: {done[0]}/{len(queries)} outputs ({time.monotonic() - start:.0f} s)")

        outputs = generate_outputs(sampler, queries, input_store, output_store, on_batch)
    else:
        log(f"{name}: reusing {len(outputs)} outputs generated earlier with this checkpoint and config")
    seconds = time.monotonic() - start

    scores = score(bench, outputs, output_store, input_store, config)
    table = outputs.merge(scores.predictions, on="query_id", how="left") if not scores.predictions.empty else outputs
    write_table_frame(table, outputs_path)
    if not reused:
        atomic_write_text(identity_path, json.dumps(identity, indent=1, sort_keys=True))
    metrics_frame = metrics_table(name, scores.metrics)
    write_table_frame(metrics_frame, out_dir / "metrics.parquet")
    atomic_write_text(out_dir / "metrics.md", metrics_frame.to_markdown(index=False, floatfmt=".4g") + "\n")
    atomic_write_text(out_dir / "details.json", json.dumps(_jsonable(scores.details), indent=1, sort_keys=True))
    grid = sample_grid(bench, table, output_store, input_store, config)
    atomic_write(out_dir / "samples.png", lambda tmp: grid.save(tmp, format="PNG"))
    counts = {"images": len(bench.image_ids), "queries": len(queries),
              "paper_queries": int(queries["paper"].sum()), "standard_queries": int(queries["standard"].sum()),
              "unet_evaluations": 0 if reused else config.sampler.unet_evaluations(len(queries)),
              "generation_seconds": round(seconds, 2), "reused": reused}
    paths = {"dir": str(out_dir), "queries": str(outputs_path), "metrics": str(out_dir / "metrics.parquet"),
             "metrics_md": str(out_dir / "metrics.md"), "samples": str(out_dir / "samples.png")}
    return BenchmarkResult(name, scores.metrics, scores.details, counts, paths, identity)


def metrics_table(benchmark: str, metrics: dict[str, dict[str, float]]) -> pd.DataFrame:
    """One row per (protocol, metric), with the MLflow key it is logged under."""
    rows = [{"benchmark": benchmark, "protocol": protocol, "metric": metric, "value": value,
             "mlflow_key": f"eval/{benchmark}/{protocol}/{metric}"}
            for protocol, values in metrics.items() for metric, value in values.items()]
    return pd.DataFrame(rows, columns=["benchmark", "protocol", "metric", "value", "mlflow_key"])


def invalid_metrics(benchmark: str, metrics: dict[str, dict[str, float]]) -> list[str]:
    """Metrics that are not finite or fall outside their valid range (empty list: all valid)."""
    kind = metric_kind(benchmark)
    problems = []
    for protocol, values in metrics.items():
        for name, (low, high, _) in METRICS[kind][protocol].items():
            if name not in values:
                if not (name == "binary_accuracy" and benchmark != "pets"):  # only Pets has a binary variant
                    problems.append(f"{protocol}/{name}: missing")
                continue
            v = values[name]
            if not math.isfinite(v) or not low <= v <= high:
                problems.append(f"{protocol}/{name} = {v} (valid range {low}..{high})")
    return problems


#: The smallest difference in a headline metric that counts as one model beating another (percent
#: points for mIoU/AP/accuracy, metres for RMSE): below it a difference is immaterial however consistent.
MIN_EFFECT = {"miou": 1.0, "ap": 1.0, "map": 1.0, "accuracy": 1.0, "rmse": 0.05}


def paired_comparison(trained: dict[str, float], untrained: dict[str, float], higher_is_better: bool,
                      confidence: float = 0.95, min_effect: float = 0.0) -> dict:
    """Is ``untrained`` significantly better than ``trained`` on the images both were scored on?

    A one-sided paired t-test on per-image values: ``d_i = trained_i - untrained_i`` (negated when
    lower is better, so ``d > 0`` favours the trained model). The untrained model *beats* the
    trained one when ``mean(d) < 0`` and ``t = mean(d) / (sd(d) / sqrt(n)) < -t_{confidence, n-1}``;
    with identical differences (``sd = 0``) any negative mean counts; with one image, any loss.
    Images with a non-finite value on either side are left out.
    """
    from scipy import stats

    finite = lambda v: isinstance(v, (int, float)) and math.isfinite(v)  # noqa: E731  (None = NaN in JSON)
    common = sorted(k for k in set(trained) & set(untrained) if finite(trained[k]) and finite(untrained[k]))
    sign = 1.0 if higher_is_better else -1.0
    d = np.array([sign * (trained[k] - untrained[k]) for k in common], dtype=np.float64)
    n = len(d)
    if n == 0:
        return {"images": 0, "mean_difference": math.nan, "t": math.nan, "critical_t": math.nan, "untrained_better": False}
    mean = float(d.mean())
    sd = float(d.std(ddof=1)) if n > 1 else 0.0
    critical = float(stats.t.ppf(confidence, n - 1)) if n > 1 else math.nan
    if sd == 0.0:
        t, beaten = (math.inf if mean > 0 else -math.inf if mean < 0 else 0.0), mean < -min_effect
    else:
        t = mean / (sd / math.sqrt(n))
        beaten = mean < -min_effect and t < -critical
    return {"images": n, "mean_difference": mean, "t": float(t), "critical_t": critical, "untrained_better": bool(beaten)}


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


# ------------------------------------------------------------------------------------------------
# sample grids


def sample_grid(bench: Benchmark, table: pd.DataFrame, output_store: ImageStore, input_store: ImageStore,
                config: EvalConfig, cell: int = 96):
    """Rows of input | output | prediction | ground truth for a few paper-protocol queries."""
    from PIL import Image, ImageDraw

    chosen = table[table["paper"]] if table["paper"].any() else table
    chosen = chosen.drop_duplicates("image_id").head(config.sample_rows)
    header = Image.new("RGB", (cell * 4, 14), (230, 230, 230))
    for i, title in enumerate(("input", "output", "prediction", "ground truth")):
        ImageDraw.Draw(header).text((i * cell + 2, 1), title, fill="black")
    rows = [header]
    for row in chosen.itertuples():
        image = _output(input_store, row.input_digest)
        output = _output(output_store, row.output_digest)
        prediction = _prediction_image(bench, row, image, output, config)
        truth = _truth_image(bench, row, input_store)
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


def _prediction_image(bench, row, image, output, config) -> np.ndarray:
    kind = metric_kind(bench.name)
    size = (image.shape[1], image.shape[0])
    if kind in ("segmentation", "open_vocabulary", "heldout"):
        return encoding.encode_segmentation(postprocess.segmentation_mask(output, config.standard_threshold, "mean", size=size))
    if kind == "detection":
        found = postprocess.detect_boxes(output, size=size)
        return encoding.encode_detection(image, [(d.x, d.y, d.w, d.h) for d in found], (255, 0, 0), 2)
    if kind == "depth":
        return encoding.encode_depth(postprocess.depth_metres(output, size=size))
    margin = encoding.classification_margin(output, row.colour, row.colour2)
    return encoding.encode_classification(row.colour if margin > 0 else row.colour2, (32, 32))


def _truth_image(bench, row, input_store: ImageStore) -> np.ndarray:
    """The ground-truth target of the query: its encoded target image, or the expected colour block."""
    record = bench.records[row.image_id]
    if bench.task == "classification":
        present = row.category in (record.label_name, record.species)
        return encoding.encode_classification(row.colour if present else row.colour2, (32, 32))
    frame = bench.frame
    match = frame[(frame["image_id"] == row.image_id) & ((frame["category"] == row.category) | frame["category"].isna())]
    if match.empty:  # a category absent from the image (standard protocol): an empty mask
        return encoding.encode_segmentation(np.zeros((record.height, record.width), bool))
    return _output(input_store, match.iloc[0]["target_original_digest"])


__all__ = [
    "Benchmark", "BenchmarkResult", "EvalConfig", "HELDOUT_BENCHMARK", "METRICS", "PROTOCOLS", "evaluate_benchmark",
    "generate_outputs", "invalid_metrics", "load_benchmark", "metric_kind", "metrics_table", "plan_queries",
    "MIN_EFFECT", "paired_comparison", "primary_metric", "query_seed", "score", "select_images", "standard_categories",
]
