"""Generic metric functions: mask IoU, confusion-matrix mIoU, depth errors, COCO AP, accuracy.

These are the textbook definitions, with no InstructCV-specific choices; the two evaluation
protocols in :mod:`instructcv_core.evaluation.protocols` (``paper``: faithful to the official scripts,
``standard``: community conventions) are built on them.

Conventions:

* masks are ``bool`` arrays ``(H, W)``; label maps are integer arrays ``(H, W)``;
* depth is ``float`` metres;
* boxes are ``(x, y, w, h)`` in pixel-edge coordinates, as COCO's ``bbox``;
* functions return fractions (0..1) unless their docstring says percent. The COCO AP and
  :func:`accuracy` return percent (0..100), the unit of the paper's tables.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

# --------------------------------------------------------------------------------------------
# segmentation


def binary_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """``|pred ∩ gt| / |pred ∪ gt|`` of two bool masks of the same shape.

    Returns NaN when both masks are empty (the IoU is undefined there; callers decide whether
    such a case counts). 0.0 when exactly one of them is empty.
    """
    pred = _bool_mask(pred, "pred")
    gt = _bool_mask(gt, "gt")
    if pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must have the same shape")
    union = int(np.count_nonzero(pred | gt))
    if union == 0:
        return math.nan
    return int(np.count_nonzero(pred & gt)) / union


class ConfusionMatrix:
    """Dataset-accumulated confusion matrix for semantic segmentation.

    Rows are ground-truth classes ``0..num_classes-1``; columns are predicted classes plus one
    extra "no class predicted" column. A prediction of ``-1`` means the model claimed no class for
    the pixel: it is a miss (false negative of the GT class) and no class's false positive.
    GT pixels equal to ``ignore_index`` are skipped (their prediction does not matter).

    Per class ``c``: ``TP = M[c, c]``, ``FN = row c total - TP`` (no-class column included),
    ``FP = column c total - TP``, ``IoU = TP / (TP + FP + FN)``.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None):
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        # last column: "no class predicted" (label -1)
        self.matrix = np.zeros((self.num_classes, self.num_classes + 1), dtype=np.int64)

    def update(self, gt_labels: np.ndarray, pred_labels: np.ndarray) -> None:
        """Add one image (or any batch of pixels) to the matrix.

        ``gt_labels`` and ``pred_labels`` are integer arrays of the same shape. GT values must be
        in ``0..num_classes-1`` or ``ignore_index``; predictions in ``-1..num_classes-1``.
        """
        gt = np.asarray(gt_labels)
        pred = np.asarray(pred_labels)
        if gt.shape != pred.shape:
            raise ValueError(f"gt_labels {gt.shape} and pred_labels {pred.shape} must have the same shape")
        for name, arr in (("gt_labels", gt), ("pred_labels", pred)):
            if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
                raise TypeError(f"{name} must be an integer label array, got {arr.dtype}")
        gt = gt.astype(np.int64).ravel()
        pred = pred.astype(np.int64).ravel()
        if self.ignore_index is not None:
            keep = gt != self.ignore_index
            gt, pred = gt[keep], pred[keep]
        k = self.num_classes
        if gt.size and (gt.min() < 0 or gt.max() >= k):
            bad = gt[(gt < 0) | (gt >= k)][0]
            raise ValueError(
                f"gt label {bad} outside 0..{k - 1} and not ignore_index={self.ignore_index}; "
                "remap the dataset's labels (e.g. ADE20K: reduce_zero_label) or pass ignore_index"
            )
        if pred.size and (pred.min() < -1 or pred.max() >= k):
            bad = pred[(pred < -1) | (pred >= k)][0]
            raise ValueError(f"predicted label {bad} outside -1..{k - 1}")
        col = np.where(pred < 0, k, pred)
        self.matrix += np.bincount(gt * (k + 1) + col, minlength=k * (k + 1)).reshape(k, k + 1)

    def pooled_counts(self) -> dict:
        """The pixel counts behind :meth:`miou` and :meth:`pixel_accuracy`: ``intersection`` and ``union``
        (class -> pixels, classes with a non-empty union), ``pixels_correct`` and ``pixels``. Summed over
        images they give the dataset's figures again (the resampling units of their bootstrap intervals)."""
        k = self.num_classes
        tp = np.diag(self.matrix[:, :k])
        union = self.matrix.sum(axis=1) + self.matrix[:, :k].sum(axis=0) - tp
        defined = np.flatnonzero(union)
        return {"intersection": {int(c): int(tp[c]) for c in defined}, "union": {int(c): int(union[c]) for c in defined},
                "pixels_correct": int(np.trace(self.matrix[:, :k])), "pixels": int(self.matrix.sum())}

    def iou(self) -> np.ndarray:
        """Per-class IoU (fraction), NaN for classes absent from both GT and prediction."""
        k = self.num_classes
        tp = np.diag(self.matrix[:, :k]).astype(np.float64)
        fn = self.matrix.sum(axis=1) - tp
        fp = self.matrix[:, :k].sum(axis=0) - tp
        denom = tp + fp + fn
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, tp / denom, np.nan)

    def miou(self) -> float:
        """Mean of :meth:`iou` over the classes where it is defined (``nanmean``); NaN if none."""
        ious = self.iou()
        return float(np.nanmean(ious)) if np.any(~np.isnan(ious)) else math.nan

    def pixel_accuracy(self) -> float:
        """Correctly labelled GT pixels / all counted GT pixels (no-class pixels are wrong)."""
        total = self.matrix.sum()
        if total == 0:
            return math.nan
        return float(np.trace(self.matrix[:, : self.num_classes]) / total)


# --------------------------------------------------------------------------------------------
# depth


def depth_errors(pred_m: np.ndarray, gt_m: np.ndarray, valid: np.ndarray) -> dict[str, float]:
    """Standard monocular-depth errors over the pixels where ``valid`` is True.

    With ``g`` = GT and ``p`` = prediction (metres) on the valid pixels, ``n`` of them:

    * ``rmse = sqrt(mean((g - p)^2))`` (metres), ``rmse_log = sqrt(mean((ln g - ln p)^2))``;
    * ``abs_rel = mean(|g - p| / g)``, ``sq_rel = mean((g - p)^2 / g)``;
    * ``log10 = mean(|log10 g - log10 p|)``;
    * ``delta{k} = mean(max(g / p, p / g) < 1.25^k)`` for k = 1, 2, 3 (fractions).

    Both ``g`` and ``p`` must be > 0 on valid pixels (clip predictions to a minimum depth first);
    otherwise ``ValueError``. With no valid pixel every value is NaN.
    """
    pred = np.asarray(pred_m, dtype=np.float64)
    gt = np.asarray(gt_m, dtype=np.float64)
    valid = _bool_mask(valid, "valid")
    if not pred.shape == gt.shape == valid.shape:
        raise ValueError(f"pred {pred.shape}, gt {gt.shape} and valid {valid.shape} must have the same shape")
    g = gt[valid]
    p = pred[valid]
    names = ("rmse", "abs_rel", "sq_rel", "log10", "rmse_log", "delta1", "delta2", "delta3")
    if g.size == 0:
        return {name: math.nan for name in names}
    if not (np.all(np.isfinite(g)) and np.all(g > 0)):
        raise ValueError("gt depth must be finite and > 0 on valid pixels")
    if not (np.all(np.isfinite(p)) and np.all(p > 0)):
        raise ValueError("predicted depth must be finite and > 0 on valid pixels; clip it to min_depth first")
    diff = g - p
    ratio = np.maximum(g / p, p / g)
    return {
        "rmse": float(np.sqrt(np.mean(diff**2))),
        "abs_rel": float(np.mean(np.abs(diff) / g)),
        "sq_rel": float(np.mean(diff**2 / g)),
        "log10": float(np.mean(np.abs(np.log10(g) - np.log10(p)))),
        "rmse_log": float(np.sqrt(np.mean((np.log(g) - np.log(p)) ** 2))),
        "delta1": float(np.mean(ratio < 1.25)),
        "delta2": float(np.mean(ratio < 1.25**2)),
        "delta3": float(np.mean(ratio < 1.25**3)),
    }


#: Eigen et al.'s NYUv2 crop on the 480x640 frame: rows 45..470, columns 41..600 (half-open
#: 45:471, 41:601), as in BTS and the Monocular-Depth-Estimation-Toolbox.
EIGEN_CROP_480x640 = (45, 471, 41, 601)


def eigen_crop(shape: tuple[int, ...]) -> np.ndarray:
    """Bool mask of the Eigen crop for an image of ``shape`` ``(H, W, ...)``.

    At 480x640 it is exactly rows ``45:471`` and columns ``41:601``. For other sizes each bound
    is scaled proportionally and rounded to the nearest integer with halves up
    (``floor(v + 0.5)``): ``top = round(45 / 480 * H)``, ``bottom = round(471 / 480 * H)``,
    ``left = round(41 / 640 * W)``, ``right = round(601 / 640 * W)``. Example: 240x320 gives
    rows 23:236 (22.5 and 235.5 rounded up) and columns 21:301.
    """
    height, width = int(shape[0]), int(shape[1])
    top, bottom, left, right = EIGEN_CROP_480x640
    bounds = (
        _round_half_up(top * height / 480),
        _round_half_up(bottom * height / 480),
        _round_half_up(left * width / 640),
        _round_half_up(right * width / 640),
    )
    mask = np.zeros((height, width), dtype=bool)
    mask[bounds[0] : bounds[1], bounds[2] : bounds[3]] = True
    return mask


# --------------------------------------------------------------------------------------------
# detection


def run_coco_bbox_eval(
    dataset: Mapping,
    results: Sequence[Mapping],
    max_dets: Sequence[int] = (1, 10, 100),
    cat_ids: Sequence[int] | None = None,
) -> COCOeval:
    """pycocotools ``COCOeval`` (bbox) on an in-memory GT dataset and result list, silenced.

    ``dataset`` is a COCO-format dict (``images``, ``annotations``, ``categories``) used as given:
    annotation ids are NOT checked (pycocotools treats a GT with id 0 as never matched, a quirk
    the ``paper`` protocol reproduces on purpose). ``results`` are COCO result dicts
    (``image_id``, ``category_id``, ``bbox``, ``score``); an empty list is allowed (pycocotools'
    ``loadRes`` would raise IndexError on it), every category then scores AP 0.

    Runs ``evaluate``, ``accumulate`` and ``summarize`` with ``params.maxDets = max_dets`` and
    returns the evaluator (``stats`` holds the 12 summary numbers as fractions; -1 means "no GT").
    """
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):
        coco_gt = COCO()
        coco_gt.dataset = _copy_dataset(dataset)
        coco_gt.createIndex()
        if results:
            coco_dt = coco_gt.loadRes([dict(r) for r in results])
        else:
            coco_dt = COCO()
            coco_dt.dataset = {
                "images": list(coco_gt.dataset["images"]),
                "annotations": [],
                "categories": list(coco_gt.dataset["categories"]),
            }
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        if cat_ids is not None:
            evaluator.params.catIds = list(cat_ids)
        evaluator.params.imgIds = sorted(coco_gt.getImgIds())
        evaluator.params.maxDets = list(max_dets)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def coco_detection_ap(
    images: Iterable[tuple[int, int, int]],
    ground_truth: Iterable[Mapping],
    detections: Iterable[tuple[int, int, Sequence[float], float]],
    categories: Iterable[int],
) -> dict:
    """COCO box AP with pycocotools, in memory (no files, no prints), in percent.

    * ``images``: ``(image_id, width, height)``;
    * ``ground_truth``: dicts with ``image_id``, ``category_id``, ``bbox`` ``(x, y, w, h)``,
      ``iscrowd`` (0/1; crowd boxes are matched but neither rewarded nor penalised), optional
      ``area`` (default ``w * h``) and optional ``id`` (default 1, 2, ...; ids must be >= 1
      because pycocotools treats id 0 as "unmatched");
    * ``detections``: ``(image_id, category_id, bbox, score)``;
    * ``categories``: the category ids evaluated.

    Returns ``AP`` (AP@[.50:.05:.95]), ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl`` (all at 100
    detections per image) and ``AR100``, each in percent; ``per_category`` maps category id to
    its AP; ``evaluator`` is the ``COCOeval`` itself. Categories without any non-crowd GT get COCOeval's -1 and are excluded from the
    means; a value is NaN when no category has GT. No detections at all gives AP 0 (not a crash).
    Settings are pycocotools' defaults (maxDets 1/10/100, COCO area ranges).
    """
    image_rows = [(int(i), int(w), int(h)) for i, w, h in images]
    image_ids = {i for i, _, _ in image_rows}
    if len(image_ids) != len(image_rows):
        raise ValueError("images contain a duplicated image_id")
    cat_ids = [int(c) for c in categories]
    if len(set(cat_ids)) != len(cat_ids):
        raise ValueError("categories contain a duplicated id")
    cat_set = set(cat_ids)

    annotations = []
    used_ids: set[int] = set()
    for n, g in enumerate(ground_truth, start=1):
        x, y, w, h = (float(v) for v in g["bbox"])
        ann_id = int(g.get("id", n))
        if ann_id < 1:
            raise ValueError(f"ground-truth id {ann_id}: ids must be >= 1 (pycocotools never matches id 0)")
        if ann_id in used_ids:
            raise ValueError(f"ground-truth id {ann_id} is used twice")
        used_ids.add(ann_id)
        _check_ids(int(g["image_id"]), int(g["category_id"]), image_ids, cat_set, "ground truth")
        annotations.append({
            "id": ann_id,
            "image_id": int(g["image_id"]),
            "category_id": int(g["category_id"]),
            "bbox": [x, y, w, h],
            "area": float(g["area"]) if g.get("area") is not None else w * h,
            "iscrowd": int(bool(g.get("iscrowd", 0))),
        })
    results = []
    for image_id, category_id, bbox, score in detections:
        _check_ids(int(image_id), int(category_id), image_ids, cat_set, "detection")
        results.append({
            "image_id": int(image_id),
            "category_id": int(category_id),
            "bbox": [float(v) for v in bbox],
            "score": float(score),
        })
    dataset = {
        "images": [{"id": i, "width": w, "height": h, "file_name": f"{i}.jpg"} for i, w, h in image_rows],
        "annotations": annotations,
        "categories": [{"id": c, "name": str(c), "supercategory": "none"} for c in cat_ids],
    }
    evaluator = run_coco_bbox_eval(dataset, results, max_dets=(1, 10, 100), cat_ids=cat_ids)
    stats = evaluator.stats
    out = {
        "AP": _percent(stats[0]),
        "AP50": _percent(stats[1]),
        "AP75": _percent(stats[2]),
        "APs": _percent(stats[3]),
        "APm": _percent(stats[4]),
        "APl": _percent(stats[5]),
        "AR100": _percent(stats[8]),
    }
    out["per_category"] = per_category_ap(evaluator)
    out["evaluator"] = evaluator  # evaluated and accumulated: per-image match records for resampling
    return out


def per_category_ap(evaluator: COCOeval, max_det: int = 100) -> dict[int, float]:
    """AP@[.50:.95] per category in percent (area "all", ``max_det`` detections per image, which
    must be one of ``params.maxDets``); NaN for a category without GT."""
    precision = evaluator.eval["precision"]  # [T, R, K, A, M]
    m = list(evaluator.params.maxDets).index(max_det)
    out = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        values = precision[:, :, k, 0, m]
        values = values[values > -1]
        out[int(cat_id)] = float(values.mean() * 100) if values.size else math.nan
    return out


# --------------------------------------------------------------------------------------------
# classification


def accuracy(correct: Iterable[bool]) -> float:
    """Percentage of True values (0..100); NaN for an empty sequence."""
    values = [bool(c) for c in correct]
    if not values:
        return math.nan
    return 100.0 * sum(values) / len(values)


# --------------------------------------------------------------------------------------------
# helpers


def _bool_mask(mask: np.ndarray, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise TypeError(f"{name} must be a bool mask, got {mask.dtype}")
    return mask


def _round_half_up(v: float) -> int:
    return int(math.floor(v + 0.5))


def _percent(stat: float) -> float:
    return math.nan if stat < 0 else float(stat) * 100.0


def _check_ids(image_id: int, category_id: int, image_ids: set, cat_ids: set, what: str) -> None:
    if image_id not in image_ids:
        raise ValueError(f"{what} refers to image_id {image_id}, which is not in images")
    if category_id not in cat_ids:
        raise ValueError(f"{what} refers to category_id {category_id}, which is not in categories")


def _copy_dataset(dataset: Mapping) -> dict:
    return {
        "images": [dict(i) for i in dataset["images"]],
        "annotations": [dict(a) for a in dataset["annotations"]],
        "categories": [dict(c) for c in dataset["categories"]],
    }


__all__ = [
    "EIGEN_CROP_480x640",
    "ConfusionMatrix",
    "accuracy",
    "binary_iou",
    "coco_detection_ap",
    "depth_errors",
    "eigen_crop",
    "per_category_ap",
    "run_coco_bbox_eval",
]
