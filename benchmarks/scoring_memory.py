"""Peak memory of scoring an ADE20K-sized split under both protocols (streaming reducers).

The standard protocol asks every image for every class: ADE20K val is 2,000 images x 150 classes
= 300,000 outputs, each a score map at the label size (~512x683). Kept until the end of the split,
those maps would take 2,000 x 150 x 512 x 683 x 4 B = 420 GB; reduced as they arrive
(`evaluation.streaming`) the scorer holds one image's running argmax.

This writes a synthetic ADE20K root (objectInfo150.txt, label PNGs of random class rectangles),
then runs the real scorer (`tasks.segmentation.ClosedSetSegmentation.score`) on synthetic 256x256
outputs (each class's rectangle, or nothing, plus noise), made on the fly like a reader of stored
outputs would, and prints the wall time and the process's peak RSS (`ru_maxrss`).

    python benchmarks/scoring_memory.py [--images 2000] [--classes 150] [--height 512] [--width 683]
    python benchmarks/scoring_memory.py --images 4 --classes 12 --check   # equals the batch reducers
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
from PIL import Image

from instructcv_core.data.mini.ade20k import OBJECT_INFO_NAMES
from instructcv_core.data.records import ImageRecord
from instructcv_core.evaluation.config import EvalConfig
from instructcv_core.tasks.segmentation import ClosedSetSegmentation

OUTPUT_SIZE = 256


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def write_split(root: Path, images: int, classes: int, height: int, width: int, seed: int = 0):
    """objectInfo150.txt and ``images`` label PNGs; returns (records, rectangles per image)."""
    rng = np.random.default_rng(seed)
    names = [name.split(",")[0].strip() for name in OBJECT_INFO_NAMES]
    (root / "objectInfo150.txt").write_text("Idx\tRatio\tTrain\tVal\tName\n" + "".join(
        f"{i}\t0.0\t0\t0\t{name}\n" for i, name in enumerate(OBJECT_INFO_NAMES, start=1)))
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    records, rects = {}, {}
    for n in range(images):
        label = np.zeros((height, width), np.uint8)  # 0 = other (void)
        boxes = {}
        for index in rng.choice(np.arange(1, classes + 1), size=min(8, classes), replace=False):
            y0, x0 = int(rng.integers(0, height * 3 // 4)), int(rng.integers(0, width * 3 // 4))
            y1, x1 = y0 + int(rng.integers(height // 8, height // 3)), x0 + int(rng.integers(width // 8, width // 3))
            label[y0:y1, x0:x1] = index
        for index in np.unique(label):
            if index:
                ys, xs = np.nonzero(label == index)
                boxes[names[index - 1]] = (ys.min() / height, xs.min() / width, (ys.max() + 1) / height, (xs.max() + 1) / width)
        image_id = f"ADE_val_{n:08d}"
        Image.fromarray(label).save(root / "annotations" / f"{image_id}.png")
        records[image_id] = ImageRecord(dataset="ade20k", image_id=image_id, split="val", image_path=f"{image_id}.jpg",
                                        width=width, height=height, categories=sorted(boxes),
                                        mask_path=f"annotations/{image_id}.png", mask_format="ade20k_index")
        rects[image_id] = boxes
    return names[:classes], records, rects


def plan(records: dict, rects: dict, categories: list[str]) -> pd.DataFrame:
    """Every image asked for every class (standard) and its present classes (paper), as the planner does."""
    rows = []
    for image_id in records:
        for category in categories:
            rows.append({"query_id": f"{image_id}/{category}", "image_id": image_id, "category": category,
                         "output_digest": f"{image_id}|{category}", "paper": category in rects[image_id],
                         "standard": True})
    return pd.DataFrame(rows)


def synthetic_outputs(rects: dict, seed: int = 0, report_every: int = 0):
    """``output_image(digest)``: the class's rectangle in white (or nothing) on a noisy dark background.

    Every ``report_every`` outputs it prints how many were read, the time and the peak RSS so far
    (a flat RSS while the count grows is the point of streaming)."""
    noise = np.random.default_rng(seed).integers(0, 60, (OUTPUT_SIZE, OUTPUT_SIZE, 3), dtype=np.uint8)
    start, count = time.monotonic(), [0]

    def output_image(digest: str) -> np.ndarray:
        count[0] += 1
        if report_every and count[0] % report_every == 0:
            print(f"  {count[0]} outputs scored, {time.monotonic() - start:.0f} s, peak RSS {peak_rss_mib():.0f} MiB",
                  flush=True)
        image_id, category = digest.split("|", 1)
        out = noise.copy()
        box = rects[image_id].get(category)
        if box is not None:
            y0, x0, y1, x1 = (int(round(v * OUTPUT_SIZE)) for v in box)
            out[y0:y1, x0 + 2:x1] = 255  # slightly off the truth
        return out

    return output_image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--classes", type=int, default=150)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=683)
    parser.add_argument("--check", action="store_true", help="also compute the batch reducers (small runs only)")
    parser.add_argument("--report-every", type=int, default=0, help="print progress and peak RSS every N outputs")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.monotonic()
        categories, records, rects = write_split(root, args.images, args.classes, args.height, args.width)
        outputs = plan(records, rects, categories)
        print(f"split: {args.images} images x {args.classes} classes = {len(outputs)} outputs "
              f"({int(outputs['paper'].sum())} paper), labels {args.width}x{args.height}; "
              f"written in {time.monotonic() - start:.0f} s; peak RSS so far {peak_rss_mib():.0f} MiB", flush=True)
        bench = SimpleNamespace(categories=categories, spec=SimpleNamespace(background_class=False),
                                records=records, root=root)
        config = EvalConfig()
        output_image = synthetic_outputs(rects, report_every=args.report_every)
        start = time.monotonic()
        result = ClosedSetSegmentation().score(bench, outputs, output_image, None, config)
        seconds = time.monotonic() - start
        print(f"scored in {seconds:.0f} s ({len(outputs) / seconds:.0f} outputs/s): paper mIoU "
              f"{result['paper']['miou']:.3f}, standard mIoU {result['standard']['miou']:.3f} "
              f"(per-image values: {len(result['standard']['per_image'])})")
        print(f"peak RSS: {peak_rss_mib():.0f} MiB "
              f"(score maps of the whole split would be {args.images * args.classes * args.height * args.width * 4 / 2**30:.1f} GiB)")
        if args.check:
            return 0 if check(bench, outputs, output_image, config, result) else 1
    return 0


def check(bench, outputs, output_image, config, result) -> bool:
    """The batch reducers on the same outputs (every score map kept): must equal the streamed result."""
    from instructcv_core.evaluation.protocols import paper, standard
    from instructcv_core.tasks.base import per_image, record_size
    from instructcv_core.tasks.segmentation import _gt_masks, segmentation_mask, segmentation_scores

    index = {name: i for i, name in enumerate(bench.categories)}
    paper_samples, images, ids = [], [], []
    for image_id, group in outputs.groupby("image_id", sort=False):
        record = bench.records[image_id]
        masks, void = _gt_masks(bench, image_id)
        labels = np.full((record.height, record.width), 255, dtype=np.int32)
        for name, mask in masks.items():
            labels[mask] = index[name]
        labels[void] = 255
        scores = {}
        for row in group.itertuples():
            output = output_image(row.output_digest)
            if row.paper:
                paper_samples.append((image_id, row.category, segmentation_mask(output, config.paper_threshold, channel=2),
                                      masks[row.category]))
            scores[index[row.category]] = segmentation_scores(output, size=record_size(record))
        images.append((scores, labels))
        ids.append(image_id)
    seg = lambda items: standard.segmentation_miou(items, num_classes=len(bench.categories), ignore_index=255,  # noqa: E731
                                                   threshold=config.standard_threshold)
    expected_standard = {**seg(images), "per_image": per_image(seg, ids, images, "miou")}
    expected_paper = paper.segmentation_miou(paper_samples)
    # the bootstrap statistics (objects for the intervals) are not part of the batch reducers' result
    streamed = {p: {k: v for k, v in result[p].items() if k != "bootstrap"} for p in ("standard", "paper")}
    same = _equal(streamed["standard"], expected_standard) and _equal(streamed["paper"], expected_paper)
    print(f"streamed == batch: {same}")
    return same


def _equal(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, float) and a != a:
        return isinstance(b, float) and b != b
    return a == b


if __name__ == "__main__":
    sys.exit(main())
