"""Semantic segmentation: one white-on-black mask per (image, category).

Target ``v(y)``: the pixels of the category white (255, 255, 255), everything else black. Evaluation
comes in three kinds: closed-set segmentation (ADE20K, VOC: the `paper` protocol asks only the
categories present, the `standard` one every category and builds a label map), open-vocabulary
segmentation (FSS-1000: each image asked for its own unseen class), and the held-out phrasings of
Table 3 (ADE20K asked with six instructions never used in training).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from instructcv_core.instructions.templates import FP_TEMPLATES, render, test_instruction
from instructcv_core.tasks.arrays import Size, channel_values, resize_to
from instructcv_core.tasks.base import (
    OVERLAY_ALPHA,
    OVERLAY_RGB,
    MetricSpec,
    Prediction,
    Question,
    Target,
    present_categories,
    record_size,
    region_iou,
    standard_categories,
    swap_probe,
)
from instructcv_core.tasks.category_names import prompt_name

# --------------------------------------------------------------------------------------------
# encoding and decoding


def encode_segmentation(mask: np.ndarray) -> np.ndarray:
    """Binary mask -> white-on-black RGB image (official per-class target).

    Pixel ``(i, j)`` is (255, 255, 255) where ``mask[i, j]`` is True and (0, 0, 0) elsewhere;
    output shape ``(H, W, 3)``, uint8. ``mask`` must be a bool array (build it as
    ``labels == class_id``); other dtypes raise ``TypeError`` so that a 0/255 label image or a
    label map cannot be passed by mistake.

    Void / ignore pixels (ADE20K 0 "other", VOC 255 boundary, Pets trimap border) are simply not
    the category: they are black, exactly like background. The encoding cannot mark them; an
    evaluation that should ignore them needs the void mask separately.
    """
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise TypeError(f"mask must be bool (e.g. labels == class_id), got {mask.dtype}")
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got {mask.shape}")
    image = np.zeros((*mask.shape, 3), dtype=np.uint8)
    image[mask] = 255
    return image


def decode_segmentation(image: np.ndarray, threshold: int = 127, channel: str | int = "mean") -> np.ndarray:
    """RGB image -> bool mask: foreground where the chosen channel value is ``> threshold``.

    ``channel="mean"`` uses the mean of the three channels (a float in 0..255); an int uses that
    channel of the array *as passed* (0 = R, 1 = G, 2 = B for the RGB images of this project).
    A 2-D (H, W) gray image is accepted too; ``channel`` is then ignored.

    The official evaluation reads predictions with ``cv2.imread`` (BGR) and keeps channel 0 > 10,
    i.e. the *blue* channel with threshold 10: on an RGB array that is
    ``decode_segmentation(image, threshold=10, channel=2)``. The default (mean > 127) is the exact
    inverse of :func:`encode_segmentation` and is robust to colour casts.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        values = image.astype(np.float32)
    elif image.ndim == 3:
        if channel == "mean":
            values = image.astype(np.float32).mean(axis=2)
        elif isinstance(channel, (int, np.integer)) and not isinstance(channel, bool):
            if not 0 <= channel < image.shape[2]:
                raise ValueError(f"channel {channel} out of range for {image.shape[2]} channels")
            values = image[:, :, int(channel)]
        else:
            raise ValueError(f"channel must be 'mean' or an int, got {channel!r}")
    else:
        raise ValueError(f"image must be (H, W) or (H, W, C), got {image.shape}")
    return values > threshold


def expected_target(bench, row, target_image) -> np.ndarray:
    """The encoded test target of a query, or an empty mask for a category absent from the image."""
    frame = bench.frame
    match = frame[(frame["image_id"] == row.image_id) & ((frame["category"] == row.category) | frame["category"].isna())]
    if match.empty:  # a category absent from the image (standard protocol): an empty mask
        record = bench.records[row.image_id]
        return encode_segmentation(np.zeros((record.height, record.width), bool))
    return target_image(match.iloc[0]["target_original_digest"])


# --------------------------------------------------------------------------------------------
# post-processing of generated outputs


def segmentation_scores(
    output: np.ndarray, size: Size | None = None, channel: str | int = "mean"
) -> np.ndarray:
    """float32 ``(H, W)`` foreground scores in 0..255: the channel mean (or RGB channel
    ``channel``) of ``output``, then resized (bilinear, as float) to ``size = (width, height)``."""
    return resize_to(channel_values(output, channel), size).astype(np.float32, copy=False)


def segmentation_mask(
    output: np.ndarray, threshold: float = 127, channel: str | int = "mean", size: Size | None = None
) -> np.ndarray:
    """bool mask: ``segmentation_scores(output, size, channel) > threshold``.

    The official evaluation (``evaluate_cls_seg_det.py``) keeps cv2 (BGR) channel 0 > 10 at
    generation size, i.e. the *blue* channel: ``segmentation_mask(output, 10, channel=2)``.
    The default (mean > 127) is ours.
    """
    return segmentation_scores(output, size=size, channel=channel) > threshold


# --------------------------------------------------------------------------------------------
# evaluation: closed-set, open-vocabulary and held-out-phrasing segmentation


def _gt_masks(bench, image_id: str):
    from instructcv_core.data.labels import load_class_masks

    return load_class_masks(bench.records[image_id], bench.root)


def closed_set_questions(bench, config, task: str):
    """Segmentation and detection: the paper asks each image for its present categories, the standard
    protocol asks it for every category of the benchmark (each question asked once)."""
    want_standard = "standard" in config.protocols
    present = present_categories(bench)
    asked = standard_categories(bench, config) if want_standard else []
    for image_id in bench.image_ids:
        mine = present.get(image_id, [])
        for category in dict.fromkeys([*mine, *asked]):
            text = test_instruction(task, config.instruction_mode(), config.seed, f"{bench.name}|{image_id}|{category}",
                                    category=prompt_name(bench.dataset, category))
            yield Question(image_id, text, category, category in mine, category in asked or not want_standard)


def closed_set_swap_candidates(bench) -> list[tuple[str, str, str]]:
    """Segmentation and detection: every ordered pair (A, B) of two categories one image holds."""
    present = present_categories(bench)
    candidates = []
    for image_id in bench.image_ids:
        held = present.get(image_id, [])
        candidates += [(image_id, a, b) for a in held for b in held if a != b]
    return candidates


def closed_set_query_counts(images: int, classes: int, present: int) -> tuple[int, int, int]:
    """Segmentation and detection: the paper asks the present categories, the standard protocol every
    category of every image (the paper questions are a subset of the standard ones)."""
    standard = images * classes
    return present, standard, standard


class SegmentationSwaps:
    """How every segmentation kind judges a category swap: ``IoU(mask for A, GT of A)`` against
    ``IoU(mask for A, GT of B)``; only closed-set segmentation plans swaps (:meth:`swap_candidates`)."""

    def swap_candidates(self, bench, config, rank):
        return []

    def swap_asks(self, asked, other):
        return [(asked, "asked")]

    def judge_swap(self, bench, pair, output_image, config, cache):
        from instructcv_core.data.labels import load_class_masks

        asked = swap_probe(pair)
        record = bench.records[asked.image_id]
        answer = segmentation_mask(output_image(asked.output_digest), config.standard_threshold, "mean",
                                   size=record_size(record))

        def truth(category):
            if asked.image_id not in cache:
                cache[asked.image_id] = load_class_masks(record, bench.root)[0]
            return cache[asked.image_id].get(category, np.zeros((record.height, record.width), bool))

        return region_iou(answer, truth(asked.category)), region_iou(answer, truth(asked.other))


class ClosedSetSegmentation(SegmentationSwaps):
    """ADE20K, VOC: per-image mean IoU of present classes (paper); confusion-matrix mIoU (standard)."""

    kind = "segmentation"
    metrics = MetricSpec(
        {"paper": {"miou": (0, 100, True)}, "standard": {"miou": (0, 100, True), "pixel_acc": (0, 100, True)}},
        {"paper": "miou", "standard": "miou"})

    def metric_ranges(self, benchmark):
        return self.metrics.ranges

    def questions(self, bench, config, phrasings=None):
        return closed_set_questions(bench, config, "segmentation")

    def query_counts(self, benchmark, images, classes, present, phrasings):
        return closed_set_query_counts(images, classes, present)

    def swap_candidates(self, bench, config, rank):
        return closed_set_swap_candidates(bench)

    def score(self, bench, outputs, output_image, target_image, config):
        from instructcv_core.evaluation import streaming
        from instructcv_core.evaluation.intervals import PerImageMean

        from_names = {name: i for i, name in enumerate(bench.categories)}
        background = 0 if bench.spec.background_class else None
        offset = 1 if background is not None else 0  # VOC: 0 = background, classes 1..20
        num_classes = len(bench.categories) + offset
        ignore = 255
        predictions = []
        # Streaming: each output is reduced as it arrives (evaluation/streaming.py), so memory does not
        # grow with the split (the standard protocol asks every class of every image).
        paper_scores = streaming.PaperSegmentation()
        standard_scores = streaming.StandardSegmentation(num_classes, ignore, config.standard_threshold, background)
        for image_id, group in outputs.groupby("image_id", sort=False):
            record = bench.records[image_id]
            masks, void = _gt_masks(bench, image_id)
            labels = np.full((record.height, record.width), ignore if background is None else background, dtype=np.int32)
            for name, mask in masks.items():
                labels[mask] = from_names[name] + offset
            if void is not None:
                labels[void] = ignore
            combined = None
            for row in group.itertuples():
                output = output_image(row.output_digest)
                if row.paper:
                    gt = masks.get(row.category, np.zeros((record.height, record.width), bool))
                    pred = segmentation_mask(output, threshold=config.paper_threshold, channel=2)
                    paper_scores.update(image_id, row.category, pred, gt)
                s = segmentation_scores(output, size=record_size(record))
                if row.standard:
                    combined = combined or standard_scores.new_image(labels.shape)
                    combined.add(from_names[row.category] + offset, s)
                predictions.append({"query_id": row.query_id,  # count / size: the bool mean, faster
                                    "foreground_fraction": np.count_nonzero(s > config.standard_threshold) / s.size})
            if combined is not None:
                standard_scores.update(image_id, combined, labels)
        out = {"predictions": pd.DataFrame(predictions)}
        if "paper" in config.protocols:
            result = paper_scores.compute()
            out["paper"] = {**result, "bootstrap": {"miou": PerImageMean(result["per_image"])}}
        if "standard" in config.protocols:
            out["standard"] = {**standard_scores.compute(), "bootstrap": standard_scores.bootstrap()}
        return out


class OpenVocabularySegmentation(SegmentationSwaps):
    """FSS-1000: each image asked for its own (unseen) class; mIoU per class (Table 2)."""

    kind = "open_vocabulary"
    metrics = MetricSpec({"paper": {"miou": (0, 100, True)}, "standard": {"miou": (0, 100, True)}},
                         {"paper": "miou", "standard": "miou"})

    def metric_ranges(self, benchmark):
        return self.metrics.ranges

    def questions(self, bench, config, phrasings=None):
        present = present_categories(bench)
        for image_id in bench.image_ids:
            for category in present.get(image_id, []):
                text = test_instruction("segmentation", config.instruction_mode(), config.seed,
                                        f"{bench.name}|{image_id}|{category}", category=prompt_name(bench.dataset, category))
                yield Question(image_id, text, category, True, True)

    def query_counts(self, benchmark, images, classes, present, phrasings):
        return images, images, images  # each image asked its own class

    def score(self, bench, outputs, output_image, target_image, config):
        from instructcv_core.evaluation import streaming
        from instructcv_core.evaluation.intervals import PerImageMean

        predictions = []
        paper_scores, standard_scores = streaming.PaperSegmentation(), streaming.ClassIoUSums()
        for row in outputs.itertuples():
            record = bench.records[row.image_id]
            masks, _ = _gt_masks(bench, row.image_id)
            gt = masks.get(row.category, np.zeros((record.height, record.width), bool))
            output = output_image(row.output_digest)
            paper_scores.update(row.image_id, row.category, segmentation_mask(output, config.paper_threshold, 2), gt)
            mask = segmentation_mask(output, config.standard_threshold, "mean", size=record_size(record))
            if row.standard:  # False outside the standard subset (evaluation/subset.py)
                standard_scores.update(row.image_id, row.category, mask, gt)
            predictions.append({"query_id": row.query_id, "foreground_fraction": float(mask.mean())})
        out = {"predictions": pd.DataFrame(predictions)}
        if "paper" in config.protocols:
            result = paper_scores.compute()  # = paper.fss_miou
            out["paper"] = {**result, "bootstrap": {"miou": PerImageMean(result["per_image"])}}
        if "standard" in config.protocols:
            out["standard"] = {**standard_scores.compute(), "bootstrap": standard_scores.bootstrap()}  # = standard.fss_miou
        return out


class HeldoutPhrasingSegmentation(SegmentationSwaps):
    """Table 3: the present categories asked with each held-out phrasing; mIoU per phrasing and their mean."""

    kind = "heldout"
    metrics = MetricSpec({"paper": {"miou": (0, 100, True)}, "standard": {"miou": (0, 100, True)}},
                         {"paper": "miou", "standard": "miou"})

    def metric_ranges(self, benchmark):
        return self.metrics.ranges

    def questions(self, bench, config, phrasings=None):
        present = present_categories(bench)
        for image_id in bench.image_ids:
            for phrasing in phrasings or []:
                for category in present.get(image_id, []):
                    text = render(phrasing, category=prompt_name(bench.dataset, category))
                    yield Question(image_id, text, category, True, True, phrasing=phrasing)

    def query_counts(self, benchmark, images, classes, present, phrasings):
        n = present * phrasings  # each present category in each phrasing
        return n, n, n

    def score(self, bench, outputs, output_image, target_image, config):
        """Both protocols per phrasing (standard: per-class accumulated IoU over the asked classes)."""
        from instructcv_core.evaluation import streaming
        from instructcv_core.evaluation.intervals import MeanOf, PerImageMean

        predictions = []
        per_phrasing = {p: {"paper": streaming.PaperSegmentation(), "standard": streaming.ClassIoUSums()}
                        for p in outputs["phrasing"].unique()}
        masks_cache: dict[str, dict] = {}
        for row in outputs.itertuples():
            record = bench.records[row.image_id]
            if row.image_id not in masks_cache:
                masks_cache = {row.image_id: _gt_masks(bench, row.image_id)[0]}  # one image's masks at a time
            gt = masks_cache[row.image_id].get(row.category, np.zeros((record.height, record.width), bool))
            output = output_image(row.output_digest)
            per_phrasing[row.phrasing]["paper"].update(
                row.image_id, row.category, segmentation_mask(output, config.paper_threshold, 2), gt)
            mask = segmentation_mask(output, config.standard_threshold, "mean", size=record_size(record))
            if row.standard:
                per_phrasing[row.phrasing]["standard"].update(row.image_id, row.category, mask, gt)
            predictions.append({"query_id": row.query_id, "foreground_fraction": float(mask.mean())})
        out = {"predictions": pd.DataFrame(predictions)}
        for protocol in config.protocols:
            by_phrasing, statistics = {}, []
            for phrasing, scores in per_phrasing.items():
                if protocol == "paper":
                    result = scores["paper"].compute()
                    statistics.append(PerImageMean(result["per_image"]))
                else:
                    result = scores["standard"].compute(with_per_image=False)
                    statistics.append(scores["standard"].bootstrap()["miou"])
                by_phrasing[phrasing] = float(result["miou"])
            values = [v for v in by_phrasing.values() if not math.isnan(v)]
            out[protocol] = {"miou": float(np.mean(values)) if values else math.nan, "by_phrasing": by_phrasing,
                             "bootstrap": {"miou": MeanOf(statistics)}}
        return out


# --------------------------------------------------------------------------------------------
# the task


class SegmentationTask:
    name = "segmentation"
    evaluations = {e.kind: e for e in (ClosedSetSegmentation(), OpenVocabularySegmentation(), HeldoutPhrasingSegmentation())}
    instruction_hint = "segment/mask/cut out/highlight"
    decisive = False
    draws = "mask"
    official_folder_tag = "seg"  # ADE_val_00000001.jpg_wall_seg
    _keywords = re.compile(r"\b(segment\w*|mask\w*|cut\s+out|highlight\w*)\b", re.IGNORECASE)

    def has_labels(self, record) -> bool:
        return record.mask_format is not None

    def targets(self, record, root: Path, image, class_names, config) -> list[Target]:
        """One mask per category present (instances merged; void pixels are black)."""
        from instructcv_core.data.labels import load_class_masks

        masks, _void = load_class_masks(record, Path(root))
        return [
            Target(encode_segmentation(mask), name, prompt_name(record.dataset, name))
            for name, mask in sorted(masks.items())
            if mask.any()
        ]

    def expected_pairs(self, record, class_names, config) -> int:
        return len(record.categories)

    def instruction_slots(self, row) -> dict[str, str]:
        return {"category": row.category_text}

    def recognise(self, instruction: str) -> str | None:
        match = self._keywords.search(instruction)
        return match.group(0) if match else None

    def instruction_arguments(self, instruction: str) -> dict:
        return {}

    def describe(self, output, image, arguments) -> Prediction:
        """The mask (0/255) and the input with the mask tinted, at the input's size."""
        height, width = image.shape[:2]
        mask = segmentation_mask(output, size=(width, height))
        overlay = image.astype(np.float32)
        overlay[mask] = (1 - OVERLAY_ALPHA) * overlay[mask] + OVERLAY_ALPHA * np.array(OVERLAY_RGB, np.float32)
        fraction = float(mask.mean())
        return Prediction(
            files={"mask": (".mask.png", (mask * 255).astype(np.uint8)),
                   "overlay": (".overlay.png", np.clip(overlay + 0.5, 0, 255).astype(np.uint8))},
            fields={"mask_fraction": fraction}, text=f"{fraction:.1%} of the image in the mask")

    def preview(self, output, image, colour, colour2, config) -> np.ndarray:
        size = (image.shape[1], image.shape[0])
        return encode_segmentation(segmentation_mask(output, config.standard_threshold, "mean", size=size))

    def truth_preview(self, bench, row, target_image) -> np.ndarray:
        return expected_target(bench, row, target_image)

    def reconstruction_metrics(self, originals, round_trips) -> dict[str, float]:
        """``iou``: mean per-image IoU of the masks (mean gray > 127; both empty counts 1);
        ``iou_pooled``: all pixels together."""
        a = np.stack([decode_segmentation(im, threshold=127) for im in originals])
        b = np.stack([decode_segmentation(im, threshold=127) for im in round_trips])
        inter = (a & b).sum(axis=(1, 2))
        union = (a | b).sum(axis=(1, 2))
        return {"iou": float(np.where(union > 0, inter / np.maximum(union, 1), 1.0).mean()),
                "iou_pooled": float(inter.sum() / max(union.sum(), 1))}

    def probe_instruction(self, bench, category, config) -> str:
        return render(FP_TEMPLATES[self.name], category=prompt_name(bench.dataset, category) if category else "object")


TASK = SegmentationTask()

__all__ = ["TASK", "ClosedSetSegmentation", "HeldoutPhrasingSegmentation", "OpenVocabularySegmentation",
           "SegmentationSwaps", "SegmentationTask", "closed_set_query_counts", "closed_set_questions",
           "closed_set_swap_candidates", "decode_segmentation", "encode_segmentation", "expected_target",
           "segmentation_mask", "segmentation_scores"]
