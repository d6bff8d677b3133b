"""The ``paper`` protocol: the official InstructCV evaluation, reproduced with its flaws.

Every function here computes what the official scripts (AlaaLab/InstructCV, ``evaluate/``)
compute, on plain-numpy inputs instead of folders of files. Each docstring names the official
file and function and lists the quirks it reproduces; ``docs/protocols.md`` says what each quirk
does to the number and how the ``standard`` protocol does it instead. Where the official script
would crash, these functions return a result and add a line to ``warnings`` saying what the
official script would have done.

Units: mIoU, mAP and accuracy in percent (0..100, as the paper's tables); RMSE in metres;
AbsRel and the deltas as fractions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
from PIL import Image

from instructcv_core.evaluation.intervals import CocoAP, CocoPrecision
from instructcv_core.evaluation.metrics import per_category_ap, run_coco_bbox_eval

# --------------------------------------------------------------------------------------------
# segmentation

#: ``calc_iou``'s epsilon (official ``evaluate/evaluate_cls_seg_det.py``: ``epsilon = 1e-6``).
#: It is added to intersection and union *sums of 0/255-valued masks*, i.e. to 255 x pixel counts.
SEG_EPSILON = 1e-6


def official_mask_iou(pred_mask: np.ndarray, gt_mask: np.ndarray, gt_threshold: int = 0) -> float:
    """IoU of one (image, class) pair as the official ``calc_iou`` computes it (a fraction).

    1. The GT mask (bool, original size) becomes a 0/255 uint8 image and is resized to the
       prediction's size ``(w, h)`` with PIL bilinear (the official code calls torchvision's
       ``Resize`` on a PIL image, which is PIL's bilinear resize).
    2. GT foreground = resized value ``> gt_threshold`` (0 in the version the reference describes;
       one historical version, commit b569baa, used ``> 10``).
    3. Prediction foreground = ``pred_mask`` (the caller decodes it: the official rule is channel 0
       of the cv2-read image, i.e. blue, ``> 10``, at the generation size).
    4. ``IoU = (255 |A ∩ B| + 1e-6) / (255 |A ∪ B| + 1e-6)``: the official sums 0/255 values, so
       the epsilon is tiny relative to the counts, but it makes an empty GT with an empty
       prediction score 1.0 (not NaN).

    Quirk not reproduced: the official ``Resize([w, h])`` passes the size transposed
    (torchvision reads ``[height, width]``), so any non-square prediction makes the official
    script crash on a shape mismatch. Here the size order is correct.
    Pillow >= 13 may run the vertical resize pass first; against Pillow <= 12 (the authors'
    2023 setup) this moves IoUs by up to about 0.001.
    """
    pred = _bool(pred_mask, "pred_mask")
    gt = _bool(gt_mask, "gt_mask")
    if pred.ndim != 2 or gt.ndim != 2:
        raise ValueError(f"masks must be (H, W); got pred {pred.shape}, gt {gt.shape}")
    h, w = pred.shape
    gt_image = Image.fromarray(gt.astype(np.uint8) * 255)  # mode "L"
    if gt_image.size != (w, h):
        gt_image = gt_image.resize((w, h), Image.Resampling.BILINEAR)
    gt_fg = np.asarray(gt_image) > gt_threshold
    intersection = 255 * int(np.count_nonzero(gt_fg & pred))
    union = 255 * int(np.count_nonzero(gt_fg | pred))
    return (intersection + SEG_EPSILON) / (union + SEG_EPSILON)


def segmentation_miou(
    samples: Iterable[tuple[str, str, np.ndarray | None, np.ndarray]], gt_threshold: int = 0
) -> dict:
    """The official segmentation "mIoU" (ADE20K, VOC): a per-image mean of per-class IoUs.

    Official: ``evaluate/evaluate_cls_seg_det.py``, ``calc_iou`` and ``__main__``; the classes
    come from ``infer/edit_cli_seg.py``, which queries only the classes present in the GT.

    ``samples``: ``(image_key, category, pred_mask, gt_mask)``, one per queried (image, class);
    ``pred_mask`` is bool ``(h, w)`` at the generation size (``None`` = no prediction file, which
    the official loop skips), ``gt_mask`` bool ``(H, W)`` at the original size.

    Quirks reproduced:

    * only the (image, class) pairs the caller passes count; the official queries GT-present
      classes only, so a class the model hallucinates in an image never costs anything;
    * per-pair IoU of :func:`official_mask_iou` (GT resized to the prediction size, epsilon on
      0/255 sums, empty vs empty = 1.0);
    * "mIoU" = mean over images of the mean IoU over that image's pairs, not the dataset-
      accumulated per-class IoU; an image whose pairs all lack a prediction gives NaN and is
      skipped (``skipped_nan_images``);
    * a repeated (image, class) overwrites the earlier one (a dict assignment in the official).

    Not reproduced by default: with VOC folder names the official parser takes the *class* as
    the image key (see :func:`official_voc_image_key`); pass such keys yourself to reproduce it.

    Returns ``miou`` (percent), ``per_image`` (percent), ``images``, ``pairs``,
    ``missing_predictions``, ``skipped_nan_images``, ``overwritten_pairs``, ``warnings``.
    """
    per_pair: dict[str, dict[str, float]] = {}
    pairs = missing = overwritten = 0
    for image_key, category, pred_mask, gt_mask in samples:
        pairs += 1
        ious = per_pair.setdefault(str(image_key), {})
        if pred_mask is None:
            missing += 1
            continue
        if category in ious:
            overwritten += 1
        ious[category] = official_mask_iou(pred_mask, gt_mask, gt_threshold)
    return miou_of_pair_ious(per_pair, pairs, missing, overwritten)


def miou_of_pair_ious(per_pair: dict[str, dict[str, float]], pairs: int, missing: int, overwritten: int) -> dict:
    """The official per-image mean of (image, class) IoUs, then the mean over images (NaN images skipped,
    as the official loop does); shared by :func:`segmentation_miou` and the streaming reducer."""
    per_image: dict[str, float] = {}
    skipped = 0
    for key, ious in per_pair.items():
        if not ious:  # np.mean([]) is NaN; the official loop skips NaN images
            skipped += 1
            continue
        per_image[key] = float(np.mean(list(ious.values())))
    warnings = []
    if not per_image:
        warnings.append("no image has a prediction: the official script prints 'the mIoU is nan'")
    miou = 100.0 * float(np.mean(list(per_image.values()))) if per_image else math.nan
    return {
        "miou": miou,
        "per_image": {k: 100.0 * v for k, v in per_image.items()},
        "images": len(per_image),
        "pairs": pairs,
        "missing_predictions": missing,
        "skipped_nan_images": skipped,
        "overwritten_pairs": overwritten,
        "warnings": warnings,
    }


def fss_miou(samples: Iterable[tuple[str, str, np.ndarray | None, np.ndarray]], gt_threshold: int = 0) -> dict:
    """FSS-1000 "mIoU" (paper Table 2), computed as :func:`segmentation_miou`.

    The official FSS-1000 evaluation script is missing at HEAD (``edit_cli.py`` imports a
    ``seg_fs1000`` module that does not exist). A deleted ``evaluate/evaluate_seg_fs1000.py``
    gave every folder its own image key (so the mean is over samples), computed the IoU on raw
    pixel values with bitwise ``&``/``|`` and had its final print commented out; it cannot be the
    script behind the table. We apply the ADE20K/VOC rule: with one (image, class) sample per FSS
    image it is the mean over samples of :func:`official_mask_iou`.
    """
    return segmentation_miou(samples, gt_threshold=gt_threshold)


def official_seg_folder_fields(folder_name: str) -> tuple[str, str]:
    """``(image_key, class)`` as the official segmentation ``__main__`` parses a folder name.

    It splits on ``_`` and takes field 2 as the image key and the second-to-last field as the
    class: ``ADE_val_00000001.jpg_wall_seg`` -> ``("00000001.jpg", "wall")``.
    """
    parts = folder_name.split("_")
    if len(parts) < 3:
        raise ValueError(f"{folder_name!r}: the official parser needs at least 3 '_'-separated fields")
    return parts[2], parts[-2]


def official_voc_image_key(folder_name: str) -> str:
    """The image key the official segmentation parser takes from a folder name (field 2).

    For VOC folders (``2007_000033_cat_seg``, written by ``genGT.generate_voc_gt``) field 2 is the
    *class*, so every folder of a class lands under one "image" and, the class being the same,
    each overwrites the previous: the official VOC "mIoU" is the mean over classes of the IoU of
    the last-listed folder of each class. :func:`segmentation_miou` does not do this unless the
    caller passes these keys.
    """
    return official_seg_folder_fields(folder_name)[0]


# --------------------------------------------------------------------------------------------
# detection

#: IoU a predicted box must exceed (strictly) to pass the official GT filter.
DET_FILTER_IOU = 0.5
#: Image size the official COCO json claims for every image (unused by bbox COCOeval).
DET_IMAGE_SIZE = 512
#: ``params.maxDets`` of the official ``Evaluate_AR.Eval.evaluate``.
DET_MAX_DETS = (100, 300, 1000)
#: ``CLASSES_COCO`` of the official builders (``build_data/format_dataset_fp.py``; ``Evaluate_AR.py`` and
#: ``Evaluate_AR_voc.py`` import it from ``dataset_creation.format_dataset``). ``Eval.evaluate`` keeps
#: only the categories whose names are in it (``coco_gt.getCatIds(catNms=CLASSES_COCO)``), on VOC too.
OFFICIAL_COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)


def official_category_filter(categories: Iterable[str], names: Sequence[str] = OFFICIAL_COCO_CLASSES) -> list[str]:
    """The categories the official COCOeval keeps: those whose name is in ``names`` (exact match,
    as ``COCO.getCatIds(catNms=...)``). On VOC this drops aeroplane, diningtable, motorbike,
    pottedplant, sofa and tvmonitor (COCO spells them airplane, dining table, motorcycle, potted
    plant, couch, tv)."""
    keep = set(names)
    return [c for c in categories if c in keep]


def official_folder_tag(task_name: str) -> str | None:
    """The field that marks a task's folders in the official scripts' layout (``det`` for detection),
    as the task's module declares it (``official_folder_tag``; None where the official scripts read no
    per-category folders of the task)."""
    from instructcv_core.tasks import task

    return task(task_name).official_folder_tag


def official_det_folder_fields(folder_name: str) -> tuple[str, str]:
    """``(image, category)`` of a detection folder name, as ``imgname, clsname, _ = name.split('_')``.

    The official evaluation reads folders ``{image_id}_{category}_det`` (written by
    ``genGT.generate_coco_gt``; the tag ``det`` is the detection task's :func:`official_folder_tag`).
    The training builders' layout ``{image_id}_det_{category}`` is accepted too and read the same way.
    Any other number of ``_``-separated fields raises ``ValueError``, as the official unpacking does
    (a category name must not contain ``_``).
    """
    tag = official_folder_tag("detection")
    parts = folder_name.split("_")
    if len(parts) == 3 and parts[2] == tag:
        return parts[0], parts[1]
    if len(parts) == 3 and parts[1] == tag:
        return parts[0], parts[2]
    raise ValueError(
        f"{folder_name!r}: expected '{{image_id}}_{{category}}_det' (three '_'-separated fields; "
        "replace '_' inside names)"
    )


def gt_filter_iou(gt_box: Sequence[float], pred_box: Sequence[float]) -> float:
    """IoU of two ``(x1, y1, x2, y2)`` boxes as the official ``cal_bboxes_iou`` computes it.

    Areas get +1 pixel per side, ``(x2 - x1 + 1) * (y2 - y1 + 1)``, but the intersection does not,
    ``max(0, xx2 - xx1) * max(0, yy2 - yy1)``; ``IoU = inter / (area1 + area2 - inter + 1e-6)``.
    So an exact copy of a box scores below 1, and a box 2 px wide or high can never exceed 0.5.
    """
    xmin1, ymin1, xmax1, ymax1 = gt_box
    xmin2, ymin2, xmax2, ymax2 = pred_box
    area1 = (xmax1 - xmin1 + 1) * (ymax1 - ymin1 + 1)
    area2 = (xmax2 - xmin2 + 1) * (ymax2 - ymin2 + 1)
    inter = max(0, min(xmax1, xmax2) - max(xmin1, xmin2)) * max(0, min(ymax1, ymax2) - max(ymin1, ymin2))
    return inter / (area1 + area2 - inter + 1e-6)


def gt_filter(
    gt_boxes: Sequence[Sequence[float]], pred_boxes: Sequence[Sequence[float]], min_iou: float = DET_FILTER_IOU
) -> list[list[float]]:
    """The official GT filter (``cal_bboxes_iou``): the predictions that survive, in GT order.

    For each GT box in turn, the predicted box with the highest :func:`gt_filter_iou` (the first
    one on ties) is appended if that IoU is ``> min_iou``. Unmatched predictions are dropped, so
    false positives disappear; a prediction that is best for two GT boxes is appended twice.
    Empty predicted boxes (``[]``) are skipped, as the official does. This uses the test labels.
    """
    kept: list[list[float]] = []
    for gt_box in gt_boxes:
        best_j, best_iou = -1, -math.inf
        for j, pred_box in enumerate(pred_boxes):
            if len(pred_box) == 0:
                continue
            iou = gt_filter_iou(gt_box, pred_box)
            if iou > best_iou:  # strict: the first of equal IoUs wins, as a stable sort does
                best_j, best_iou = j, iou
        if best_j >= 0 and best_iou > min_iou:
            kept.append(list(pred_boxes[best_j]))
    return kept


def detection_map(
    folders: Iterable[tuple[str, Sequence[Sequence[float]], Sequence[Sequence[float]]]],
    filter_iou: float = DET_FILTER_IOU,
    category_names: Sequence[str] | None = OFFICIAL_COCO_CLASSES,
) -> dict:
    """The official detection "mAP" (COCO, VOC): GT-filtered boxes, score 1, COCOeval.

    Official: ``evaluate/Evaluate_AR.py`` (``Eval.evaluate``, ``deal_predjson``,
    ``deal_annojson``) with ``cal_bboxes_iou`` from ``evaluate/evaluate_cls_seg_det.py``.

    ``folders``: ``(folder_name, gt_boxes, pred_boxes)``, one per (image, queried category), boxes
    ``(x1, y1, x2, y2)``; ``folder_name`` as in :func:`official_det_folder_fields`. Crowd boxes
    belong in ``gt_boxes``: the official counts them as normal GT.

    Quirks reproduced:

    * GT filter (:func:`gt_filter`): per GT box, the best prediction by the +1-area IoU is kept
      only if its IoU is > 0.5 (``filter_iou``); all else is discarded (a test-label leak; some
      historical versions used 0.2);
    * every kept box gets score 1;
    * the COCO json is rebuilt from the folders, processed in sorted name order (the official
      used ``os.listdir`` order, which is arbitrary): image and category ids in order of first
      appearance from 0, width and height 512, crowd boxes as ``iscrowd`` 0, GT annotation ids
      from **0**. pycocotools treats a match to GT id 0 as no match, so the detection matched
      to the first GT box is a false positive and that GT is never recalled (two perfect boxes
      in one folder score 25.5 / 101 = 25.25, not 100). With all scores equal, the order fixes
      the ids and the ranking of ties, so the number depends on the folder order;
    * COCOeval bbox, IoU .50:.05:.95, ``maxDets = (100, 300, 1000)``; ``map`` is ``stats[0]``
      (AP@[.50:.95] at 100 detections, the summary default), ``map50`` is ``stats[1]``
      (AP@.50 at 1000 detections). The paper's table header says mAP@0.5; the official
      script's headline (first summary line) is ``stats[0]``;
    * folder names containing ``.`` are skipped (``if '.' in file: continue``), with a warning.

    * only categories whose name is in ``category_names`` are evaluated (official
      ``cocoEval.params.catIds = coco_gt.getCatIds(catNms=CLASSES_COCO)``, default
      :data:`OFFICIAL_COCO_CLASSES`; ``None`` keeps every category). The others still get ids and
      GT in the json but count in no AP; they are listed in ``dropped_categories``.

    Crashes of the official turned into warnings: a folder with an empty GT list (official:
    no ``pred_bbox2.json`` is written for it, ``deal_predjson`` raises FileNotFoundError; here
    its image and category are registered and it adds no box), and no box surviving the filter
    (official: pycocotools ``loadRes`` raises IndexError; here every category with GT has AP 0).

    Returns ``map``, ``map50`` (percent), ``per_category`` (AP@[.50:.95] by name, percent),
    ``folders``, ``images``, ``categories``, ``gt_boxes``, ``pred_boxes``, ``kept_boxes``,
    ``empty_gt_folders``, ``dropped_categories``, ``warnings``, and ``bootstrap``: the resampling
    statistics of ``map`` and ``map50`` over the images (:class:`~instructcv_core.evaluation.intervals.CocoAP`).
    """
    rows = []
    seen: set[str] = set()
    warnings: list[str] = []
    for name, gt_boxes, pred_boxes in folders:
        if name in seen:
            raise ValueError(f"folder {name!r} appears twice")
        seen.add(name)
        if "." in name:  # deal_annojson / deal_predjson: `if '.' in file: continue`
            warnings.append(f"{name}: a name containing '.' is skipped by the official json builders")
            continue
        image, category = official_det_folder_fields(name)
        rows.append((name, image, category, [list(b) for b in gt_boxes], [list(b) for b in pred_boxes]))
    rows.sort(key=lambda row: row[0])

    image_ids: dict[str, int] = {}
    category_ids: dict[str, int] = {}
    annotations: list[dict] = []
    results: list[dict] = []
    n_pred = empty_gt = 0
    for name, image, category, gt_boxes, pred_boxes in rows:
        image_id = image_ids.setdefault(image, len(image_ids))
        category_id = category_ids.setdefault(category, len(category_ids))
        n_pred += len(pred_boxes)
        if not gt_boxes:
            empty_gt += 1
            warnings.append(
                f"{name}: empty GT list; the official cal_bboxes_iou writes no pred_bbox2.json for it "
                "and deal_predjson raises FileNotFoundError; here it adds no box"
            )
            continue
        for x1, y1, x3, y3 in gt_boxes:
            w, h = x3 - x1, y3 - y1
            annotations.append({
                "id": len(annotations),  # official bbox_id starts at 0
                "image_id": image_id,
                "category_id": category_id,
                "iscrowd": 0,
                "area": w * h,
                "bbox": [x1, y1, w, h],
                "segmentation": [[x1, y1, x3, y1, x3, y3, x1, y3]],
            })
        for x1, y1, x3, y3 in gt_filter(gt_boxes, pred_boxes, filter_iou):
            results.append({"image_id": image_id, "category_id": category_id,
                            "bbox": [x1, y1, x3 - x1, y3 - y1], "score": 1})

    counts = {
        "folders": len(rows),
        "images": len(image_ids),
        "categories": len(category_ids),
        "gt_boxes": len(annotations),
        "pred_boxes": n_pred,
        "kept_boxes": len(results),
        "empty_gt_folders": empty_gt,
    }
    evaluated = (list(category_ids) if category_names is None
                 else official_category_filter(category_ids, category_names))
    counts["dropped_categories"] = sorted(set(category_ids) - set(evaluated))
    if counts["dropped_categories"]:
        warnings.append(f"categories not in the official COCO name list, left out of the mAP as the official "
                        f"getCatIds(catNms=CLASSES_COCO) does: {', '.join(counts['dropped_categories'])}")
    if not rows:
        return {"map": math.nan, "map50": math.nan, "per_category": {}, **counts,
                "warnings": [*warnings, "no folders: nothing to evaluate"]}
    if not evaluated:
        return {"map": math.nan, "map50": math.nan, "per_category": {}, **counts,
                "warnings": [*warnings, "no category is in the official name list: the official COCOeval "
                                        "evaluates no category (every summary value -1)"]}
    if not results:
        warnings.append(
            "no predicted box survived the GT filter: the official Evaluate_AR raises IndexError in "
            "pycocotools loadRes; here every category with GT scores AP 0"
        )
    dataset = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": DET_IMAGE_SIZE, "height": DET_IMAGE_SIZE}
                   for i in image_ids.values()],
        "annotations": annotations,
        "categories": [{"id": c, "name": n, "supercategory": "None"} for n, c in category_ids.items()],
    }
    evaluator = run_coco_bbox_eval(dataset, results, max_dets=DET_MAX_DETS,
                                   cat_ids=[category_ids[c] for c in evaluated])
    names = {c: n for n, c in category_ids.items()}
    per_category = {names[c]: ap for c, ap in per_category_ap(evaluator, max_det=100).items()}
    return {
        "bootstrap": {"map": CocoAP(CocoPrecision(evaluator, image_ids, 100)),
                      "map50": CocoAP(CocoPrecision(evaluator, image_ids, DET_MAX_DETS[-1]), 0.5)},
        "map": _percent(evaluator.stats[0]),
        "map50": _percent(evaluator.stats[1]),
        "per_category": per_category,
        **counts,
        "warnings": warnings,
    }


# --------------------------------------------------------------------------------------------
# depth

#: Metres that the 8-bit level 255 stands for (official: ``* 10 / 255``).
DEPTH_SCALE_M = 10.0


def official_depth_errors(gt_m: np.ndarray, pred_m: np.ndarray) -> dict[str, float]:
    """``compute_errors`` of the official ``evaluate/evaluate_depes.py`` (HEAD) on one image.

    At HEAD (since commit b402562) the function is declared ``compute_errors(pred, gt)`` and
    ``__main__`` calls it as ``compute_errors(pred, gt)``, so AbsRel is divided by the ground truth.
    (Up to commit 420a3da it was declared ``(gt, pred)`` and called ``(pred, gt)``: that swap, which
    divided by the prediction, is gone.) With ``p`` = prediction, ``g`` = GT (metres):

    * ``flag = 1 & uint8(g) & uint8(p)`` (bitwise, metres truncated): 1 only where ``floor(p)``
      and ``floor(g)`` are both odd; ``p' = flag * p``, ``g' = flag * g``;
    * masked pixels (``g' == 0``, which happens exactly where ``flag == 0``) become 1 in both
      arrays, ratio 1 and error 0: they count as perfect in every mean below, which runs over
      *all* pixels;
    * ``delta_k = mean(max(g'/p', p'/g') < 1.25^k)``, ``abs_rel = mean(|g' - p'| / g')``,
      ``rmse = sqrt(mean((g' - p')^2))`` (masked pixels contribute 0).

    Also returns ``valid_fraction``, the share of pixels the mask keeps.
    """
    gt = np.asarray(gt_m, dtype=np.float64)
    pred = np.asarray(pred_m, dtype=np.float64)
    if gt.shape != pred.shape:
        raise ValueError(f"gt {gt.shape} and pred {pred.shape} must have the same shape")
    flag = np.bitwise_and(np.ones(gt.shape, dtype=np.uint8), gt.astype(np.uint8))
    flag = np.bitwise_and(flag, pred.astype(np.uint8))
    gt_new = flag * gt
    pred_new = flag * pred
    mask = (np.abs(gt_new) <= 10e-4).astype(np.float64)
    gt_nz = mask + gt_new
    pred_nz = mask + pred_new
    thresh = np.maximum(gt_nz / pred_nz, pred_nz / gt_nz)
    return {
        "rmse": float(np.sqrt(np.mean((gt_new - pred_new) ** 2))),
        "abs_rel": float(np.mean(np.abs(gt_nz - pred_nz) / gt_nz)),
        "delta1": float(np.mean(thresh < 1.25)),
        "delta2": float(np.mean(thresh < 1.25**2)),
        "delta3": float(np.mean(thresh < 1.25**3)),
        "valid_fraction": float(np.mean(flag)),
    }


def official_gt_metres(level: np.ndarray) -> np.ndarray:
    """The GT in metres in the official order of operations: ``gt / 255 * 10`` (``__main__``).

    Not ``gt * 10 / 255``: the two differ by one ulp for some levels, which flips the delta
    thresholds at exact 5:4 and 125:64 level ratios (GT 36, output 45: ``45*10/255`` divided by
    ``36/255*10`` is exactly 1.25, not below it, so delta1 = 0).
    """
    return np.asarray(level, dtype=np.float64) / 255 * DEPTH_SCALE_M


def official_pred_metres(level: np.ndarray) -> np.ndarray:
    """The prediction in metres in the official order of operations: ``pred * 10 / 255``."""
    return np.asarray(level, dtype=np.float64) * DEPTH_SCALE_M / 255


def depth_metrics(samples: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict:
    """The official depth evaluation (NYUv2, SUN RGB-D), flaws included.

    Official: ``evaluate/evaluate_depes.py`` (``read_gt_img``, ``read_pred_img``,
    ``compute_errors``, ``__main__``).

    ``samples``: ``(gt_image, output)``: the 8-bit encoded target at original size (uint8
    ``(H, W, 3)`` or ``(H, W)``) and the generated image (uint8 ``(h, w, 3)``).

    Quirks reproduced:

    * the GT is the 8-bit target, not raw depth: ``g = channel0 / 255 * 10`` (3.9 cm levels,
      everything beyond 10 m clipped by the encoding, 0 = missing depth kept as 0 m);
    * the output is resized to the GT size with PIL bilinear (torchvision ``Resize`` on a PIL
      image), then ``p = channel0 * 10 / 255`` (red; no channel averaging); each in the official
      order of operations (:func:`official_gt_metres`, :func:`official_pred_metres`);
    * no Eigen crop, no depth cap, no scale alignment;
    * the odd-metre validity mask and "masked = perfect" rule of :func:`official_depth_errors`,
      AbsRel divided by the ground truth (HEAD's ``compute_errors(pred, gt)``);
    * per-image RMSE, AbsRel and deltas, averaged over images.

    Returns ``rmse`` (metres), ``abs_rel``, ``delta1``, ``delta2``, ``delta3`` (fractions),
    ``valid_fraction`` (mean share of pixels the mask keeps), ``images``, ``warnings``.
    """
    per_image: list[dict[str, float]] = []
    for gt_image, output in samples:
        gt_level = _channel0(gt_image, "gt_image")
        height, width = gt_level.shape
        out = np.asarray(output)
        if out.dtype != np.uint8 or out.ndim != 3 or out.shape[2] < 3:
            raise ValueError(f"output must be uint8 (h, w, 3), got {out.dtype} {out.shape}")
        out = out[:, :, :3]
        if out.shape[:2] != (height, width):
            out = np.asarray(Image.fromarray(out).resize((width, height), Image.Resampling.BILINEAR))
        per_image.append(official_depth_errors(official_gt_metres(gt_level), official_pred_metres(out[:, :, 0])))
    keys = ("rmse", "abs_rel", "delta1", "delta2", "delta3", "valid_fraction")
    if not per_image:
        return {**{k: math.nan for k in keys}, "images": 0,
                "warnings": ["no samples: the official script raises NameError (rmse_mean never assigned)"]}
    return {**{k: float(np.mean([r[k] for r in per_image])) for k in keys},
            "images": len(per_image), "warnings": []}


# --------------------------------------------------------------------------------------------
# classification

#: The classification instruction of the official inference (``infer/edit_cli_cls.py``, historical
#: ``data/cls_prompts.txt``; typo kept): ``%`` -> the queried class, ``*`` -> the colour to show if
#: it is present, ``#`` -> the colour to show if not.
PAPER_CLASSIFICATION_TEMPLATE = "Show * if there exsits %; if not, show # instead."
#: Colours the official inference put in the template: red = present, green = absent.
PAPER_POSITIVE_COLOUR = "red"
PAPER_NEGATIVE_COLOUR = "green"
#: Reference colour of the official scorer (``evaluate/evaluate_cls.py`` at commit 5814835).
PAPER_REFERENCE_RGB = (0, 255, 0)
#: Near-tie margin of the official scorer, in mean-distance units (0..441).
PAPER_TIE_MARGIN = 2.2


def paper_classification_prompt(
    category: str, positive: str = PAPER_POSITIVE_COLOUR, negative: str = PAPER_NEGATIVE_COLOUR
) -> str:
    """The official inference instruction for ``category``: "Show red if there exsits cat; if not,
    show green instead." by default."""
    return PAPER_CLASSIFICATION_TEMPLATE.replace("%", category).replace("*", positive).replace("#", negative)


#: Breed names of the official scorer. "Bengal" is in both sets, so it ends up labelled dog.
OFFICIAL_CAT_BREEDS = frozenset({
    "Abyssinian", "Bengal", "Birman", "Bombay", "British Shorthair", "Egyptian Mau", "Maine Coon",
    "Persian", "Ragdoll", "Russian Blue", "Siamese", "Sphynx",
})
OFFICIAL_DOG_BREEDS = frozenset({
    "american bulldog", "american pit bull terrier", "basset hound", "beagle", "Bengal", "boxer",
    "chihuahua", "english cocker spaniel", "english setter", "german shorthaired", "great pyrenees",
    "havanese", "japanese chin", "keeshond", "leonberger", "miniature pinscher", "newfoundland",
    "pomeranian", "pug", "saint bernard", "samoyed", "scottish terrier", "shiba inu",
    "staffordshire bull terrier", "wheaten terrier", "yorkshire terrier",
})


def official_pets_label(image_key: str) -> str | None:
    """"cat", "dog" or None (official: 999, never correct) for an Oxford-Pets name such as
    ``Abyssinian_2``, as the official scorer derives it (breed = the fields before the last ``_``,
    looked up in the cat set, then in the dog set, so "Bengal" becomes dog)."""
    breed = " ".join(image_key.split("_")[:-1]).strip()
    label = None
    if breed in OFFICIAL_CAT_BREEDS:
        label = "cat"
    if breed in OFFICIAL_DOG_BREEDS:
        label = "dog"
    return label


def mean_rgb_distance(image: np.ndarray, reference: Sequence[int] = PAPER_REFERENCE_RGB) -> float:
    """Mean over pixels of the Euclidean RGB distance to ``reference`` (the official measure: the
    mean of per-pixel distances, not the distance of the mean colour)."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] < 3:
        raise ValueError(f"image must be uint8 (H, W, 3), got {arr.dtype} {arr.shape}")
    diff = arr[:, :, :3].astype(np.int64) - np.asarray(reference, dtype=np.int64)
    return float(np.mean(np.sqrt(np.sum(diff**2, axis=2))))


def classification_accuracy(
    samples: Iterable[tuple[str, str, np.ndarray, np.ndarray]],
    reference: Sequence[int] = PAPER_REFERENCE_RGB,
    tie: float = PAPER_TIE_MARGIN,
) -> dict:
    """The official binary cat/dog accuracy (Oxford-Pets), flaws included.

    Official: deleted ``evaluate/evaluate_cls.py`` at commit 5814835 (the version matching
    ``infer/edit_cli_cls.py``); it runs at import, there is no function.

    ``samples``: ``(image_key, true_class, output_for_cat, output_for_dog)``: the two generated
    images (uint8 RGB) for the cat query and the dog query of one image.

    Rule: ``d_q`` = :func:`mean_rgb_distance` of the output of query ``q`` to ``reference``
    (0, 255, 0). If ``|d_cat - d_dog| <= tie`` (2.2) the image counts as **correct** whatever the
    true class (near-tie rule). Otherwise the prediction is the query with the smaller distance.

    Quirks reproduced:

    * the reference colour is green, which is the *negative* colour of the matching inference
      prompt (:func:`paper_classification_prompt`: red if present, green if not), so the
      prediction is the query whose answer looks most like "absent": an ideal model scores 0%
      apart from near-ties, and a model answering the opposite of the truth scores 100%;
    * near-ties count as correct (a model answering the same colour to both queries gets 100%);
    * a true class other than "cat"/"dog" (official: label 999) can be correct only by near-tie.

    Official crashes turned into warnings: every image a near-tie (the final print references
    ``pred``, never assigned: NameError) and no image at all (ZeroDivisionError).

    Returns ``accuracy`` (percent), ``images``, ``correct``, ``near_ties``, ``warnings``.
    """
    images = correct = near_ties = unknown = 0
    for _key, true_class, out_cat, out_dog in samples:
        images += 1
        if true_class not in ("cat", "dog"):
            unknown += 1
        d_cat = mean_rgb_distance(out_cat, reference)
        d_dog = mean_rgb_distance(out_dog, reference)
        if abs(d_cat - d_dog) <= tie:
            near_ties += 1
            correct += 1
            continue
        predicted = "cat" if d_cat < d_dog else "dog"
        correct += predicted == true_class
    warnings = []
    if images == 0:
        warnings.append("no images: the official script raises ZeroDivisionError")
    elif near_ties == images:
        warnings.append("every image is a near-tie: the official script raises NameError ('pred') before printing")
    if unknown:
        warnings.append(f"{unknown} image(s) with a true class other than cat/dog: correct only by near-tie")
    return {
        "accuracy": 100.0 * correct / images if images else math.nan,
        "images": images,
        "correct": correct,
        "near_ties": near_ties,
        "warnings": warnings,
    }


# --------------------------------------------------------------------------------------------
# helpers


def _bool(mask: np.ndarray, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise TypeError(f"{name} must be a bool mask, got {mask.dtype}")
    return mask


def _channel0(image: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3):
        raise ValueError(f"{name} must be uint8 (H, W) or (H, W, C), got {arr.dtype} {arr.shape}")
    return arr if arr.ndim == 2 else arr[:, :, 0]


def _percent(stat: float) -> float:
    return math.nan if stat < 0 else float(stat) * 100.0


__all__ = [
    "DET_FILTER_IOU",
    "DET_IMAGE_SIZE",
    "DET_MAX_DETS",
    "DEPTH_SCALE_M",
    "OFFICIAL_CAT_BREEDS",
    "OFFICIAL_COCO_CLASSES",
    "OFFICIAL_DOG_BREEDS",
    "PAPER_CLASSIFICATION_TEMPLATE",
    "PAPER_NEGATIVE_COLOUR",
    "PAPER_POSITIVE_COLOUR",
    "PAPER_REFERENCE_RGB",
    "PAPER_TIE_MARGIN",
    "SEG_EPSILON",
    "classification_accuracy",
    "depth_metrics",
    "detection_map",
    "fss_miou",
    "gt_filter",
    "gt_filter_iou",
    "mean_rgb_distance",
    "official_category_filter",
    "official_depth_errors",
    "official_gt_metres",
    "official_pred_metres",
    "official_det_folder_fields",
    "official_folder_tag",
    "official_mask_iou",
    "official_pets_label",
    "official_seg_folder_fields",
    "official_voc_image_key",
    "paper_classification_prompt",
    "segmentation_miou",
]
