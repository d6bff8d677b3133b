"""Mini SUN RGB-D: ``SUNRGBD.zip`` with scene folders of four sensors, in the real on-disk format.

Scenes use the SMALL_ROOMS style (closer walls and objects, lower and wider camera than the NYU
training scenes) and image sizes around 176x132 that differ per sensor. Now and then a far window
(8.3-9.8 m, beyond the 8.192 m where the rotated encoding wraps) opens in the wall, so the decoder's
8 m cap matters. ``depth_bfx/`` holds the rendered depth; ``depth/`` the same with about 5 % of the
pixels lost in 4x4 blocks (0 = missing). Both are uint16 millimetres rotated left by 3 bits.
``kv1/NYUdata`` scenes (``sizes["nyu"]``) come on top of the ``sizes["test"]`` others, which are
spread over kv1/b3dodata, kv2/kinect2data, realsense/lg and xtion/sun3ddata.
"""

from __future__ import annotations

import io
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from instructcv_core.data.mini.pack import pack_zip
from instructcv_core.data.mini.scenes import KINDS, SMALL_ROOMS, Scene, render_scene

ARCHIVES = ("SUNRGBD.zip",)
DEFAULT_SIZES = {"test": 60, "nyu": 8}
SUBSETS = (("kv1", "b3dodata"), ("kv2", "kinect2data"), ("realsense", "lg"), ("xtion", "sun3ddata"))
SENSOR_SIZE = {"kv1": (176, 132), "kv2": (182, 132), "realsense": (170, 132), "xtion": (176, 132)}
SCENE_TYPES = ("bedroom", "office", "classroom", "bathroom", "living_room", "kitchen",
               "dining_area", "conference_room", "study_space", "rest_space", "corridor", "lab")
OBJECT_KINDS = [KINDS[k] for k in ("person", "chair", "bottle", "tv", "cat", "dog")]
WINDOW_PROBABILITY = 0.35
WINDOW_DEPTH_M = (8.3, 9.8)
HOLE_FRACTION = 0.05
HOLE_BLOCK = 4
_BUILDINGS = ("brown_bm_1", "mit_32_d507", "harvard_c5", "hotel_umd")


@dataclass(frozen=True)
class SunScene:
    """One planned scene folder: ``<sensor>/<subset>/<scene>`` and its file stem."""

    index: int
    sensor: str
    subset: str
    scene: str
    stem: str
    width: int
    height: int
    scene_type: str

    @property
    def image_id(self) -> str:
        return f"{self.sensor}/{self.subset}/{self.scene}"


@dataclass
class SunSample:
    image: np.ndarray  # uint8 (H, W, 3)
    depth_m: np.ndarray  # float32 metres, dense (depth_bfx)
    raw_m: np.ndarray  # float32 metres with 0 = missing (depth)
    window: np.ndarray  # bool: the far-window pixels (possibly empty)
    focal_px: float
    cy: float


def encode_sunrgbd_depth(depth_m: np.ndarray) -> np.ndarray:
    """Metres -> SUN RGB-D PNG values: whole millimetres with the 16 bits rotated left by 3."""
    mm = np.clip(np.rint(depth_m * 1000.0), 0, 65535).astype(np.uint16)
    return (mm << np.uint16(3)) | (mm >> np.uint16(13))


def plan(seed: int, sizes: dict[str, int]) -> list[SunScene]:
    rng = np.random.default_rng([seed, 0])
    entries = [("kv1", "NYUdata")] * sizes["nyu"]
    entries += [SUBSETS[i % len(SUBSETS)] for i in range(sizes["test"])]
    scenes, counters = [], {}
    for index, (sensor, subset) in enumerate(entries):
        k = counters[subset] = counters.get(subset, 0) + 1
        scene, stem = _scene_name(rng, subset, k)
        w, h = SENSOR_SIZE[sensor]
        scene_type = SCENE_TYPES[int(rng.integers(len(SCENE_TYPES)))]
        scenes.append(SunScene(index, sensor, subset, scene, stem, w, h, scene_type))
    return scenes


def render_sun_scene(seed: int, entry: SunScene) -> SunSample:
    rng = np.random.default_rng([seed, 1, entry.index])
    scene = render_scene(rng, entry.width, entry.height, OBJECT_KINDS, (1, 3), SMALL_ROOMS)
    depth = scene.depth_m.copy()
    image = scene.image.copy()
    window = np.zeros(depth.shape, bool)
    if rng.random() < WINDOW_PROBABILITY:
        window = _window_mask(rng, scene)
        depth[window] = rng.uniform(*WINDOW_DEPTH_M)
        image[window] = np.clip(rng.normal((150, 190, 235), 6, (int(window.sum()), 3)), 0, 255).astype(np.uint8)
    h, w = depth.shape
    blocks = rng.random((-(-h // HOLE_BLOCK), -(-w // HOLE_BLOCK))) < HOLE_FRACTION
    holes = np.kron(blocks, np.ones((HOLE_BLOCK, HOLE_BLOCK), bool))[:h, :w]
    raw = np.where(holes, 0.0, depth).astype(np.float32)
    return SunSample(image, depth.astype(np.float32), raw, window, scene.focal_px, _horizon_row(scene))


def write_archives(out_dir: Path, seed: int, sizes: dict[str, int]) -> list[Path]:
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        for entry in plan(seed, sizes):
            _write_scene(Path(tmp) / "SUNRGBD" / entry.image_id, entry, render_sun_scene(seed, entry))
        return [pack_zip(Path(tmp), out_dir / "SUNRGBD.zip")]


def _write_scene(folder: Path, entry: SunScene, sample: SunSample) -> None:
    for sub in ("image", "depth", "depth_bfx", "extrinsics"):
        (folder / sub).mkdir(parents=True)
    buf = io.BytesIO()
    Image.fromarray(sample.image).save(buf, "JPEG", quality=92)
    (folder / "image" / f"{entry.stem}.jpg").write_bytes(buf.getvalue())
    for sub, depth in (("depth", sample.raw_m), ("depth_bfx", sample.depth_m)):
        ok, png = cv2.imencode(".png", encode_sunrgbd_depth(depth))
        (folder / sub / f"{entry.stem}.png").write_bytes(png.tobytes())
    f, cx = sample.focal_px, entry.width / 2
    rows = ((f, 0.0, cx), (0.0, f, sample.cy), (0.0, 0.0, 1.0))
    (folder / "intrinsics.txt").write_text("".join(" ".join(f"{v:.6f}" for v in r) + "\n" for r in rows))
    (folder / "extrinsics" / "20150101000000.txt").write_text(
        "1.000000 0.000000 0.000000 0.000000\n0.000000 1.000000 0.000000 0.000000\n"
        "0.000000 0.000000 1.000000 0.000000\n"
    )
    (folder / "scene.txt").write_text(entry.scene_type)


def _scene_name(rng, subset: str, k: int) -> tuple[str, str]:
    """(scene path below the subset, file stem), shaped like the real names of each subset."""
    if subset == "NYUdata":
        return f"NYU{k:04d}", f"NYU{k:04d}"
    if subset == "b3dodata":
        name = f"img_{k * 37 % 1000:04d}"
        return name, name
    frame = int(rng.integers(1, 600))
    if subset == "kinect2data":
        stamp = f"2014-05-26_14-{int(rng.integers(60)):02d}-{int(rng.integers(60)):02d}"
        return f"{k:06d}_{stamp}_260595134347_rgbf{frame:06d}-resize", f"{frame:07d}"
    if subset == "lg":
        hour, second = int(rng.integers(8, 20)), int(rng.integers(60))
        return f"2014_10_2{k % 10}-{hour:02d}_{k:02d}_{second:02d}-13110000{k:02d}", f"{frame:07d}"
    building = _BUILDINGS[k % len(_BUILDINGS)]
    stem = f"{k:07d}-{int(rng.integers(10**9, 10**10)):012d}"
    return f"{building}/{building}/{stem}", stem


def _window_mask(rng, scene: Scene) -> np.ndarray:
    """A rectangle of the visible back wall (objects and the poster stay in front of it)."""
    h, w = scene.depth_m.shape
    wall = scene.stuff["wall"]
    rows = np.nonzero(wall.any(axis=1))[0]
    if len(rows) < 8:
        return np.zeros((h, w), bool)
    y0 = int(rows[0] + rng.uniform(0.05, 0.2) * len(rows))
    y1 = int(y0 + rng.uniform(0.3, 0.6) * len(rows))
    x0 = int(rng.uniform(0.05, 0.55) * w)
    x1 = int(x0 + rng.uniform(0.2, 0.35) * w)
    window = np.zeros((h, w), bool)
    window[y0:y1, x0:x1] = True
    return window & wall


def _horizon_row(scene: Scene) -> float:
    """The principal row cy of the level camera: from a floor pixel, row + 0.5 - f * cam_h / z."""
    floor = scene.stuff["floor"] & (scene.depth_m > 0)
    ys, xs = np.nonzero(floor)
    if len(ys) == 0:
        return scene.depth_m.shape[0] / 2
    i = int(np.argmax(ys))
    return float(ys[i] + 0.5 - scene.focal_px * scene.camera_height_m / scene.depth_m[ys[i], xs[i]])
