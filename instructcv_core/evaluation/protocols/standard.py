"""The ``standard`` protocol: community evaluation conventions for each benchmark.

Where the ``paper`` protocol reproduces the official InstructCV scripts, this one evaluates the
same generated outputs the way the benchmarks' own literature does:

* segmentation: every class of the benchmark is queried, the per-class score maps are combined
  per pixel, and mIoU comes from a dataset-accumulated confusion matrix over all classes
  (mmsegmentation convention);
* detection: COCO AP with the post-processor's real confidence scores, no use of GT before
  matching, crowd regions ignored;
* depth: raw metric GT, valid pixels only, optional Eigen crop, BTS /
  Monocular-Depth-Estimation-Toolbox metrics;
* classification: argmax over the per-class margins;
* FSS-1000: per-class accumulated foreground IoU, mean over classes.

Units: mIoU, AP and accuracy in percent; RMSE in metres; AbsRel, SqRel, log10 and deltas as in
:func:`instructcv_core.evaluation.metrics.depth_errors` (fractions, SqRel in metres).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence

import numpy as np

from instructcv_core.evaluation.intervals import CocoAP, CocoPrecision
from instructcv_core.evaluation.metrics import ConfusionMatrix, coco_detection_ap, depth_errors
from instructcv_core.evaluation.metrics import eigen_crop as eigen_crop_mask  # depth_metrics has an eigen_crop flag

# --------------------------------------------------------------------------------------------
# segmentation

#: Default per-class score threshold: the mean-RGB value above which a pixel is "foreground"
#: (:func:`instructcv_core.tasks.segmentation.decode_segmentation`'s default).
SEG_THRESHOLD = 127.0


def ade20k_reduce_zero_label(labels: np.ndarray) -> np.ndarray:
    """ADE20K labels 0..150 -> 0..149 with 255 = ignore (mmsegmentation's ``reduce_zero_label``).

    ADE20K's 0 is "other objects" (not a class); class ``k`` (1..150) becomes ``k - 1``. Use it
    with ``num_classes=150, ignore_index=255`` and score maps keyed by ``ADE id - 1``.
    """
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() > 150):
        raise ValueError("ADE20K labels must be in 0..150")
    out = labels.astype(np.int64) - 1
    out[out < 0] = 255
    return out


def combine_class_scores(
    scores: Mapping[int, np.ndarray],
    shape: tuple[int, int],
    threshold: float = SEG_THRESHOLD,
    background: int | None = None,
) -> np.ndarray:
    """Per-class score maps -> one label map (int64 ``shape``).

    A pixel gets the class with the highest score among classes whose score is ``> threshold``;
    equal scores go to the smallest class index. Pixels where no class exceeds the threshold get
    ``background`` if given (VOC: 0), else -1 ("no class predicted", a miss).
    """
    fill = -1 if background is None else int(background)
    labels = np.full(shape, fill, dtype=np.int64)
    if not scores:
        return labels
    classes = sorted(int(c) for c in scores)
    stack = np.stack([np.asarray(scores[c], dtype=np.float32) for c in classes])
    if stack.shape[1:] != tuple(shape):
        raise ValueError(f"score maps {stack.shape[1:]} must have the GT shape {tuple(shape)}")
    best = stack.argmax(axis=0)  # first maximum = smallest class index
    best_score = np.take_along_axis(stack, best[None], axis=0)[0]
    chosen = np.asarray(classes, dtype=np.int64)[best]
    return np.where(best_score > threshold, chosen, labels)


def segmentation_miou(
    images: Iterable[tuple[Mapping[int, np.ndarray], np.ndarray]],
    num_classes: int,
    ignore_index: int | None,
    threshold: float = SEG_THRESHOLD,
    background: int | None = None,
) -> dict:
    """Standard semantic-segmentation mIoU: all classes queried, dataset-accumulated.

    ``images``: ``(scores, gt_labels)``: ``scores`` maps a class index to its float score map
    (0..255, e.g. the mean RGB of the output for "segment the <class>", resized to the GT size);
    ``gt_labels`` is the int label map ``(H, W)``. Every class of the benchmark should have been
    queried; a class missing from ``scores`` is simply never predicted (a warning says so).

    Labels are combined with :func:`combine_class_scores`, accumulated over the dataset in a
    :class:`~instructcv_core.evaluation.metrics.ConfusionMatrix`, and the mIoU is the mean per-class IoU over
    classes present in the GT or the prediction (a class predicted but absent from every GT has
    IoU 0 and counts).

    Conventions: ADE20K, 150 classes: pass labels through :func:`ade20k_reduce_zero_label`,
    ``num_classes=150, ignore_index=255``, scores keyed by ADE id - 1, ``background=None``.
    VOC: ``num_classes=21, ignore_index=255``, scores keyed 1..20, ``background=0`` (pixels no
    class claims are background, class 0).

    Returns ``miou`` and ``pixel_acc`` (percent), ``per_class_iou`` (class -> percent, NaN when
    absent from GT and prediction), ``classes_evaluated``, ``images``, the pooled counts
    ``intersection`` and ``union`` (class -> pixels, classes with a non-empty union),
    ``pixels_correct`` and ``pixels``, and ``warnings``.
    """
    matrix = ConfusionMatrix(num_classes, ignore_index)
    expected = set(range(num_classes)) - ({background} if background is not None else set())
    n_images = incomplete = 0
    for scores, gt_labels in images:
        gt = np.asarray(gt_labels)
        if gt.ndim != 2:
            raise ValueError(f"gt_labels must be (H, W), got {gt.shape}")
        bad = [c for c in scores if not 0 <= int(c) < num_classes]
        if bad:
            raise ValueError(f"score keys {bad} outside 0..{num_classes - 1}")
        if set(int(c) for c in scores) != expected:
            incomplete += 1
        matrix.update(gt, combine_class_scores(scores, gt.shape, threshold, background))
        n_images += 1
    ious = matrix.iou()
    warnings = []
    if incomplete:
        warnings.append(f"{incomplete} image(s) were not queried for every class")
    return {
        "miou": 100.0 * matrix.miou(),
        "pixel_acc": 100.0 * matrix.pixel_accuracy(),
        "per_class_iou": {c: 100.0 * float(v) for c, v in enumerate(ious)},
        "classes_evaluated": int(np.count_nonzero(~np.isnan(ious))),
        "images": n_images,
        **matrix.pooled_counts(),  # the pixel counts behind miou and pixel_acc
        "warnings": warnings,
    }


def fss_miou(samples: Iterable[tuple[str, np.ndarray, np.ndarray]]) -> dict:
    """FSS-1000 mIoU: per-class foreground IoU accumulated over the class's images, then the mean
    over classes (the convention of the FSS-1000 and few-shot segmentation literature).

    ``samples``: ``(class_name, pred_mask, gt_mask)``, bool masks at GT size. For each class,
    ``IoU = sum(|pred ∩ gt|) / sum(|pred ∪ gt|)`` over its images; a class whose union is empty
    everywhere is NaN and left out of the mean.

    Returns ``miou`` (percent), ``per_class`` (percent), ``classes``, ``images``, ``warnings``.
    """
    inter: dict[str, int] = {}
    union: dict[str, int] = {}
    n_images = 0
    for class_name, pred_mask, gt_mask in samples:
        pred = _bool(pred_mask, "pred_mask")
        gt = _bool(gt_mask, "gt_mask")
        if pred.shape != gt.shape:
            raise ValueError(f"pred {pred.shape} and gt {gt.shape} must have the same shape (resize to GT size)")
        inter[class_name] = inter.get(class_name, 0) + int(np.count_nonzero(pred & gt))
        union[class_name] = union.get(class_name, 0) + int(np.count_nonzero(pred | gt))
        n_images += 1
    per_class = {c: (100.0 * inter[c] / union[c] if union[c] else math.nan) for c in inter}
    defined = [v for v in per_class.values() if not math.isnan(v)]
    return {
        "miou": float(np.mean(defined)) if defined else math.nan,
        "per_class": per_class,
        "classes": len(per_class),
        "images": n_images,
        "warnings": [] if defined else ["no class has a non-empty union"],
    }


# --------------------------------------------------------------------------------------------
# detection


def detection_ap(
    images: Iterable[tuple[int, int, int, Sequence[tuple], Sequence[tuple]]],
    categories: Sequence[Hashable],
) -> dict:
    """COCO box AP (pycocotools, default settings) with real scores and no GT filtering.

    ``images``: ``(image_id, width, height, gt, detections)`` with ``gt`` a list of
    ``(category, (x, y, w, h), iscrowd)`` or ``(category, (x, y, w, h), iscrowd, difficult)`` and
    ``detections`` a list of
    ``(category, (x, y, w, h), score)``; ``categories`` lists every category label (names or
    ids) of the benchmark, all of which were queried. Crowd GT boxes are handled as COCO does:
    a detection on a crowd region is ignored, neither true nor false positive, and a category
    with only crowd GT is left out of the mean. VOC ``difficult`` boxes are ignored as the VOC
    convention (devkit ``VOCevalDet``) does: a detection matching one (IoU above the threshold, at
    most one detection per box) is neither a true nor a false positive, and a missed one costs
    nothing. pycocotools ignores a GT whose area is outside the evaluated area range, with the
    ordinary IoU and one match per box, so a difficult box is given area -1.

    Returns ``ap`` (AP@[.50:.95]), ``ap50``, ``ap75``, ``aps``, ``apm``, ``apl``, ``ar100`` (percent),
    ``per_category`` (label -> AP), ``images``, ``gt_boxes``, ``detections``, ``warnings``, and
    ``bootstrap``: the resampling statistics of ``ap``, ``ap50``, ``ap75`` over the images
    (:class:`~instructcv_core.evaluation.intervals.CocoAP`, keyed by ``str(image_id)``).
    """
    cat_ids = {label: k + 1 for k, label in enumerate(categories)}
    if len(cat_ids) != len(categories):
        raise ValueError("categories contain a duplicate")
    image_rows, ground_truth, dets = [], [], []
    for image_id, width, height, gt, detections in images:
        image_rows.append((int(image_id), int(width), int(height)))
        for category, bbox, iscrowd, *difficult in gt:
            row = {"image_id": int(image_id), "category_id": _cat(cat_ids, category),
                   "bbox": list(bbox), "iscrowd": int(bool(iscrowd))}
            if difficult and difficult[0]:
                row["area"] = -1.0  # outside every area range: ignored, ordinary IoU (VOC "difficult")
            ground_truth.append(row)
        for category, bbox, score in detections:
            dets.append((int(image_id), _cat(cat_ids, category), list(bbox), float(score)))
    result = coco_detection_ap(image_rows, ground_truth, dets, list(cat_ids.values()))
    labels = {v: k for k, v in cat_ids.items()}
    precision = CocoPrecision(result["evaluator"], {str(i): int(i) for i, _, _ in image_rows}, max_det=100)
    return {
        "bootstrap": {m: CocoAP(precision, iou) for m, iou in (("ap", None), ("ap50", 0.5), ("ap75", 0.75))},
        "ap": result["AP"], "ap50": result["AP50"], "ap75": result["AP75"],
        "aps": result["APs"], "apm": result["APm"], "apl": result["APl"], "ar100": result["AR100"],
        "per_category": {labels[c]: v for c, v in result["per_category"].items()},
        "images": len(image_rows),
        "gt_boxes": len(ground_truth),
        "detections": len(dets),
        "warnings": [] if dets else ["no detections: AP 0 for every category with GT"],
    }


# --------------------------------------------------------------------------------------------
# depth

DEPTH_METRICS = ("rmse", "abs_rel", "sq_rel", "log10", "rmse_log", "delta1", "delta2", "delta3")


def depth_metrics(
    samples: Iterable[tuple[np.ndarray, np.ndarray]],
    eigen_crop: bool,
    min_depth: float = 1e-3,
    max_depth: float = 10.0,
) -> dict:
    """Standard monocular-depth metrics on raw metric GT (BTS / Monocular-Depth-Estimation-Toolbox).

    ``samples``: ``(pred_m, gt_m)``: float metres at the GT size; in ``gt_m`` 0 (or any value
    outside the range) means "no measurement". Per image:

    * valid = ``min_depth < gt < max_depth`` (and inside :func:`~instructcv_core.evaluation.metrics.eigen_crop`
      when ``eigen_crop``); NaN GT is invalid;
    * the prediction is clipped to ``[min_depth, max_depth]`` (inf -> max, NaN -> min, as BTS);
    * :func:`~instructcv_core.evaluation.metrics.depth_errors` on the valid pixels.

    The metrics are averaged over images (images without a valid pixel are skipped and counted).
    Returns the eight metrics, ``images``, ``skipped_images``, ``eigen_crop``, ``warnings``.
    """
    per_image = []
    skipped = 0
    for pred_m, gt_m in samples:
        pred = np.array(pred_m, dtype=np.float64)
        gt = np.asarray(gt_m, dtype=np.float64)
        if pred.shape != gt.shape or gt.ndim != 2:
            raise ValueError(
                f"pred {pred.shape} and gt {gt.shape} must be (H, W) of the same shape (resize to GT size)"
            )
        with np.errstate(invalid="ignore"):
            valid = (gt > min_depth) & (gt < max_depth)
        if eigen_crop:
            valid &= eigen_crop_mask(gt.shape)
        if not valid.any():
            skipped += 1
            continue
        pred[np.isinf(pred)] = max_depth
        pred[np.isnan(pred)] = min_depth
        pred = np.clip(pred, min_depth, max_depth)
        per_image.append(depth_errors(pred, gt, valid))
    warnings = [f"{skipped} image(s) without a valid GT pixel skipped"] if skipped else []
    if not per_image:
        warnings.append("no image with valid GT")
        return {**{k: math.nan for k in DEPTH_METRICS}, "images": 0, "skipped_images": skipped,
                "eigen_crop": eigen_crop, "warnings": warnings}
    return {**{k: float(np.mean([r[k] for r in per_image])) for k in DEPTH_METRICS},
            "images": len(per_image), "skipped_images": skipped, "eigen_crop": eigen_crop,
            "warnings": warnings}


# --------------------------------------------------------------------------------------------
# classification


def classification_accuracy(samples: Iterable[tuple[str, Mapping[str, float]]]) -> dict:
    """Accuracy of argmax-margin classification, in percent.

    ``samples``: ``(true_class, margins)`` where ``margins[c]`` is the output of the query for
    class ``c`` scored by :func:`instructcv_core.tasks.classification.classification_margin` (> 0: nearer the
    positive colour, "present"). The predicted class is the one with the largest margin; equal
    margins go to the first class name in sorted order.

    Returns ``accuracy`` (percent), ``images``, ``correct``, ``ties``, ``warnings``.
    """
    images = correct = ties = 0
    for true_class, margins in samples:
        if not margins:
            raise ValueError("margins must name at least one class")
        names = sorted(margins)
        values = [float(margins[c]) for c in names]
        best = max(values)
        if values.count(best) > 1:
            ties += 1
        predicted = names[values.index(best)]
        correct += predicted == true_class
        images += 1
    return {
        "accuracy": 100.0 * correct / images if images else math.nan,
        "images": images,
        "correct": correct,
        "ties": ties,
        "warnings": [] if images else ["no images"],
    }


# --------------------------------------------------------------------------------------------
# helpers


def _bool(mask: np.ndarray, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise TypeError(f"{name} must be a bool mask, got {mask.dtype}")
    return mask


def _cat(cat_ids: Mapping[Hashable, int], label: Hashable) -> int:
    try:
        return cat_ids[label]
    except KeyError:
        raise ValueError(f"category {label!r} is not in categories") from None


__all__ = [
    "DEPTH_METRICS",
    "SEG_THRESHOLD",
    "ade20k_reduce_zero_label",
    "classification_accuracy",
    "combine_class_scores",
    "depth_metrics",
    "detection_ap",
    "fss_miou",
    "segmentation_miou",
]
