"""Monocular depth: one 8-bit gray depth map per image (255 = 10 m).

Target ``v(y)``: metric depth quantised linearly to 0..255 over 0..10 m, replicated to three
channels. The `paper` protocol scores the 8-bit target with the official script's quirks, the
`standard` one raw metric depth (Eigen crop on NYUv2).
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from instructcv_core.instructions.templates import FP_TEMPLATES, test_instruction
from instructcv_core.tasks.arrays import Size, channel_values, resize_to
from instructcv_core.tasks.base import MetricSpec, Prediction, Question, Target, record_size
from instructcv_core.tasks.segmentation import expected_target

#: Depth that maps to gray level 255 (official: 255 = 10 m).
DEPTH_MAX_M = 10.0

# --------------------------------------------------------------------------------------------
# encoding and decoding


def encode_depth(depth_m: np.ndarray, max_depth_m: float = DEPTH_MAX_M) -> np.ndarray:
    """Metric depth -> 8-bit gray image replicated to 3 channels (official: 255 = 10 m).

    ``gray = floor(clip(d, 0, max_depth_m) / max_depth_m * 255 + 0.5)``: linear, 0 m -> 0,
    ``max_depth_m`` -> 255, deeper values clipped to 255, rounded to the nearest level with halves
    up (5 m -> 127.5 -> 128). One level is ``max_depth_m / 255`` m (10/255 m = 3.92 cm by default),
    so the quantisation error is at most half a level (1.96 cm).

    Invalid depths (0 = no measurement, negative, NaN, inf) encode as 0, the same level as 0 m;
    depths below half a level (< 1.96 cm) are also 0. The encoding cannot tell them apart: keep
    the validity mask of the source depth for evaluation.

    Differences from the official (deleted) ``preprocess_nyuv2_mdet_.py``: it computed
    ``uint8(depth_mm / 1000 * 255 / 10)`` (truncation instead of rounding, no clipping) on depth
    mis-read as 8-bit (see :func:`depth_from_png_mm`).
    """
    depth = np.asarray(depth_m, dtype=np.float64)
    if depth.ndim != 2:
        raise ValueError(f"depth must be (H, W), got {depth.shape}")
    if not max_depth_m > 0:
        raise ValueError(f"max_depth_m must be > 0, got {max_depth_m}")
    valid = np.isfinite(depth) & (depth > 0)
    scaled = np.where(valid, np.clip(depth, 0.0, max_depth_m), 0.0) / max_depth_m * 255.0
    gray = np.floor(scaled + 0.5).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


def decode_depth(image: np.ndarray, max_depth_m: float = DEPTH_MAX_M) -> np.ndarray:
    """Gray (or colour) image -> float32 metres: ``mean(R, G, B) * max_depth_m / 255``.

    Exact inverse of :func:`encode_depth` up to quantisation (error <= ``max_depth_m / 510`` m for
    depths in ``[0, max_depth_m]``). Level 0 decodes to 0 m (= "no measurement"). Averaging the
    channels makes the decoder tolerant to slight colour casts in generated images; the official
    evaluation instead reads channel 0 (red) of the PIL image: ``image[..., 0] * 10 / 255``.
    A 2-D (H, W) gray image is accepted too.
    """
    image = np.asarray(image)
    if image.ndim == 3:
        values = image.astype(np.float64).mean(axis=2)
    elif image.ndim == 2:
        values = image.astype(np.float64)
    else:
        raise ValueError(f"image must be (H, W) or (H, W, C), got {image.shape}")
    return (values * (max_depth_m / 255.0)).astype(np.float32)


def depth_from_png_mm(raw: np.ndarray) -> np.ndarray:
    """Raw depth as read from a 16-bit millimetre PNG -> float32 metres (0 stays 0 = invalid).

    Integer input (uint16 from ``cv2.imread(path, cv2.IMREAD_UNCHANGED)``, or the int32 that
    Pillow gives for 16-bit PNGs) is divided by 1000: 1000 -> 1.0 m, 65535 -> 65.535 m. Floating
    input is taken to be metres already and returned as float32, unchanged.

    The official preprocessing read these PNGs with ``cv2.imread(path, 0)`` (IMREAD_GRAYSCALE),
    which converts 16-bit data to 8-bit by keeping the high byte (``v >> 8``): 1000 mm -> 3,
    5000 mm -> 19, so its depth targets came out near-black. To catch that mistake, uint8 and int8
    input raise ``ValueError``: real millimetre depth does not fit in 8 bits.
    """
    raw = np.asarray(raw)
    if np.issubdtype(raw.dtype, np.floating):
        return raw.astype(np.float32)
    if raw.dtype == np.bool_ or not np.issubdtype(raw.dtype, np.integer):
        raise TypeError(f"raw depth must be an integer (mm) or float (m) array, got {raw.dtype}")
    if raw.dtype.itemsize < 2:
        raise ValueError(
            f"raw depth is {raw.dtype}: a 16-bit millimetre PNG read as 8-bit keeps only its high "
            "byte (1000 mm -> 3); read it with cv2.IMREAD_UNCHANGED"
        )
    if raw.size and raw.min() < 0:
        raise ValueError("raw millimetre depth has negative values")
    return (raw.astype(np.float64) / 1000.0).astype(np.float32)



# --------------------------------------------------------------------------------------------
# post-processing of generated outputs


def depth_metres(
    output: np.ndarray,
    size: Size | None = None,
    channel: str | int = "mean",
    max_depth_m: float = DEPTH_MAX_M,
) -> np.ndarray:
    """float32 metres ``(H, W)``: ``channel value * max_depth_m / 255`` at generation size, then
    resized (bilinear, as float) to ``size = (width, height)``.

    The paper protocol reads channel 0 (red of the PIL image): ``channel=0``; the default
    channel mean is ours. The official ``evaluate_depes.py`` resizes the uint8 image first
    (torchvision ``Resize``), so its values are rounded to whole levels; here they are not.
    """
    if not max_depth_m > 0:
        raise ValueError(f"max_depth_m must be > 0, got {max_depth_m}")
    metres = channel_values(output, channel) * np.float32(max_depth_m / 255.0)
    return resize_to(metres.astype(np.float32), size).astype(np.float32, copy=False)



# --------------------------------------------------------------------------------------------
# evaluation


class DepthEvaluation:
    """NYUv2, SUN RGB-D: the official script on 8-bit targets (paper); raw metric depth (standard)."""

    kind = "depth"
    metrics = MetricSpec(
        {"paper": {"rmse": (0, 10, False), "abs_rel": (0, np.inf, False), "delta1": (0, 1, True),
                   "delta2": (0, 1, True), "delta3": (0, 1, True)},
         "standard": {"rmse": (0, 10, False), "abs_rel": (0, np.inf, False), "log10": (0, np.inf, False),
                      "delta1": (0, 1, True), "delta2": (0, 1, True), "delta3": (0, 1, True)}},
        {"paper": "rmse", "standard": "rmse"})

    def metric_ranges(self, benchmark):
        return self.metrics.ranges

    def questions(self, bench, config, phrasings=None):
        for image_id in bench.image_ids:
            text = test_instruction("depth", config.instruction_mode(), config.seed, f"{bench.name}|{image_id}")
            yield Question(image_id, text, None, True, True)

    def query_counts(self, benchmark, images, classes, present, phrasings):
        return images, images, images  # one question per image

    def swap_candidates(self, bench, config, rank):
        return []  # no category to swap

    def swap_asks(self, asked, other):
        return [(asked, "asked")]

    def judge_swap(self, bench, pair, output_image, config, cache):
        raise ValueError(f"{bench.name}: depth asks no category, so it has no category swap to judge")

    def score(self, bench, outputs, output_image, target_image, config):
        from instructcv_core.data.labels import load_depth_m
        from instructcv_core.evaluation import streaming

        predictions = []
        # Streaming: each output is reduced to its error values as it arrives (evaluation/streaming.py).
        paper_scores, standard_scores = streaming.PaperDepth(), streaming.StandardDepth(eigen_crop=bench.spec.eigen_crop)
        targets = bench.frame.groupby("image_id")["target_original_digest"].first().to_dict()
        for row in outputs.itertuples():
            record = bench.records[row.image_id]
            output = output_image(row.output_digest)
            if "paper" in config.protocols:
                paper_scores.update(target_image(targets[row.image_id]), output)
            pred = depth_metres(output, size=record_size(record))
            if row.standard:  # False outside the standard subset (evaluation/subset.py)
                standard_scores.update(row.image_id, pred, load_depth_m(record, bench.root, dense=False))
            predictions.append({"query_id": row.query_id, "mean_depth_m": float(pred.mean())})
        out = {"predictions": pd.DataFrame(predictions)}
        if "paper" in config.protocols:
            out["paper"] = {**paper_scores.compute(),  # = paper.depth_metrics
                            "bootstrap": paper_scores.bootstrap(self.metrics.ranges["paper"])}
        if "standard" in config.protocols:
            out["standard"] = {**standard_scores.compute(),  # = standard.depth_metrics, with per_image RMSE
                               "bootstrap": standard_scores.bootstrap(self.metrics.ranges["standard"])}
        return out


# --------------------------------------------------------------------------------------------
# the task


class DepthTask:
    name = "depth"
    evaluations = {"depth": DepthEvaluation()}
    instruction_hint = "depth/distance/far/close"
    decisive = False
    draws = "depth"
    official_folder_tag = None  # the official depth script reads image files, not per-category folders
    _keywords = re.compile(r"\b(depth\w*|distance\w*|far|farther|farthest|close|closer|closest)\b", re.IGNORECASE)

    def has_labels(self, record) -> bool:
        return record.depth_path is not None

    def targets(self, record, root: Path, image, class_names, config) -> list[Target]:
        """The gray depth map of the (hole-filled, where the dataset has one) metric depth."""
        from instructcv_core.data.labels import load_depth_m

        depth = load_depth_m(record, Path(root), dense=True)
        if depth.shape != image.shape[:2]:
            raise ValueError(f"depth map is {depth.shape[::-1]} but the image is {image.shape[1::-1]}")
        return [Target(encode_depth(depth))]

    def expected_pairs(self, record, class_names, config) -> int:
        return 1

    def instruction_slots(self, row) -> dict[str, str]:
        return {}

    def recognise(self, instruction: str) -> str | None:
        match = self._keywords.search(instruction)
        return match.group(0) if match else None

    def instruction_arguments(self, instruction: str) -> dict:
        return {}

    def describe(self, output, image, arguments) -> Prediction:
        """Metres at the input's size (float32 ``.npy``) and a TURBO colour map of 0..10 m."""
        height, width = image.shape[:2]
        metres = depth_metres(output, size=(width, height)).astype(np.float32)
        levels = np.clip(metres / DEPTH_MAX_M * 255.0 + 0.5, 0, 255).astype(np.uint8)
        coloured = cv2.applyColorMap(levels, cv2.COLORMAP_TURBO)[:, :, ::-1]  # BGR -> RGB
        stats = {"min": float(metres.min()), "median": float(np.median(metres)), "max": float(metres.max())}
        return Prediction(
            files={"depth": (".depth.png", np.ascontiguousarray(coloured)), "depth_npy": (".depth.npy", metres)},
            fields={"depth_m": stats},
            text=f"depth {stats['min']:.2f}-{stats['max']:.2f} m (median {stats['median']:.2f} m)")

    def preview(self, output, image, colour, colour2, config) -> np.ndarray:
        return encode_depth(depth_metres(output, size=(image.shape[1], image.shape[0])))

    def truth_preview(self, bench, row, target_image) -> np.ndarray:
        return expected_target(bench, row, target_image)

    def reconstruction_metrics(self, originals, round_trips) -> dict[str, float]:
        """``rmse_m``: RMSE in metres of the decoded depth (mean gray x 10 / 255)."""
        da = np.stack([decode_depth(im) for im in originals]).astype(np.float64)
        db = np.stack([decode_depth(im) for im in round_trips]).astype(np.float64)
        return {"rmse_m": float(np.sqrt(((da - db) ** 2).mean()))}

    def probe_instruction(self, bench, category, config) -> str:
        return FP_TEMPLATES[self.name]  # names no category


TASK = DepthTask()

__all__ = ["DEPTH_MAX_M", "TASK", "DepthEvaluation", "DepthTask", "decode_depth", "depth_from_png_mm", "depth_metres",
           "encode_depth"]
