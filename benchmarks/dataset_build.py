"""Pair-building cost per task at realistic image sizes, against the bare image-codec cost.

    python benchmarks/dataset_build.py [--resolution 256] [--image-size 640x480]
                                       [--images-per-task 60] [--workers 1] [--repeats 3]

Source data. The mini-benchmark writers render small images (~160x120) on purpose, and real
images are ~640x480 (COCO, ADE20K, NYUv2, Pets): resize, PNG and label costs all grow with the
pixel count, so small images would measure mostly per-call overhead. Rather than upscaling the
mini archives (and every label format with them), this script renders its own scenes at
``--image-size`` with the mini renderer (`instructcv_core.data.mini.scenes`) and writes them, with
their labels, in the formats the real readers produce and `instructcv_core.data.labels` decodes:

- segmentation: an ADE20K-layout root (``images/training/*.jpg``, JPEG q90 as the mini writer;
  ``annotations/training/*.png`` single-channel objectInfo150 indices with the mini's class ids;
  ``objectInfo150.txt``); records come from the real reader `instructcv_core.data.datasets.ade20k.read`.
- detection: COCO-style JPEGs (q90) and records with the visible-pixel boxes of every object
  (COCO category names and ids; no crowd boxes; detection needs no masks).
- depth: NYUv2 "sync"-style frames: ``rgb_*.jpg`` (q95) and a 16-bit millimetre ``sync_depth_*.png``
  (``png_uint16_mm``) with the mini's Kinect-like quantisation and holes; split ``train_sync``.
- classification: Oxford-IIIT Pet-style JPEGs (q90) of one cat- or dog-shaped pet (the mini's
  breeds), ``label_name`` = breed, ``species``; class names = the 37 real breeds. The default
  config makes 4 pairs per image (binary cat/dog x 2, breed positive + 1 negative).

All units have role "train" (no original-resolution copies are stored; test units would add one
full-size PNG per input and per target to both sides of the comparison).

Measured, per task, on the same N images:

- pipeline: ``build_units(units, BuildConfig(resolution=R), store, workers=W)`` into a fresh,
  empty store (nothing cached); pairs/s per core = pairs / seconds / W (so the process-pool start
  is included when W > 1);
- codec only, in this process (one core): per image, open + decode the source (PIL, convert RGB),
  LANCZOS-resize to RxR and PNG-encode it (compress level as `ImageStore`), then for every pair
  LANCZOS-resize and PNG-encode that pair's real target array: the same resize + encode operations
  as the pipeline, on the same pixels. The target arrays are made beforehand, outside the timer;
  label decoding, target drawing, pixel digests, sha256 and file writes are not timed here.

The ratio (pipeline / codec-only, per core) says how much of the pipeline's time is the codec work
it cannot avoid; target >= 0.7. Each measurement is the best of ``--repeats`` runs. Columns:
images and pairs built, PNG files the pipeline wrote, pipeline pairs/s per core (and images/s per
core), codec-only pairs/s (one core), ratio, and the same ratio from CPU seconds instead of wall
seconds (pipeline: this process plus its pool workers, `os.times`; codec: `time.process_time`).
The CPU-time ratio moves much less than the wall one when other processes compete for the cores;
it leaves out time the pipeline spends idle (waiting for the pool to start, for the last
chunk, or for I/O). With ``--workers`` > 1 the pool's start (spawned workers import numpy, Pillow,
OpenCV, pyarrow: ~0.4 s wall, ~0.2 s CPU each) and the split into chunks of 32 units (60 images =
2 chunks) are part of the pipeline's time, as they are in a real build; measure with more images
(``--images-per-task 240``) to see the steady state, and on an otherwise idle machine.

Dedup: the store skips writing an image whose digest it already has (it still encodes it to know
the digest). Classification targets are solid colour blocks, so most of them dedupe to a few
files; the printed "files" column is the number of PNGs the pipeline actually wrote.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

# Only what `instructcv_core.construction.pairs` loads anyway: pool workers are spawned and re-import this module,
# so the data generators' imports (h5py, scipy via the mini writers) live inside the functions.
from instructcv_core.data.imagestore import PNG_COMPRESS_LEVEL
from instructcv_core.construction.config import BuildConfig
from instructcv_core.construction.pairs import WorkUnit, build_units
from instructcv_core.tasks import TASK_NAMES as TASKS
from instructcv_core.tasks import task as registered_task
from instructcv_core.data.records import Box, ImageRecord

TARGET_RATIO = 0.7


# ---------------------------------------------------------------------------------------------
# source data at realistic sizes


def _save_jpeg(image: np.ndarray, path: Path, quality: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, "JPEG", quality=quality)


def make_segmentation(root: Path, n: int, size: tuple[int, int], seed: int) -> list[WorkUnit]:
    """ADE20K layout at ``size``; records from the real ADE20K reader."""
    from instructcv_core.data.datasets import ade20k as ade20k_reader
    from instructcv_core.data.mini import ade20k as mini_ade20k
    from instructcv_core.data.mini.scenes import INDOOR, KINDS, OUTDOOR, render_scene

    width, height = size
    (root / "annotations" / "training").mkdir(parents=True)
    for i in range(n):
        rng = np.random.default_rng([seed, 0, i])
        outdoor = bool(rng.random() < mini_ade20k.OUTDOOR_PROB)
        kinds = [KINDS[k] for k in mini_ade20k.TRAIN_KINDS]
        scene = render_scene(rng, width, height, kinds, (1, 4), OUTDOOR if outdoor else INDOOR)
        label = np.zeros((height, width), np.uint8)
        for stuff, value in (mini_ade20k.OUTDOOR_STUFF if outdoor else mini_ade20k.INDOOR_STUFF).items():
            label[scene.stuff[stuff]] = value
        for obj in scene.objects:
            label[obj.mask] = mini_ade20k.OBJECT_IDS[obj.kind.name]
        stem = f"ADE_train_{i + 1:08d}"
        _save_jpeg(scene.image, root / "images" / "training" / f"{stem}.jpg", mini_ade20k.JPEG_QUALITY)
        Image.fromarray(label).save(root / "annotations" / "training" / f"{stem}.png")
    zeros = np.zeros(len(mini_ade20k.OBJECT_INFO_NAMES) + 1, np.int64)
    (root / "objectInfo150.txt").write_text(
        mini_ade20k._object_info(zeros, {"training": zeros, "validation": zeros})
    )
    result = ade20k_reader.read(root, splits=("train",))
    if result.quarantine or len(result.records) != n:
        raise RuntimeError(f"ADE20K reader rejected the benchmark data: {result.quarantine[:3]}")
    return [WorkUnit("segmentation", "train", None, r, str(root)) for r in result.records]


def make_detection(root: Path, n: int, size: tuple[int, int], seed: int) -> list[WorkUnit]:
    """COCO-style JPEGs with one box per visible object."""
    from instructcv_core.data.mini import coco as mini_coco
    from instructcv_core.data.mini.scenes import INDOOR, KINDS, render_scene

    width, height = size
    units = []
    for i in range(n):
        rng = np.random.default_rng([seed, 1, i])
        scene = render_scene(rng, width, height, [KINDS[k] for k in mini_coco.TRAIN_KINDS], (1, 4), INDOOR)
        image_id = 100_000 + i
        rel = f"train2017/{image_id:012d}.jpg"
        _save_jpeg(scene.image, root / rel, mini_coco.JPEG_QUALITY)
        boxes = [
            Box(obj.kind.name, mini_coco.CATEGORIES[obj.kind.name][0], *map(float, obj.box))
            for obj in scene.objects
        ]
        record = ImageRecord(
            dataset="coco", image_id=str(image_id), split="train", image_path=rel, width=width, height=height,
            categories=sorted({b.category for b in boxes}), boxes=boxes,
        )
        units.append(WorkUnit("detection", "train", None, record, str(root)))
    return units


def make_depth(root: Path, n: int, size: tuple[int, int], seed: int) -> list[WorkUnit]:
    """NYUv2 sync-style frames: JPEG q95 + 16-bit millimetre depth PNG with Kinect-like holes."""
    import cv2

    from instructcv_core.data.datasets.nyuv2 import metres_to_mm_png
    from instructcv_core.data.mini import nyuv2 as mini_nyuv2
    from instructcv_core.data.mini.scenes import INDOOR, render_scene

    width, height = size
    units = []
    for i in range(n):
        rng = np.random.default_rng([seed, 2, i])
        scene = render_scene(rng, width, height, mini_nyuv2.OBJECT_KINDS, (1, 3), INDOOR)
        raw_m = mini_nyuv2.kinect_raw(rng, scene.depth_m)
        frame_dir = f"sync/{mini_nyuv2.SYNC_SCENES[i % len(mini_nyuv2.SYNC_SCENES)]}"
        rgb_rel, depth_rel = f"{frame_dir}/rgb_{i:05d}.jpg", f"{frame_dir}/sync_depth_{i:05d}.png"
        _save_jpeg(scene.image, root / rgb_rel, 95)
        if not cv2.imwrite(str(root / depth_rel), metres_to_mm_png(raw_m)):
            raise RuntimeError(f"could not write {root / depth_rel}")
        record = ImageRecord(
            dataset="nyuv2", image_id=f"{frame_dir}/{i:05d}", split="train_sync", image_path=rgb_rel,
            width=width, height=height, depth_path=depth_rel, depth_format="png_uint16_mm",
            label_name="bedroom",
        )
        units.append(WorkUnit("depth", "train", None, record, str(root)))
    return units


def make_classification(root: Path, n: int, size: tuple[int, int], seed: int) -> list[WorkUnit]:
    """Oxford-IIIT Pet-style JPEGs of one pet; class names = the 37 real breeds."""
    from instructcv_core.data.datasets.pets import BREEDS
    from instructcv_core.data.mini import pets as mini_pets
    from instructcv_core.data.mini.scenes import INDOOR, render_single_object

    width, height = size
    units = []
    for i in range(n):
        rng = np.random.default_rng([seed, 3, i])
        breed = mini_pets.MINI_BREEDS[i % len(mini_pets.MINI_BREEDS)]
        scene = render_single_object(rng, width, height, mini_pets.breed_kind(breed), INDOOR)
        name = f"{breed}_{i + 1}"
        rel = f"images/{name}.jpg"
        _save_jpeg(scene.image, root / rel, 90)
        species = mini_pets.species_of(breed)[1]
        record = ImageRecord(
            dataset="pets", image_id=name, split="trainval", image_path=rel, width=width, height=height,
            categories=[species], label=BREEDS.index(breed), label_name=breed, species=species,
        )
        units.append(WorkUnit("classification", "train", None, record, str(root), tuple(BREEDS)))
    return units


MAKERS = {
    "segmentation": make_segmentation,
    "detection": make_detection,
    "depth": make_depth,
    "classification": make_classification,
}


# ---------------------------------------------------------------------------------------------
# measurements


def _cpu_seconds() -> float:
    """User + system CPU time of this process and of its waited-for children (pool workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def time_pipeline(units: list[WorkUnit], config: BuildConfig, workers: int, scratch: Path) -> tuple[float, float, int, int]:
    """(wall seconds, CPU seconds, pairs, files written) of one `build_units` run into a fresh store."""
    with tempfile.TemporaryDirectory(dir=scratch) as store:
        cpu, start = _cpu_seconds(), time.perf_counter()
        result = build_units(units, config, Path(store), workers=workers)  # joins its pool on return
        seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
        if result.quarantine:
            raise RuntimeError(f"pipeline quarantined benchmark images: {result.quarantine[:3]}")
        files = sum(1 for _ in Path(store).glob("*/*.png"))
    return seconds, cpu, len(result.rows), files


def _resize_encode(image: Image.Image, resolution: int) -> bytes:
    buf = io.BytesIO()
    image.resize((resolution, resolution), Image.Resampling.LANCZOS).save(
        buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL
    )
    return buf.getvalue()


def time_codec(units: list[WorkUnit], config: BuildConfig) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, pairs) of the bare decode + resize + encode work, one core."""
    seconds, cpu, pairs = 0.0, 0.0, 0
    for unit in units:
        path = Path(unit.root) / unit.record.image_path
        with Image.open(path) as im:  # untimed: only to make this unit's real target arrays
            image = np.asarray(im.convert("RGB"))
        targets = [t.image for t in registered_task(unit.task).targets(unit.record, unit.root, image, unit.class_names, config)]
        cpu_start, start = time.process_time(), time.perf_counter()
        with Image.open(path) as im:
            source = im.convert("RGB")
        _resize_encode(source, config.resolution)
        for target in targets:
            _resize_encode(Image.fromarray(target), config.resolution)
        seconds += time.perf_counter() - start
        cpu += time.process_time() - cpu_start
        pairs += len(targets)
    return seconds, cpu, pairs


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH, e.g. 640x480, got {text!r}") from None
    if w < 32 or h < 32:
        raise argparse.ArgumentTypeError(f"image size {text} is too small for the scene renderer (min 32x32)")
    return w, h


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=256, help="training resolution (square)")
    parser.add_argument("--image-size", type=_size, default=(640, 480), metavar="WxH",
                        help="source image size; default 640x480 (realistic image sizes)")
    parser.add_argument("--images-per-task", type=int, default=60)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement; the best is reported")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task", action="append", choices=TASKS, help="only these tasks (repeatable)")
    args = parser.parse_args()
    config = BuildConfig(resolution=args.resolution)
    workers = max(1, args.workers)
    w, h = args.image_size
    print(f"pair building, {w}x{h} sources -> {args.resolution}x{args.resolution}, workers={workers}, "
          f"best of {args.repeats}; target: pipeline/codec ratio >= {TARGET_RATIO}")
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start (other processes skew timings)")
    header = (f"{'task':14s} {'images':>6s} {'pairs':>6s} {'files':>6s} {'pipeline pairs/s/core':>22s} "
              f"{'(images/s/core)':>15s} {'codec-only pairs/s/core':>24s} {'ratio':>6s} {'cpu-time ratio':>14s}")
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for task in args.task or TASKS:
            units = MAKERS[task](tmp / task, args.images_per_task, args.image_size, args.seed)
            pipe = [time_pipeline(units, config, workers, tmp) for _ in range(args.repeats)]
            codec = [time_codec(units, config) for _ in range(args.repeats)]
            pipe_s, pairs, files = min(p[0] for p in pipe), pipe[0][2], pipe[0][3]
            codec_s, codec_pairs = min(c[0] for c in codec), codec[0][2]
            cpu_ratio = min(c[1] for c in codec) / min(p[1] for p in pipe)
            if codec_pairs != pairs:
                raise RuntimeError(f"{task}: pipeline made {pairs} pairs, codec pass {codec_pairs}")
            pipe_rate = pairs / pipe_s / workers
            codec_rate = pairs / codec_s
            images_rate = len(units) / pipe_s / workers
            print(f"{task:14s} {len(units):6d} {pairs:6d} {files:6d} {pipe_rate:22.1f} {images_rate:15.1f} "
                  f"{codec_rate:24.1f} {pipe_rate / codec_rate:6.2f} {cpu_ratio:14.2f}", flush=True)


if __name__ == "__main__":
    main()
