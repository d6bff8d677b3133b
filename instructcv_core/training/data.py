"""Training data: manifest rows, the images (or cached latent statistics) they name, and their order.

Reproducibility: the order is a permutation seeded by (seed, epoch) (:class:`EpochPermutationSampler`)
and every random draw of a micro-batch comes from :func:`seeded_generator` keyed by (seed, global
step, micro-batch, process): nothing depends on RNG state carried between steps, so a resumed run
draws exactly what the uninterrupted run drew.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

MANIFEST_COLUMNS = ("pair_id", "task", "instruction", "input_digest", "target_digest")


def read_manifest(path: str | Path, tasks: tuple[str, ...] | None = None):
    """The manifest rows to train on (file order), optionally only those of ``tasks``."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    columns = pq.read_schema(path).names
    missing = [c for c in MANIFEST_COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"manifest {path} lacks column(s) {', '.join(missing)}")
    frame = pq.read_table(path, columns=list(MANIFEST_COLUMNS)).to_pandas()
    if tasks is not None:
        frame = frame[frame["task"].isin(tasks)].reset_index(drop=True)
    if frame.empty:
        present = sorted(pq.read_table(path, columns=["task"]).column("task").unique().to_pylist())
        raise ValueError(
            f"manifest {path} has no rows for tasks {list(tasks) if tasks is not None else 'any'} "
            f"(tasks present: {present or 'none'})"
        )
    return frame


def check_images(frame, store, manifest: str | Path) -> None:
    """Fail, naming the first missing digest, when the image store lacks an image of ``frame``."""
    missing = [d for d in dict.fromkeys(list(frame["input_digest"]) + list(frame["target_digest"])) if not store.path(d).is_file()]
    if missing:
        raise FileNotFoundError(f"image store {store.root} lacks {len(missing)} image(s) of {manifest}, e.g. {missing[0]}")


class PairDataset(torch.utils.data.Dataset):
    """Manifest rows -> images in [-1, 1] (or their cached latent statistics) and the instruction.

    ``target_images``: with a latent cache, also give the target image (unflipped, as the uncached
    ``target``), for losses in pixel space.
    """

    def __init__(self, frame, store, resolution: int, latent_cache=None, target_images: bool = False):
        self.rows = frame[list(MANIFEST_COLUMNS)].to_dict("records")
        self.store, self.resolution, self.latent_cache = store, resolution, latent_cache
        self.target_images = target_images

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        from instructcv_core.training.latent_cache import load_image

        row = self.rows[index]
        item = {"index": index, "instruction": row["instruction"]}
        if self.latent_cache is not None:  # (2 flips, 2 [mean, std], C, h, w) each
            item["input_stats"] = self.latent_cache[row["input_digest"]]
            item["target_stats"] = self.latent_cache[row["target_digest"]]
            if self.target_images:
                item["target"] = load_image(self.store, row["target_digest"], self.resolution)
        else:
            item["input"] = load_image(self.store, row["input_digest"], self.resolution)
            item["target"] = load_image(self.store, row["target_digest"], self.resolution)
        return item


class EpochPermutationSampler(torch.utils.data.Sampler):
    """A fresh permutation per epoch seeded by (seed, epoch): the data order never depends on RNG state."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:  # accelerate's DataLoaderShard calls this
        self.epoch = epoch

    def __iter__(self):
        return iter(torch.randperm(self.size, generator=seeded_generator(self.seed, "epoch", self.epoch)).tolist())

    def __len__(self) -> int:
        return self.size


def make_loader(dataset: PairDataset, batch_size: int, seed: int, num_workers: int = 0) -> torch.utils.data.DataLoader:
    """Full batches of ``dataset`` in the seeded per-epoch order (a last partial batch is dropped)."""
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=EpochPermutationSampler(len(dataset), seed),
                                       drop_last=True, num_workers=num_workers)


def seeded_generator(*keys) -> torch.Generator:
    """A CPU generator seeded from ``keys`` (e.g. (seed, step, micro-batch, rank)) via a SeedSequence."""
    words = [int(k) if isinstance(k, (int, np.integer)) else int.from_bytes(hashlib.sha256(str(k).encode()).digest()[:4], "little") for k in keys]
    seed = int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0] & ((1 << 63) - 1))
    return torch.Generator().manual_seed(seed)
