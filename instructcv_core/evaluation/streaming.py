"""Streaming reducers: each generated output is reduced when it arrives, so scoring memory does not grow
with the split.

The batch reducers of :mod:`~instructcv_core.evaluation.protocols.paper` and
:mod:`~instructcv_core.evaluation.protocols.standard` take whole lists of samples; a split's worth
of full-resolution masks, score maps or depth maps (ADE20K val under the standard protocol: 2,000
images x 150 classes of 512x683 float maps, about 420 GB) does not fit in memory. Each class here
keeps only what its metric needs, in the ``update`` / ``compute`` / ``merge`` pattern of
torchmetrics' ``Metric``:

* :class:`PaperSegmentation`: one official IoU per (image, class) pair (floats);
* :class:`ClassScoreArgmax` + :class:`StandardSegmentation`: a running per-pixel argmax over the
  class score maps of one image, then a dataset confusion matrix (150 x 151 int64) and one mIoU
  per image (the unit of the confidence intervals);
* :class:`ClassIoUSums`: per-class (and per-image) intersection and union pixel counts (FSS-1000);
* :class:`PaperDepth` / :class:`StandardDepth`: per-image error values.

``compute()`` returns exactly the dict of the batch reducer on the same samples, in the same order
(tested value for value); ``merge(other)`` appends another accumulator's samples (a shard that
follows this one in the split's order), so shards merge to the unsharded result.
The per-sample arithmetic is the batch reducers' own (they are called on one sample at a time, or
their per-sample helpers are), so a protocol fix there applies here unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from instructcv_core.evaluation.metrics import ConfusionMatrix
from instructcv_core.evaluation.protocols import paper, standard

# --------------------------------------------------------------------------------------------
# segmentation, paper protocol


class PaperSegmentation:
    """:func:`paper.segmentation_miou`, one (image, class) pair at a time: only the pair IoUs are kept."""

    def __init__(self, gt_threshold: int = 0):
        self.gt_threshold = gt_threshold
        self.per_pair: dict[str, dict[str, float]] = {}
        self.pairs = self.missing = self.overwritten = 0

    def update(self, image_key: str, category: str, pred_mask: np.ndarray | None, gt_mask: np.ndarray) -> None:
        self.pairs += 1
        ious = self.per_pair.setdefault(str(image_key), {})
        if pred_mask is None:
            self.missing += 1
            return
        if category in ious:
            self.overwritten += 1
        ious[category] = paper.official_mask_iou(pred_mask, gt_mask, self.gt_threshold)

    def merge(self, other: PaperSegmentation) -> None:
        for key, ious in other.per_pair.items():
            mine = self.per_pair.setdefault(key, {})
            self.overwritten += sum(category in mine for category in ious)
            mine.update(ious)
        self.pairs += other.pairs
        self.missing += other.missing
        self.overwritten += other.overwritten

    def compute(self) -> dict:
        return paper.miou_of_pair_ious(self.per_pair, self.pairs, self.missing, self.overwritten)


# --------------------------------------------------------------------------------------------
# segmentation, standard protocol


class ClassScoreArgmax:
    """:func:`standard.combine_class_scores` for one image, one class score map at a time.

    Keeps the best score and its class per pixel (2 maps instead of one per class): a class wins a
    pixel with a higher score, or an equal score and a smaller class index, which is the argmax's
    first maximum over the classes in ascending order. Each class may be added once.
    """

    def __init__(self, shape: tuple[int, int], threshold: float = standard.SEG_THRESHOLD, background: int | None = None):
        self.shape, self.threshold, self.background = tuple(shape), threshold, background
        self.best_score: np.ndarray | None = None
        self.best_class: np.ndarray | None = None
        self.classes: list[int] = []

    def add(self, class_index: int, scores: np.ndarray) -> None:
        class_index = int(class_index)
        if class_index in self.classes:
            raise ValueError(f"class {class_index} added twice to one image's score maps")
        s = np.asarray(scores, dtype=np.float32)
        if s.shape != self.shape:
            raise ValueError(f"score maps {s.shape} must have the GT shape {self.shape}")
        if self.best_score is None:
            self.classes.append(class_index)
            self.best_score = s.copy()
            self.best_class = np.full(self.shape, class_index, dtype=np.int64)
            return
        wins = s > self.best_score
        if class_index < max(self.classes):  # a tie goes to the smaller class: only then can it win one
            wins |= (s == self.best_score) & (class_index < self.best_class)
        self.classes.append(class_index)
        np.copyto(self.best_score, s, where=wins)
        np.copyto(self.best_class, class_index, where=wins)

    def labels(self) -> np.ndarray:
        """The combined label map (int64; -1 or ``background`` where no class exceeds the threshold)."""
        fill = -1 if self.background is None else int(self.background)
        if self.best_score is None:
            return np.full(self.shape, fill, dtype=np.int64)
        return np.where(self.best_score > self.threshold, self.best_class, np.int64(fill))


class StandardSegmentation:
    """:func:`standard.segmentation_miou` one image at a time, plus each image's own mIoU (``per_image``).

    State: the dataset confusion matrix and one float per image, whatever the split's size.
    """

    def __init__(self, num_classes: int, ignore_index: int | None, threshold: float = standard.SEG_THRESHOLD,
                 background: int | None = None):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.threshold, self.background = threshold, background
        self.matrix = ConfusionMatrix(num_classes, ignore_index)
        self.expected = set(range(num_classes)) - ({background} if background is not None else set())
        self.images = self.incomplete = 0
        self.per_image: dict[str, float] = {}
        # per image: (class -> intersection, class -> union, pixels right, pixels): the resampling units of
        # the pooled mIoU and pixel accuracy (`bootstrap`); a few hundred integers per image
        self.counts: dict[str, tuple[dict[int, int], dict[int, int], int, int]] = {}

    def new_image(self, shape: tuple[int, int]) -> ClassScoreArgmax:
        """The per-pixel combiner to add one image's class score maps to."""
        return ClassScoreArgmax(shape, self.threshold, self.background)

    def update(self, image_id: str, combined: ClassScoreArgmax, gt_labels: np.ndarray) -> None:
        gt = np.asarray(gt_labels)
        if gt.ndim != 2:
            raise ValueError(f"gt_labels must be (H, W), got {gt.shape}")
        bad = [c for c in combined.classes if not 0 <= c < self.num_classes]
        if bad:
            raise ValueError(f"score keys {bad} outside 0..{self.num_classes - 1}")
        if set(combined.classes) != self.expected:
            self.incomplete += 1
        if combined.shape != gt.shape:
            raise ValueError(f"score maps {combined.shape} must have the GT shape {gt.shape}")
        labels = combined.labels()
        own = ConfusionMatrix(self.num_classes, self.ignore_index)
        own.update(gt, labels)
        self.matrix.matrix += own.matrix
        self.per_image[str(image_id)] = 100.0 * own.miou()
        counts = own.pooled_counts()
        self.counts[str(image_id)] = (counts["intersection"], counts["union"], counts["pixels_correct"], counts["pixels"])
        self.images += 1

    def merge(self, other: StandardSegmentation) -> None:
        self.matrix.matrix += other.matrix.matrix
        self.images += other.images
        self.incomplete += other.incomplete
        self.per_image.update(other.per_image)
        self.counts.update(other.counts)

    def bootstrap(self) -> dict:
        """The resampling statistics of ``miou`` and ``pixel_acc`` over the images (`evaluation.intervals`)."""
        from instructcv_core.evaluation.intervals import PooledIoU

        return {"miou": PooledIoU({i: c[0] for i, c in self.counts.items()}, {i: c[1] for i, c in self.counts.items()}),
                "pixel_acc": PooledIoU({i: {0: c[2]} for i, c in self.counts.items()},
                                       {i: {0: c[3]} for i, c in self.counts.items()})}

    def compute(self) -> dict:
        ious = self.matrix.iou()
        warnings = [f"{self.incomplete} image(s) were not queried for every class"] if self.incomplete else []
        return {"miou": 100.0 * self.matrix.miou(), "pixel_acc": 100.0 * self.matrix.pixel_accuracy(),
                "per_class_iou": {c: 100.0 * float(v) for c, v in enumerate(ious)},
                "classes_evaluated": int(np.count_nonzero(~np.isnan(ious))), "images": self.images,
                **self.matrix.pooled_counts(),  # the pixel counts behind miou and pixel_acc
                "warnings": warnings, "per_image": dict(self.per_image)}


class ClassIoUSums:
    """:func:`standard.fss_miou` as per-class intersection and union counts, and each image's own value."""

    def __init__(self):
        self.inter: dict[str, int] = {}
        self.union: dict[str, int] = {}
        self.images = 0
        self.by_image: dict[str, dict[str, list[int]]] = {}  # image -> class -> [inter, union]

    def update(self, image_id: str, class_name: str, pred_mask: np.ndarray, gt_mask: np.ndarray) -> None:
        pred = standard._bool(pred_mask, "pred_mask")
        gt = standard._bool(gt_mask, "gt_mask")
        if pred.shape != gt.shape:
            raise ValueError(f"pred {pred.shape} and gt {gt.shape} must have the same shape (resize to GT size)")
        i, u = int(np.count_nonzero(pred & gt)), int(np.count_nonzero(pred | gt))
        self.inter[class_name] = self.inter.get(class_name, 0) + i
        self.union[class_name] = self.union.get(class_name, 0) + u
        counts = self.by_image.setdefault(str(image_id), {}).setdefault(class_name, [0, 0])
        counts[0] += i
        counts[1] += u
        self.images += 1

    def merge(self, other: ClassIoUSums) -> None:
        for c in other.inter:
            self.inter[c] = self.inter.get(c, 0) + other.inter[c]
            self.union[c] = self.union.get(c, 0) + other.union[c]
        for image_id, classes in other.by_image.items():
            mine = self.by_image.setdefault(image_id, {})
            for c, (i, u) in classes.items():
                counts = mine.setdefault(c, [0, 0])
                counts[0] += i
                counts[1] += u
        self.images += other.images

    def bootstrap(self) -> dict:
        """The resampling statistic of the per-class pooled ``miou`` over the images (`evaluation.intervals`)."""
        from instructcv_core.evaluation.intervals import PooledIoU

        return {"miou": PooledIoU({i: {c: v[0] for c, v in classes.items()} for i, classes in self.by_image.items()},
                                  {i: {c: v[1] for c, v in classes.items()} for i, classes in self.by_image.items()})}

    @staticmethod
    def _miou(inter: Mapping[str, int], union: Mapping[str, int]) -> tuple[float, dict[str, float]]:
        per_class = {c: (100.0 * inter[c] / union[c] if union[c] else math.nan) for c in inter}
        defined = [v for v in per_class.values() if not math.isnan(v)]
        return (float(np.mean(defined)) if defined else math.nan), per_class

    def compute(self, with_per_image: bool = True) -> dict:
        miou, per_class = self._miou(self.inter, self.union)
        out = {"miou": miou, "per_class": per_class, "classes": len(per_class), "images": self.images,
               "warnings": [] if not math.isnan(miou) else ["no class has a non-empty union"]}
        if with_per_image:
            out["per_image"] = {image_id: self._miou({c: v[0] for c, v in classes.items()},
                                                     {c: v[1] for c, v in classes.items()})[0]
                                for image_id, classes in self.by_image.items()}
        return out


# --------------------------------------------------------------------------------------------
# depth


class PaperDepth:
    """:func:`paper.depth_metrics` one image at a time: six floats per image are kept."""

    KEYS = ("rmse", "abs_rel", "delta1", "delta2", "delta3", "valid_fraction")

    def __init__(self):
        self.values: list[dict[str, float]] = []
        self.image_ids: list[str] = []

    def update(self, gt_image: np.ndarray, output: np.ndarray, image_id: str | None = None) -> None:
        result = paper.depth_metrics([(gt_image, output)])  # one image: its own values (the mean of one)
        self.values.append({k: result[k] for k in self.KEYS})
        self.image_ids.append(str(len(self.image_ids)) if image_id is None else str(image_id))

    def merge(self, other: PaperDepth) -> None:
        self.values += other.values
        self.image_ids += other.image_ids

    def bootstrap(self, metrics) -> dict:
        """The resampling statistics (per-image means) of ``metrics`` over the images (`evaluation.intervals`)."""
        from instructcv_core.evaluation.intervals import PerImageMean

        return {m: PerImageMean(dict(zip(self.image_ids, (r[m] for r in self.values)))) for m in metrics}

    def compute(self) -> dict:
        if not self.values:
            return paper.depth_metrics([])
        return {**{k: float(np.mean([r[k] for r in self.values])) for k in self.KEYS},
                "images": len(self.values), "warnings": []}


class StandardDepth:
    """:func:`standard.depth_metrics` one image at a time, plus the per-image ``per_image_metric`` values."""

    def __init__(self, eigen_crop: bool, per_image_metric: str = "rmse", **limits: float):
        self.eigen_crop, self.limits, self.per_image_metric = eigen_crop, limits, per_image_metric
        self.values: list[dict[str, float]] = []
        self.skipped = 0
        self.by_image: dict[str, list[float]] = {}
        self.image_ids: list[str] = []  # the image of each entry of `values`

    def update(self, image_id: str, pred_m: np.ndarray, gt_m: np.ndarray) -> None:
        result = standard.depth_metrics([(pred_m, gt_m)], eigen_crop=self.eigen_crop, **self.limits)
        values = self.by_image.setdefault(str(image_id), [])
        if result["images"] == 0:
            self.skipped += 1
            return
        self.values.append({k: result[k] for k in standard.DEPTH_METRICS})
        self.image_ids.append(str(image_id))
        values.append(result[self.per_image_metric])

    def merge(self, other: StandardDepth) -> None:
        self.values += other.values
        self.image_ids += other.image_ids
        self.skipped += other.skipped
        for image_id, values in other.by_image.items():
            self.by_image.setdefault(image_id, []).extend(values)

    def compute(self) -> dict:
        warnings = [f"{self.skipped} image(s) without a valid GT pixel skipped"] if self.skipped else []
        per_image = {k: (float(np.mean(v)) if v else math.nan) for k, v in self.by_image.items()}
        if not self.values:
            warnings.append("no image with valid GT")
            return {**{k: math.nan for k in standard.DEPTH_METRICS}, "images": 0, "skipped_images": self.skipped,
                    "eigen_crop": self.eigen_crop, "warnings": warnings, "per_image": per_image}
        return {**{k: float(np.mean([r[k] for r in self.values])) for k in standard.DEPTH_METRICS},
                "images": len(self.values), "skipped_images": self.skipped, "eigen_crop": self.eigen_crop,
                "warnings": warnings, "per_image": per_image}

    def bootstrap(self, metrics) -> dict:
        """The resampling statistics (per-image means) of ``metrics`` over the images (`evaluation.intervals`)."""
        from instructcv_core.evaluation.intervals import PerImageMean

        by_image: dict[str, dict[str, list[float]]] = {}
        for image_id, r in zip(self.image_ids, self.values):
            for m in metrics:
                by_image.setdefault(image_id, {}).setdefault(m, []).append(r[m])
        return {m: PerImageMean({i: float(np.mean(v[m])) for i, v in by_image.items()}) for m in metrics}


__all__ = ["ClassIoUSums", "ClassScoreArgmax", "PaperDepth", "PaperSegmentation", "StandardDepth",
           "StandardSegmentation"]
