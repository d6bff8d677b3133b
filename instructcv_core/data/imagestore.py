"""Content-addressed image store: every image is a PNG file named by the sha256 of its bytes.

Why files rather than bytes inside Parquet: an image shared by many pairs (the input of every
instruction asked of one image) is stored once; the manifest stays small enough to open in pandas;
training data loaders, the Dagster UI previews and a person with an image viewer all read the same
files; a partly written shard never corrupts another. At the scale of the paper (~180k pairs) this
is ~0.4M small files, which any local or network file system handles; for object stores, pack the
store into tar shards (the digests stay valid).

Layout: ``<root>/<first two hex digits>/<sha256>.png``. PNG encoding is deterministic for given
pixels, so the same image always gets the same digest and writes are idempotent.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

PNG_COMPRESS_LEVEL = 6  # fixed: the digest depends on it


def png_bytes(image: np.ndarray) -> bytes:
    """Encode a uint8 RGB (H, W, 3) or gray (H, W) array as PNG, deterministically."""
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def pixel_digest(image: np.ndarray) -> str:
    """sha256 of the decoded pixels and their shape: equal for the same picture in any file format."""
    h = hashlib.sha256()
    h.update(repr((image.shape, str(image.dtype))).encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


class ImageStore:
    """A folder of PNGs addressed by the sha256 of their bytes."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, digest: str) -> Path:
        return self.root / digest[:2] / f"{digest}.png"

    def put(self, image: np.ndarray) -> str:
        """Store ``image`` (if not already there); return its digest."""
        data = png_bytes(image)
        digest = hashlib.sha256(data).hexdigest()
        path = self.path(digest)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{digest[:8]}.", suffix=".tmp", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, path)  # concurrent writers of the same digest write the same bytes
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return digest

    def get(self, digest: str) -> np.ndarray:
        """The stored image as a uint8 array."""
        with Image.open(self.path(digest)) as im:
            return np.asarray(im.convert("RGB") if im.mode not in ("RGB", "L") else im)

    def verify(self, digest: str) -> bool:
        """True when the file exists and its bytes still hash to ``digest``."""
        path = self.path(digest)
        return path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == digest
