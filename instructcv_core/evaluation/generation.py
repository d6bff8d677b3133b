"""Generating the planned outputs with a sampler into a content-addressed output store."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from instructcv_core.data.imagestore import ImageStore
from instructcv_core.evaluation.output_journal import OutputJournal
from instructcv_core.inference.config import Request
from instructcv_core.tasks.arrays import as_rgb


def generate_outputs(sampler, queries: pd.DataFrame, input_store: ImageStore, output_store: ImageStore,
                     on_progress: Callable[[int], None] | None = None, journal: OutputJournal | None = None) -> pd.DataFrame:
    """Generate every query's output with ``sampler``; returns ``queries`` plus an ``output_digest`` column.

    With a ``journal`` (resume inside an evaluation, `evaluation.output_journal`), outputs it records
    whose image is in ``output_store`` are reused, only the others are generated (``sampler`` may be
    None when there are none), and each finished batch is recorded before the next one starts.
    """
    queries = queries.reset_index(drop=True)
    digests = finished_outputs(queries, output_store, journal)
    todo = [i for i, d in enumerate(digests) if not d]
    if not todo:
        return queries.assign(output_digest=digests)
    images = LazyImages(input_store)
    requests = [Request(queries.at[i, "input_digest"], queries.at[i, "instruction"], int(queries.at[i, "seed"])) for i in todo]
    pending: list[tuple[str, str]] = []

    def on_batch(n: int) -> None:
        if journal is not None:
            journal.append(pending)
            pending.clear()
        if on_progress is not None:
            on_progress(n)

    for index, output in sampler.generate(requests, images, on_batch=on_batch):
        row = todo[index]
        digests[row] = output_store.put(output)
        if journal is not None:
            pending.append((_key(journal, queries, row), digests[row]))
    return queries.assign(output_digest=digests)


def finished_outputs(queries: pd.DataFrame, output_store: ImageStore, journal: OutputJournal | None) -> list[str]:
    """Per query (positional), the digest of its recorded output still in the store, else ``""``."""
    if journal is None:
        return [""] * len(queries)
    done = journal.load()
    digests = []
    for row in range(len(queries)):
        digest = done.get(_key(journal, queries, row), "")
        digests.append(digest if digest and output_store.path(digest).exists() else "")
    return digests


def _key(journal: OutputJournal, queries: pd.DataFrame, row: int) -> str:
    return journal.key(queries.at[row, "input_digest"], queries.at[row, "image_id"], queries.at[row, "instruction"],
                       int(queries.at[row, "seed"]))


class LazyImages(dict):
    """digest -> image, read from the store on first use (keeps only what the sampler asks for)."""

    def __init__(self, store: ImageStore):
        super().__init__()
        self.store = store

    def __missing__(self, digest: str) -> np.ndarray:
        return as_rgb(self.store.get(digest))


__all__ = ["LazyImages", "finished_outputs", "generate_outputs"]
