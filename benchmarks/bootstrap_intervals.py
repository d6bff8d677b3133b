"""The cost of the 95 % bootstrap intervals (1,000 resamples) per benchmark-sized metric.

    python benchmarks/bootstrap_intervals.py [--images 60] [--resamples 1000]

Synthetic per-image inputs sized like a mini benchmark (default 60 test images): segmentation
counts over 150 classes (ADE20K), COCO detection with 9 categories under both protocols, per-image
means (depth, accuracy). Prints the seconds each interval takes, and the pycocotools ``accumulate``
route for comparison (what a resample would cost without the vectorised accumulation).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from instructcv_core.evaluation.intervals import PerImageMean, PooledIoU, bootstrap_interval
from instructcv_core.evaluation.protocols import paper, standard


def detection_inputs(rng, n_images: int, categories: list[str]):
    images = []
    for i in range(n_images):
        gt = [(categories[rng.integers(len(categories))], (*rng.uniform(0, 100, 2), 20.0, 20.0), 0) for _ in range(3)]
        dets = [(c, (b[0] + rng.normal(0, 3), b[1] + rng.normal(0, 3), 20, 20), float(rng.uniform())) for c, b, _ in gt]
        dets += [(categories[rng.integers(len(categories))], (*rng.uniform(0, 100, 2), 20, 20), float(rng.uniform()))
                 for _ in range(5)]
        images.append((i + 1, 128, 128, gt, dets))
    return images


def timed(label: str, statistic, resamples: int) -> None:
    start = time.perf_counter()
    interval = bootstrap_interval(statistic, resamples=resamples)
    print(f"{label:38s} n={interval.n:4d}  [{interval.low:8.3f}, {interval.high:8.3f}]  {time.perf_counter() - start:6.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n, b = args.images, args.resamples

    inter = {str(i): {c: int(rng.integers(0, 50)) for c in range(150) if rng.uniform() < 0.1} for i in range(n)}
    union = {i: {c: v + int(rng.integers(1, 50)) for c, v in d.items()} for i, d in inter.items()}
    timed("segmentation mIoU (150 classes, pooled)", PooledIoU(inter, union), b)
    timed("per-image mean (depth, accuracy)", PerImageMean({str(i): float(v) for i, v in enumerate(rng.uniform(0, 1, n))}), b)

    categories = [f"c{k}" for k in range(9)]
    images = detection_inputs(rng, n, categories)
    result = standard.detection_ap(images, categories)
    for metric in ("ap", "ap50", "ap75"):  # one accumulation per resample, shared by the three
        timed(f"standard COCO {metric} (9 categories)", result["bootstrap"][metric], b)
    folders = [(f"{i}_{c}_det", [(x, y, x + 20, y + 20) for cc, (x, y, _, _), _ in gt if cc == c],
                [(d[1][0], d[1][1], d[1][0] + 20, d[1][1] + 20) for d in dets if d[0] == c])
               for i, _, _, gt, dets in images for c in sorted({g[0] for g in gt})]
    official = paper.detection_map(folders)
    for metric in ("map", "map50"):
        timed(f"paper COCO {metric}", official["bootstrap"][metric], b)

    # for comparison: pycocotools' own accumulate on 100 resamples
    import contextlib
    import copy
    import io

    from instructcv_core.evaluation.metrics import coco_detection_ap

    evaluator = coco_detection_ap([(i, w, h) for i, w, h, _, _ in images],
                                  [{"image_id": i, "category_id": categories.index(c) + 1, "bbox": list(box), "iscrowd": 0}
                                   for i, _, _, gt, _ in images for c, box, _ in gt],
                                  [(i, categories.index(c) + 1, list(box), s) for i, _, _, _, dets in images for c, box, s in dets],
                                  range(1, 10))["evaluator"]
    p = evaluator._paramsEval
    start = time.perf_counter()
    for row in np.random.default_rng(0).integers(0, n, size=(100, n)):
        sub = copy.copy(evaluator)
        sub.params = params = copy.deepcopy(p)
        params.imgIds = [p.imgIds[i] for i in row]
        params.areaRng, params.areaRngLbl, params.maxDets = [p.areaRng[0]], ["all"], [100]
        sub.evalImgs = [evaluator.evalImgs[k * len(p.areaRng) * len(p.imgIds) + i] for k in range(9) for i in row]
        sub._paramsEval = copy.deepcopy(params)
        with contextlib.redirect_stdout(io.StringIO()):
            sub.accumulate(params)
    per = (time.perf_counter() - start) / 100
    print(f"{'pycocotools accumulate, per resample':38s} {per * 1000:6.2f} ms  (x {b} = {per * b:.1f} s per metric set)")


if __name__ == "__main__":
    main()
