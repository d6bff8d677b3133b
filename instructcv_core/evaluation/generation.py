"""Generating the planned outputs with a sampler into a content-addressed output store."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from instructcv_core.data.imagestore import ImageStore
from instructcv_core.inference.config import Request
from instructcv_core.tasks.arrays import as_rgb


def generate_outputs(sampler, queries: pd.DataFrame, input_store: ImageStore, output_store: ImageStore,
                     on_progress: Callable[[int], None] | None = None) -> pd.DataFrame:
    """Generate every query's output with ``sampler``; returns ``queries`` plus an ``output_digest`` column."""
    queries = queries.reset_index(drop=True)
    images = LazyImages(input_store)
    requests = [Request(d, t, int(s)) for d, t, s in zip(queries["input_digest"], queries["instruction"], queries["seed"])]
    digests = [""] * len(requests)
    for index, output in sampler.generate(requests, images, on_batch=on_progress):
        digests[index] = output_store.put(output)
    return queries.assign(output_digest=digests)


class LazyImages(dict):
    """digest -> image, read from the store on first use (keeps only what the sampler asks for)."""

    def __init__(self, store: ImageStore):
        super().__init__()
        self.store = store

    def __missing__(self, digest: str) -> np.ndarray:
        return as_rgb(self.store.get(digest))


__all__ = ["LazyImages", "generate_outputs"]
