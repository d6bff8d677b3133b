"""Subset mode of the standard protocol: a seeded subset of each benchmark's images, for users who
cannot pay for the full standard evaluation.

The standard protocol asks every image for every category (ADE20K val: 300,000 outputs per
checkpoint); ``EvalConfig.standard_subset = n`` asks and scores it on ``n`` images of each benchmark
only, the first ``n`` of the evaluated images in their seeded order
(:func:`~instructcv_core.evaluation.data.select_images`: a hash of seed, benchmark and image id), so
the subset is reproducible and a larger ``n`` contains a smaller one. The paper protocol keeps every
evaluated image. The metrics say so: ``metrics.parquet`` marks such rows ``subset = True`` and the
results tables label those cells; the confidence intervals of the per-image values are the
subset's (wider, honestly).
"""

from __future__ import annotations

import pandas as pd

from instructcv_core.evaluation.data import select_images

#: The label the results tables put after a number computed on a subset.
SUBSET_MARK = "†"


def standard_subset_images(image_ids: list[str], config, benchmark: str) -> list[str] | None:
    """The images the standard protocol uses under subset mode (None: subset mode off or not smaller)."""
    n = config.standard_subset
    if n is None or n >= len(image_ids):
        return None
    return select_images(image_ids, n, config.seed, benchmark)


def apply_standard_subset(frame: pd.DataFrame, bench, config) -> pd.DataFrame:
    """``frame`` (planned questions) with ``standard`` cleared outside the subset."""
    keep = standard_subset_images(list(bench.image_ids), config, bench.name)
    if keep is None or frame.empty:
        return frame
    frame = frame.copy()
    frame.loc[~frame["image_id"].isin(set(keep)), "standard"] = False
    return frame


def subset_protocols(image_ids: list[str], config, benchmark: str) -> set[str]:
    """The protocols whose numbers come from a subset of the evaluated images."""
    return {"standard"} if standard_subset_images(list(image_ids), config, benchmark) is not None else set()


__all__ = ["SUBSET_MARK", "apply_standard_subset", "standard_subset_images", "subset_protocols"]
