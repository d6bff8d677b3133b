"""95 % percentile-bootstrap confidence intervals over images, for every metric of both protocols.

The unit of resampling is the test image: a resample draws ``n`` of the ``n`` evaluated images
with replacement and recomputes the metric *the way the protocol computes it on the whole set*:

* :class:`PerImageMean`: metrics that are a mean over images (the `paper` segmentation "mIoU",
  depth errors of both protocols, classification accuracy from per-image correctness);
* :class:`PooledIoU`: metrics pooled over images, then averaged over classes (the `standard`
  segmentation mIoU from per-image class intersections and unions, FSS-1000 per-class IoU; with
  one class, a pooled ratio such as pixel accuracy);
* :class:`CocoAP`: COCO AP, AP50, AP75: pycocotools evaluates (matches) every (image, category)
  once; a resample accumulates the per-image match records of the drawn images
  (``COCOeval.evalImgs``, duplicates included) into precision (:class:`CocoPrecision`);
* :class:`MeanOf`: a mean of metrics computed on the same images (Table 3: the mean over phrasings).

Resampling is seeded and the number of resamples fixed (:data:`RESAMPLES`, :data:`SEED`), so the
same per-image values always give the same interval. Every statistic reports ``n``, the number of
images the metric is computed on. A resample whose metric is undefined (NaN, e.g. no class with
a non-empty union) is left out of the percentiles.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: Bootstrap resamples per metric, seed of the resampling and the interval's coverage.
RESAMPLES = 1000
SEED = 0
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """``n`` images; the percentile-bootstrap interval ``[low, high]`` of the metric."""

    n: int
    low: float
    high: float


def resample_indices(n: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """``(resamples, n)`` image indices drawn with replacement (numpy's PCG64, ``seed``)."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def resample_counts(indices: np.ndarray, n: int) -> np.ndarray:
    """``(resamples, n)``: how often each image is drawn in each resample."""
    b = indices.shape[0]
    flat = (indices + np.arange(b)[:, None] * n).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


class PerImageMean:
    """A metric that is the mean of per-image values (non-finite values are left out, as the protocols do)."""

    def __init__(self, values: Mapping[str, float]):
        self.values = {str(k): float(v) for k, v in values.items()}

    @property
    def images(self) -> set[str]:
        return {k for k, v in self.values.items() if math.isfinite(v)}

    def resampled(self, images: Sequence[str], indices: np.ndarray) -> np.ndarray:
        v = np.array([self.values.get(i, math.nan) for i in images], dtype=np.float64)
        valid = np.isfinite(v)
        counts = resample_counts(indices, len(images))
        total, weight = counts @ np.where(valid, v, 0.0), counts @ valid.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(weight > 0, total / np.maximum(weight, 1), np.nan)


class PooledIoU:
    """``mean over classes of sum(intersection) / sum(union)`` over the images, classes with an empty
    pooled union left out (the confusion-matrix mIoU; FSS-1000's per-class IoU). ``scale`` turns the
    fraction into the metric's unit (100 for percent)."""

    def __init__(self, intersection: Mapping[str, Mapping[Hashable, float]], union: Mapping[str, Mapping[Hashable, float]],
                 scale: float = 100.0):
        if set(intersection) != set(union):
            raise ValueError("intersection and union must name the same images")
        self.classes = sorted({c for per in union.values() for c in per}, key=str)
        column = {c: j for j, c in enumerate(self.classes)}
        self.rows: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for image in union:
            inter, uni = np.zeros(len(self.classes)), np.zeros(len(self.classes))
            for c, value in union[image].items():
                uni[column[c]] = float(value)
                inter[column[c]] = float(intersection[image].get(c, 0.0))
            self.rows[str(image)] = (inter, uni)
        self.scale = float(scale)

    @property
    def images(self) -> set[str]:
        return set(self.rows)

    def resampled(self, images: Sequence[str], indices: np.ndarray) -> np.ndarray:
        zero = np.zeros(len(self.classes))
        inter = np.stack([self.rows.get(i, (zero, zero))[0] for i in images])
        union = np.stack([self.rows.get(i, (zero, zero))[1] for i in images])
        counts = resample_counts(indices, len(images))
        pooled_i, pooled_u = counts @ inter, counts @ union  # (B, C)
        defined = pooled_u > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(defined, pooled_i / np.where(defined, pooled_u, 1.0), 0.0)
            return self.scale * iou.sum(axis=1) / defined.sum(axis=1)  # NaN where no class is defined


class CocoPrecision:
    """The COCO precision array (pycocotools ``accumulate``, area "all", ``max_det`` detections per
    image) of any list of images, from one evaluated ``COCOeval``: its per-image match records
    (``evalImgs``) are concatenated in the list's order (an image drawn twice counts twice), sorted
    by score (stable, as pycocotools) and turned into interpolated precision at the 101 recall
    thresholds. This is pycocotools' ``accumulate`` with its loops vectorised (the test suite checks
    it against ``accumulate`` itself); ``image_keys`` maps an image's name to its COCO image id."""

    def __init__(self, evaluator, image_keys: Mapping[str, int], max_det: int = 100):
        p = evaluator._paramsEval  # the parameters ``evaluate`` ran with: evalImgs is [category][area][image]
        if max_det not in evaluator.params.maxDets:
            raise ValueError(f"max_det {max_det} is not one of the evaluated maxDets {evaluator.params.maxDets}")
        self.iou_thresholds = np.asarray(p.iouThrs, dtype=np.float64)
        self.recall_thresholds = np.asarray(p.recThrs, dtype=np.float64)
        self.max_det = int(max_det)
        position = {img: i for i, img in enumerate(p.imgIds)}
        self.image_keys = {str(k): int(v) for k, v in image_keys.items() if int(v) in position}
        n_cats = len(p.catIds) if p.useCats else 1
        n_area, n_img = len(p.areaRng), len(p.imgIds)
        t = len(self.iou_thresholds)
        # per image name: per category (scores, true positives, false positives, GT not ignored) or None
        self.records: dict[str, list] = {}
        for name, img in self.image_keys.items():
            per_cat = []
            for k in range(n_cats):
                e = evaluator.evalImgs[k * n_area * n_img + position[img]]
                if e is None:
                    per_cat.append(None)
                    continue
                scores = np.asarray(e["dtScores"][: self.max_det], dtype=np.float64)
                matches = np.asarray(e["dtMatches"], dtype=np.float64).reshape(t, -1)[:, : self.max_det]
                ignored = np.asarray(e["dtIgnore"], dtype=bool).reshape(t, -1)[:, : self.max_det]
                gt_kept = int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0))
                per_cat.append((scores, (matches != 0) & ~ignored, (matches == 0) & ~ignored, gt_kept))
            self.records[name] = per_cat
        self.n_cats = n_cats
        self._cache: tuple[bytes, np.ndarray] | None = None

    @property
    def images(self) -> set[str]:
        return set(self.image_keys)

    def precision(self, images: Sequence[str]) -> np.ndarray:
        """``[T, R, K]`` precision of ``images`` (-1 where a category has no GT), as pycocotools."""
        t, r = len(self.iou_thresholds), len(self.recall_thresholds)
        out = -np.ones((t, r, self.n_cats))
        drawn = [self.records[name] for name in images if name in self.records]
        for k in range(self.n_cats):
            parts = [rec[k] for rec in drawn if rec[k] is not None]
            if not parts:
                continue
            npig = sum(part[3] for part in parts)
            if npig == 0:
                continue
            scores = np.concatenate([part[0] for part in parts])
            order = np.argsort(-scores, kind="mergesort")
            tps = np.concatenate([part[1] for part in parts], axis=1)[:, order]
            fps = np.concatenate([part[2] for part in parts], axis=1)[:, order]
            q = np.zeros((t, r))
            nd = tps.shape[1]
            if nd:
                tp, fp = np.cumsum(tps, axis=1, dtype=np.float64), np.cumsum(fps, axis=1, dtype=np.float64)
                recall = tp / npig
                precision = tp / (fp + tp + np.spacing(1))
                precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]  # the envelope
                # searchsorted(recall[t], thresholds, "left") for every t at once (recall is non-decreasing)
                inds = (recall[:, :, None] < self.recall_thresholds[None, None, :]).sum(axis=1)
                q = np.where(inds < nd, np.take_along_axis(precision, np.minimum(inds, nd - 1), axis=1), 0.0)
            out[:, :, k] = q
        return out

    def resampled(self, images: Sequence[str], indices: np.ndarray) -> np.ndarray:
        """``[B, T, R, K]``: the precision of every resample (cached for the metrics sharing it)."""
        key = np.asarray(indices).tobytes() + "|".join(images).encode()
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, np.stack([self.precision([images[i] for i in row]) for row in indices]))
        return self._cache[1]


class CocoAP:
    """COCO AP (``iou`` None: AP@[.50:.95]; 0.5: AP50; 0.75: AP75) from a :class:`CocoPrecision`,
    in percent: the mean of the precision entries that are not -1, as pycocotools' ``summarize``."""

    def __init__(self, source: CocoPrecision, iou: float | None = None):
        self.source, self.iou = source, iou

    @property
    def images(self) -> set[str]:
        return self.source.images

    def _reduce(self, precision: np.ndarray) -> float:
        if self.iou is not None:
            precision = precision[np.where(np.isclose(self.source.iou_thresholds, self.iou))[0]]
        kept = precision[precision > -1]
        return 100.0 * float(kept.mean()) if kept.size else math.nan

    def value(self, images: Sequence[str]) -> float:
        """The metric on ``images`` (a list that may repeat an image: each copy counts)."""
        return self._reduce(self.source.precision(images))

    def resampled(self, images: Sequence[str], indices: np.ndarray) -> np.ndarray:
        return np.array([self._reduce(p) for p in self.source.resampled(images, indices)])


class MeanOf:
    """The mean of several metrics computed on the same images (each resample shared by all)."""

    def __init__(self, parts: Sequence):
        self.parts = list(parts)

    @property
    def images(self) -> set[str]:
        return set().union(*(p.images for p in self.parts)) if self.parts else set()

    def resampled(self, images: Sequence[str], indices: np.ndarray) -> np.ndarray:
        values = np.stack([p.resampled(images, indices) for p in self.parts])
        with np.errstate(invalid="ignore"), _quiet_nan():
            return np.nanmean(values, axis=0)


def bootstrap_interval(statistic, resamples: int = RESAMPLES, seed: int = SEED,
                       confidence: float = CONFIDENCE) -> Interval:
    """The percentile-bootstrap interval of ``statistic`` over its images (sorted, then resampled)."""
    images = sorted(statistic.images)
    if not images:
        return Interval(0, math.nan, math.nan)
    values = statistic.resampled(images, resample_indices(len(images), resamples, seed))
    values = values[np.isfinite(values)]
    if not values.size:
        return Interval(len(images), math.nan, math.nan)
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return Interval(len(images), float(low), float(high))


def intervals(statistics: Mapping[str, Mapping[str, object]], resamples: int = RESAMPLES,
              seed: int = SEED) -> dict[str, dict[str, Interval]]:
    """protocol -> metric -> :class:`Interval` of every statistic given."""
    return {protocol: {metric: bootstrap_interval(stat, resamples, seed) for metric, stat in by_metric.items()}
            for protocol, by_metric in statistics.items()}


@contextlib.contextmanager
def _quiet_nan():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


__all__ = ["CONFIDENCE", "RESAMPLES", "SEED", "CocoAP", "CocoPrecision", "Interval", "MeanOf", "PerImageMean", "PooledIoU",
           "bootstrap_interval", "intervals", "resample_counts", "resample_indices"]
