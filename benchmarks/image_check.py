"""Image checking throughput: a sequential `check_image` loop vs the thread pool of `check_images`.

Every dataset reader fully decodes each image once to catch corrupt or truncated files; on COCO
train (118,287 JPEGs) that decode is the reader's whole cost. This writes N 640x480 JPEGs
(smooth noise, quality 90, about the size and entropy of a COCO photo) and times both ways.

    python benchmarks/image_check.py [--n 400]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from instructcv_core.data.datasets.base import check_image, check_images

WIDTH, HEIGHT = 640, 480
WORKERS = (1, 2, 4)


def write_jpegs(folder: Path, n: int) -> list[Path]:
    """``n`` distinct 640x480 JPEGs: coarse random noise upsampled bilinearly, plus fine grain."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        coarse = Image.fromarray(rng.integers(0, 256, (HEIGHT // 16, WIDTH // 16, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((WIDTH, HEIGHT), Image.BILINEAR), dtype=np.int16)
        grain = rng.integers(-12, 13, (HEIGHT, WIDTH, 3), dtype=np.int16)
        path = folder / f"{i:06d}.jpg"
        Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def timed(fn) -> tuple[float, list]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="number of JPEGs to write and check")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_jpegs(Path(tmp), args.n)
        mib = sum(p.stat().st_size for p in paths) / 2**20
        check_images(paths[:8], workers=2)  # warm the page cache and import the JPEG plugin

        sequential, expected = timed(lambda: [check_image(p) for p in paths])
        assert all(size == (WIDTH, HEIGHT) for size in expected)
        pooled = {}
        for workers in WORKERS:
            pooled[workers], result = timed(lambda w=workers: check_images(paths, workers=w))
            assert result == expected

    print(f"{args.n} JPEGs {WIDTH}x{HEIGHT}, {mib:.1f} MiB; {os.cpu_count()} CPUs")
    print(f"check_image loop       : {sequential:6.2f} s  {args.n / sequential:7.1f} images/s")
    for workers, seconds in pooled.items():
        print(
            f"check_images workers={workers}: {seconds:6.2f} s  {args.n / seconds:7.1f} images/s"
            f"  speed-up {sequential / seconds:.2f}x"
        )


if __name__ == "__main__":
    main()
