"""Latent cache: every distinct input and target image encoded once by the frozen VAE.

Why: the VAE is frozen, and at small resolutions encoding both images of every training sample costs
more than the UNet step itself. What is cached is exactly what training needs from the encoder:

- for the **input** (the image condition), the posterior mode, unscaled, as the official code uses;
- for the **target**, the posterior mean and standard deviation, so that training draws the latent
  as ``mean + std * eps`` with ``eps`` from its own seeded generator: that is literally what
  ``vae.encode(x).latent_dist.sample()`` computes (diffusers' ``DiagonalGaussianDistribution``), so
  caching changes no distribution and, with the same ``eps``, reproduces the uncached latents.

A diagonal Gaussian's mode is its mean, so one (mean, std) pair per image serves both roles. Each
image is stored **twice, as is and mirrored**: the VAE is not exactly flip-equivariant, so the joint
horizontal flip of training must pick the encoding of the flipped image rather than flip a latent.
Stored values are float32 whatever the encoding dtype.

Format and place: one safetensors file per (VAE, resolution, set of images) in ``latent_cache/``
beside the manifest, ``vae-<vae hash>-r<resolution>-<digest-set hash>.safetensors``, holding one
float32 tensor ``stats`` of shape (N, 2 flips, 2 [mean, std], C, h, w) and, in the safetensors
header metadata, the sorted image digests (row order), the VAE fingerprint and the resolution.
Safetensors because it is a single file (written to a temporary name, then renamed: readers never
see a partial cache), needs no pickle, and is memory-mapped on read, so a paper-scale cache (about
64 KB per image at 256 px) is paged in row by row rather than loaded whole. The file name depends only
on its content, so concurrent runs (FP and RP share their images) write identical files, a second
run reuses the file without rewriting it, and any cache whose digests cover the requested ones is
reused (a task-filtered run reads the full manifest's cache).

The VAE fingerprint hashes every weight of the VAE (names, dtypes, shapes, bytes), its config and the
encoding dtype: a refitted or differently cast autoencoder never reads a stale cache.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from instructcv_core.data.imagestore import ImageStore

CACHE_FORMAT = "instructcv-latents-v1"
CACHE_FOLDER = "latent_cache"


def load_image(store: ImageStore, digest: str, resolution: int) -> torch.Tensor:
    """An image of the store as float32 (3, R, R) in [-1, 1] (gray is repeated; other sizes are resized)."""
    array = store.get(digest)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.shape[:2] != (resolution, resolution):
        # The store holds images at the training resolution; anything else is resized as the
        # official loader does (LANCZOS square resize, aspect ratio ignored).
        from PIL import Image

        array = np.asarray(Image.fromarray(array).resize((resolution, resolution), Image.LANCZOS))
    tensor = torch.from_numpy(np.array(array[:, :, :3], dtype=np.float32)).permute(2, 0, 1)
    return tensor / 127.5 - 1.0


@torch.no_grad()
def posterior_stats(vae, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE posterior of ``images`` ([-1, 1], on the VAE's device and dtype) as (mean, std)."""
    posterior = vae.encode(images).latent_dist
    return posterior.mean, posterior.std


def vae_fingerprint(vae, dtype: torch.dtype | None = None) -> str:
    """sha256 of the VAE's config, weights and the dtype it encodes in."""
    h = hashlib.sha256()
    h.update(json.dumps(dict(vae.config), sort_keys=True, default=str).encode())
    h.update(str(dtype or next(vae.parameters()).dtype).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def digest_set_hash(digests: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(set(digests))).encode()).hexdigest()


@dataclass
class LatentCache:
    """Read access to one cache file: ``cache[digest]`` -> float32 (2 flips, 2 [mean, std], C, h, w)."""

    path: Path
    index: dict[str, int]
    _handle: object = field(default=None, repr=False, compare=False)

    @classmethod
    def open(cls, path: Path) -> "LatentCache":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != CACHE_FORMAT:
            raise ValueError(f"{path} is not a latent cache of format {CACHE_FORMAT}")
        digests = json.loads(meta["digests"])
        return cls(Path(path), {d: i for i, d in enumerate(digests)})

    def __contains__(self, digest: str) -> bool:
        return digest in self.index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, digest: str) -> torch.Tensor:
        if self._handle is None:  # opened lazily, once per process (DataLoader workers included)
            from safetensors import safe_open

            self._handle = safe_open(str(self.path), framework="pt")
        i = self.index[digest]
        return self._handle.get_slice("stats")[i : i + 1][0]

    def __getstate__(self):  # the memory-mapped handle does not pickle; workers reopen it
        return {"path": self.path, "index": self.index, "_handle": None}

    def __setstate__(self, state):
        self.__dict__.update(state)


def cache_path(cache_dir: Path, fingerprint: str, resolution: int, digests: Iterable[str]) -> Path:
    return Path(cache_dir) / f"vae-{fingerprint[:16]}-r{resolution}-{digest_set_hash(digests)[:16]}.safetensors"


def find_cache(cache_dir: Path, fingerprint: str, resolution: int, digests: Iterable[str]) -> LatentCache | None:
    """An existing cache for this VAE and resolution that holds every digest, or None."""
    digests = set(digests)
    exact = cache_path(cache_dir, fingerprint, resolution, digests)
    candidates = [exact] if exact.exists() else []
    candidates += sorted(p for p in Path(cache_dir).glob(f"vae-{fingerprint[:16]}-r{resolution}-*.safetensors") if p != exact)
    for path in candidates:
        try:
            cache = LatentCache.open(path)
        except Exception:  # noqa: BLE001 - an unreadable or foreign file is simply not a usable cache
            continue
        if digests <= cache.index.keys():
            return cache
    return None


def build_cache(
    digests: Iterable[str],
    *,
    store: ImageStore,
    vae,
    resolution: int,
    cache_dir: Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    batch_size: int = 16,
    fingerprint: str | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[LatentCache, bool]:
    """Reuse or write the cache of ``digests``; returns (cache, built) where built says it was written now."""
    digests = sorted(set(digests))
    fingerprint = fingerprint or vae_fingerprint(vae, dtype)
    found = find_cache(cache_dir, fingerprint, resolution, digests)
    if found is not None:
        if log:
            log(f"latent cache: reusing {found.path} ({len(found)} images)")
        return found, False

    path = cache_path(cache_dir, fingerprint, resolution, digests)
    if log:
        log(f"latent cache: encoding {len(digests)} images (x2 with their mirror) into {path}")
    chunks = _encode_chunks(digests, store, vae, resolution, device, dtype, batch_size)
    metadata = {"format": CACHE_FORMAT, "vae_fingerprint": fingerprint, "resolution": str(resolution),
                "digests": json.dumps(digests)}
    _write_safetensors_streaming(path, "stats", chunks, len(digests), metadata)
    return LatentCache.open(path), True


@torch.no_grad()
def _encode_chunks(digests, store, vae, resolution, device, dtype, batch_size):
    """Yield float32 (n, 2 flips, 2 [mean, std], C, h, w) blocks in digest order."""
    for start in range(0, len(digests), batch_size):
        images = torch.stack([load_image(store, d, resolution) for d in digests[start : start + batch_size]])
        n = len(images)
        mean, std = posterior_stats(vae, torch.cat([images, images.flip(-1)]).to(device, dtype))
        stats = torch.stack([mean, std], dim=1).float().cpu()  # (2n, 2, C, h, w)
        yield torch.stack([stats[:n], stats[n:]], dim=1).contiguous()  # (n, 2 flips, 2, C, h, w)


def _write_safetensors_streaming(path: Path, name: str, chunks, rows: int, metadata: dict[str, str]) -> None:
    """Write one float32 tensor of ``rows`` rows as a safetensors file, block by block, atomically.

    The format is an 8-byte little-endian header length, a JSON header (dtype, shape, byte offsets,
    ``__metadata__``) padded with spaces to 8 bytes, then the raw little-endian data: streaming it
    keeps memory flat however large the cache is.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iterator = iter(chunks)
    first = next(iterator)
    row_shape = list(first.shape[1:])
    nbytes = rows * int(np.prod(row_shape)) * 4
    header = {name: {"dtype": "F32", "shape": [rows, *row_shape], "data_offsets": [0, nbytes]}, "__metadata__": metadata}
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    written = 0
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(struct.pack("<Q", len(encoded)))
            fh.write(encoded)
            for chunk in itertools.chain([first], iterator):
                if list(chunk.shape[1:]) != row_shape or chunk.dtype != torch.float32:
                    raise ValueError("latent blocks differ in shape or dtype")
                data = chunk.numpy().astype("<f4", copy=False).tobytes()
                fh.write(data)
                written += len(data)
        if written != nbytes:
            raise ValueError(f"wrote {written} bytes of latents, expected {nbytes}")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
