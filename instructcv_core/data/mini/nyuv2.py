"""Mini NYU Depth v2: a MATLAB v7.3 labeled set, a MATLAB v5 split file and a BTS-style sync set.

Indoor scenes (160x120, 1-3 training-category objects) from the scene renderer. ``depths`` is the
rendered depth in metres (NYU's in-painted map is dense too); ``rawDepths`` is the same depth as a
Kinect measures it: quantised in disparity (step z^2 / 348 m, about 2.6 cm at 3 m) with about 5 %
of the pixels lost in 4x4 blocks (0 = missing). The mat is written with h5py in MATLAB's layout
(column-major dimensions reversed, gzip chunks, ``MATLAB_class`` attributes, a 512-byte user block
holding the "MATLAB 7.3 MAT-file" header, ``sceneTypes``/``scenes`` as cells of references to
uint16 char arrays); splits.mat is a v5 file with 1-based ``trainNdxs``/``testNdxs`` column vectors.
The sync set (``sync.zip``: ``sync/<scene>/rgb_%05d.jpg`` + ``sync_depth_%05d.png`` in mm) comes
with its shuffled BTS list file.
"""

from __future__ import annotations

import io
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import h5py
import numpy as np
import scipy.io
from PIL import Image

from instructcv_core.data.datasets.nyuv2 import MAT_NAME, SPLITS_NAME, SYNC_LIST_NAME, metres_to_mm_png
from instructcv_core.data.mini.pack import pack_zip
from instructcv_core.data.mini.scenes import INDOOR, KINDS, render_scene
from instructcv_core.data.records import atomic_write

ARCHIVES = (MAT_NAME, SPLITS_NAME, "sync.zip", SYNC_LIST_NAME)
DEFAULT_SIZES = {"train": 160, "test": 80, "sync": 120}
WIDTH, HEIGHT = 160, 120
SCENE_TYPES = ("bedroom", "kitchen", "living_room", "bathroom", "office")
SYNC_SCENES = ("bedroom_0004", "kitchen_0028a", "living_room_0010", "bathroom_0007", "office_0003", "kitchen_0028b")
OBJECT_KINDS = [KINDS[k] for k in ("person", "chair", "bottle", "tv", "cat", "dog")]
KINECT_K = 348.0  # depth (m) x disparity (1/8 px units): quantisation step z^2 / K
HOLE_FRACTION = 0.05
HOLE_BLOCK = 4

_MAT73_HEADER = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Fri Jan  1 00:00:00 2016 HDF5 schema 1.00 ."
_MAT5_HEADER = b"MATLAB 5.0 MAT-file, Platform: posix, Created on: Fri Jan  1 00:00:00 2016"


@dataclass
class Sample:
    image: np.ndarray  # uint8 (H, W, 3)
    depth_m: np.ndarray  # float32 (H, W), dense
    raw_m: np.ndarray  # float32 (H, W), Kinect-like with 0 = missing
    scene_type: str


def render_labeled_sample(seed: int, index0: int) -> Sample:
    """The ground truth of labeled sample ``index0`` (0-based position in the mat)."""
    rng = np.random.default_rng([seed, 1, index0])
    scene = render_scene(rng, WIDTH, HEIGHT, OBJECT_KINDS, (1, 3), INDOOR)
    scene_type = SCENE_TYPES[int(rng.integers(len(SCENE_TYPES)))]
    return Sample(scene.image, scene.depth_m, kinect_raw(rng, scene.depth_m), scene_type)


def render_sync_frame(seed: int, scene_index: int, frame: int) -> Sample:
    rng = np.random.default_rng([seed, 2, scene_index, frame])
    scene = render_scene(rng, WIDTH, HEIGHT, OBJECT_KINDS, (1, 3), INDOOR)
    return Sample(scene.image, scene.depth_m, kinect_raw(rng, scene.depth_m), SYNC_SCENES[scene_index])


def kinect_raw(rng: np.random.Generator, depth_m: np.ndarray) -> np.ndarray:
    """Disparity-quantised depth with block-shaped holes (0 = missing)."""
    valid = depth_m > 0
    disparity = np.rint(KINECT_K / np.where(valid, depth_m, 1.0))
    raw = np.where(valid, KINECT_K / disparity, 0.0).astype(np.float32)
    h, w = depth_m.shape
    blocks = rng.random((-(-h // HOLE_BLOCK), -(-w // HOLE_BLOCK))) < HOLE_FRACTION
    holes = np.kron(blocks, np.ones((HOLE_BLOCK, HOLE_BLOCK), bool))[:h, :w]
    raw[holes] = 0.0
    return raw


def split_indices(seed: int, sizes: dict[str, int]) -> dict[str, np.ndarray]:
    """1-based trainNdxs / testNdxs: a random partition of 1..N, each sorted as in the real file."""
    n = sizes["train"] + sizes["test"]
    perm = np.random.default_rng([seed, 0]).permutation(n) + 1
    return {"train": np.sort(perm[: sizes["train"]]), "test": np.sort(perm[sizes["train"] :])}


def sync_frames(sizes: dict[str, int]) -> list[tuple[int, int]]:
    """(scene index, frame number) of every sync frame: ``sync`` frames spread over the scenes."""
    n, k = sizes["sync"], len(SYNC_SCENES)
    return [(s, f) for s in range(k) for f in range(n // k + (1 if s < n % k else 0))]


def write_archives(out_dir: Path, seed: int, sizes: dict[str, int]) -> list[Path]:
    out_dir = Path(out_dir)
    n = sizes["train"] + sizes["test"]
    samples = [render_labeled_sample(seed, i) for i in range(n)]
    rng = np.random.default_rng([seed, 3])
    scene_names = [f"{s.scene_type}_{int(rng.integers(1, 120)):04d}" for s in samples]
    mat = out_dir / MAT_NAME
    atomic_write(mat, lambda tmp: write_mat73(Path(tmp), samples, scene_names))
    splits = out_dir / SPLITS_NAME
    atomic_write(splits, lambda tmp: write_splits(Path(tmp), split_indices(seed, sizes)))
    sync_zip, sync_list = _write_sync(out_dir, seed, sizes)
    return [mat, splits, sync_zip, sync_list]


def write_mat73(path: Path, samples: list[Sample], scene_names: list[str]) -> None:
    """The labeled set as MATLAB v7.3 writes it (HDF5, dimensions reversed, 512-byte header)."""
    with h5py.File(path, "w", userblock_size=512, track_order=False) as f:
        images = np.stack([s.image.transpose(2, 1, 0) for s in samples])  # (N, 3, W, H)
        _matlab_dataset(f, "images", images, "uint8")
        _matlab_dataset(f, "depths", np.stack([s.depth_m.T for s in samples]).astype(np.float32), "single")
        _matlab_dataset(f, "rawDepths", np.stack([s.raw_m.T for s in samples]).astype(np.float32), "single")
        refs = f.create_group("#refs#")
        _matlab_cell(f, refs, "sceneTypes", [s.scene_type for s in samples])
        _matlab_cell(f, refs, "scenes", scene_names)
    header = _MAT73_HEADER.ljust(116, b" ") + bytes(8) + b"\x00\x02" + b"IM"
    with open(path, "r+b") as fh:
        fh.write(header.ljust(512, b"\x00"))


def write_splits(path: Path, splits: dict[str, np.ndarray]) -> None:
    """splits.mat (MATLAB v5) with 1-based column vectors; a fixed header date for determinism."""
    buf = io.BytesIO()
    scipy.io.savemat(
        buf,
        {"trainNdxs": splits["train"].reshape(-1, 1).astype(np.float64),
         "testNdxs": splits["test"].reshape(-1, 1).astype(np.float64)},
        format="5",
    )
    data = bytearray(buf.getvalue())
    data[:116] = _MAT5_HEADER.ljust(116, b" ")
    path.write_bytes(bytes(data))


def _matlab_dataset(f: h5py.File, name: str, data: np.ndarray, matlab_class: str) -> None:
    chunks = (1, *data.shape[1:])  # one sample per chunk, like MATLAB's chunking of big arrays
    ds = f.create_dataset(name, data=data, chunks=chunks, compression="gzip", compression_opts=3)
    ds.attrs.create("MATLAB_class", np.bytes_(matlab_class))


def _matlab_cell(f: h5py.File, refs: h5py.Group, name: str, strings: list[str]) -> None:
    """A 1-by-N cell of strings: (1, N) references to (len, 1) uint16 char datasets in #refs#."""
    cell = f.create_dataset(name, (1, len(strings)), dtype=h5py.ref_dtype)
    for i, text in enumerate(strings):
        chars = refs.create_dataset(f"{name}_{i}", data=np.array([[ord(c)] for c in text], np.uint16))
        chars.attrs.create("MATLAB_class", np.bytes_("char"))
        chars.attrs.create("MATLAB_int_decode", np.int32(2))
        cell[0, i] = chars.ref
    cell.attrs.create("MATLAB_class", np.bytes_("cell"))


def _write_sync(out_dir: Path, seed: int, sizes: dict[str, int]) -> tuple[Path, Path]:
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        sync = Path(tmp) / "sync"
        for scene_index, frame in sync_frames(sizes):
            scene = SYNC_SCENES[scene_index]
            folder = sync / scene
            folder.mkdir(parents=True, exist_ok=True)
            sample = render_sync_frame(seed, scene_index, frame)
            buf = io.BytesIO()
            Image.fromarray(sample.image).save(buf, "JPEG", quality=95)
            (folder / f"rgb_{frame:05d}.jpg").write_bytes(buf.getvalue())
            ok, png = cv2.imencode(".png", metres_to_mm_png(sample.raw_m))
            (folder / f"sync_depth_{frame:05d}.png").write_bytes(png.tobytes())
            focal = INDOOR.focal_frac * WIDTH
            lines.append(f"/{scene}/rgb_{frame:05d}.jpg /{scene}/sync_depth_{frame:05d}.png {focal:.4f}\n")
        archive = pack_zip(Path(tmp), out_dir / "sync.zip")
    order = np.random.default_rng([seed, 4]).permutation(len(lines))  # the real list is shuffled
    listing = out_dir / SYNC_LIST_NAME
    atomic_write(listing, lambda t: Path(t).write_text("".join(lines[i] for i in order)))
    return archive, listing
