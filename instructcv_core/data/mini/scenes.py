"""Seeded renderer of small synthetic indoor/outdoor scenes with exact labels.

Every scene is a pinhole-camera view of a room: a textured back wall (or sky) at a known distance,
a textured ground plane, and a few objects of named categories standing on the ground. Each object
is a flat cut-out facing the camera, so its metric depth is one number and its size in pixels follows
from its physical height and distance. Because everything is drawn from geometry, the scene carries
exact labels for all four InstructCV tasks: per-pixel categories, visible-instance boxes, metric depth
and the category of the main object.

Conventions: images are uint8 RGB (H, W, 3); depth is float32 metres (H, W); boxes are ``xywh`` in
pixel-edge coordinates (a box over columns 10..19 has x=10, w=10).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw


@dataclass(frozen=True)
class ObjectKind:
    """A category of object: how it looks (shape, colour) and how big it is in the world."""

    name: str
    shape: str
    color: tuple[int, int, int]
    height_m: float
    aspect: float  # width / height


# Shapes the renderer knows; each is drawn inside the object's bounding rectangle.
SHAPES = (
    "ellipse", "rectangle", "triangle", "diamond", "star", "cross", "ring",
    "hexagon", "trapezoid", "semicircle", "arrow", "pentagon", "capsule", "house",
)

# Categories the training sets use. Names are real dataset category names so that instructions read
# naturally and the external sets can share or withhold categories exactly as real benchmarks do.
KINDS: dict[str, ObjectKind] = {
    k.name: k
    for k in (
        ObjectKind("person", "capsule", (226, 170, 130), 1.7, 0.38),
        ObjectKind("car", "trapezoid", (200, 30, 40), 1.4, 2.2),
        ObjectKind("cat", "triangle", (240, 140, 30), 0.5, 1.0),
        ObjectKind("dog", "ellipse", (120, 80, 40), 0.7, 1.5),
        ObjectKind("chair", "cross", (40, 170, 60), 0.9, 0.8),
        ObjectKind("bottle", "rectangle", (40, 90, 220), 0.35, 0.35),
        ObjectKind("bird", "diamond", (250, 230, 40), 0.3, 1.2),
        ObjectKind("tv", "ring", (60, 60, 70), 0.6, 1.4),
        ObjectKind("bus", "house", (250, 200, 20), 3.0, 2.5),
        # categories kept out of the training sets: they appear only in external test sets
        ObjectKind("sheep", "hexagon", (235, 235, 225), 0.9, 1.3),
        ObjectKind("boat", "semicircle", (150, 60, 170), 1.0, 2.0),
        ObjectKind("horse", "pentagon", (90, 50, 20), 1.6, 1.3),
        ObjectKind("starfish", "star", (255, 110, 150), 0.4, 1.0),
        ObjectKind("arrowhead", "arrow", (20, 200, 200), 0.5, 1.4),
    )
}


@dataclass(frozen=True)
class SceneStyle:
    """Camera and room statistics; external test sets use styles that differ from training."""

    wall_depth_m: tuple[float, float] = (6.0, 9.5)
    object_depth_m: tuple[float, float] = (1.8, 5.5)
    camera_height_m: tuple[float, float] = (1.2, 1.6)
    focal_frac: float = 0.8  # focal length in pixels / image width (NYUv2: 518.9 / 640)
    horizon_frac: tuple[float, float] = (0.35, 0.5)  # horizon row / image height
    sky: bool = False  # an outdoor scene: sky (infinite depth, reported as 0 = invalid) above the wall
    floor_tile_m: float = 0.5


INDOOR = SceneStyle()
# SUN RGB-D-like: smaller rooms, closer objects, a lower and wider camera.
SMALL_ROOMS = SceneStyle(
    wall_depth_m=(3.0, 6.0), object_depth_m=(0.8, 3.0), camera_height_m=(0.9, 1.2),
    focal_frac=0.65, horizon_frac=(0.4, 0.55), floor_tile_m=0.3,
)
OUTDOOR = SceneStyle(wall_depth_m=(8.0, 9.8), object_depth_m=(2.0, 7.0), sky=True, floor_tile_m=1.0)


@dataclass
class SceneObject:
    kind: ObjectKind
    depth_m: float
    mask: np.ndarray  # bool (H, W): visible pixels after occlusion
    box: tuple[int, int, int, int]  # xywh of the visible pixels


@dataclass
class Scene:
    image: np.ndarray
    depth_m: np.ndarray  # float32 metres; 0 where there is no measurement (sky)
    objects: list[SceneObject]  # drawn far to near
    stuff: dict[str, np.ndarray] = field(default_factory=dict)  # "wall" | "floor" | "sky" | "poster" masks
    camera_height_m: float = 0.0
    focal_px: float = 0.0


def render_scene(
    rng: np.random.Generator,
    width: int,
    height: int,
    kinds: list[ObjectKind],
    n_objects: tuple[int, int] = (1, 3),
    style: SceneStyle = INDOOR,
    min_visible_px: int = 24,
    max_tries: int = 50,
) -> Scene:
    """Render one scene with ``n_objects`` (inclusive range) objects drawn from ``kinds``.

    Objects are resampled until every one keeps at least half of its area visible and
    ``min_visible_px`` pixels, so every annotation is a real, visible object.
    """
    for _ in range(max_tries):
        scene = _try_render(rng, width, height, kinds, n_objects, style, min_visible_px)
        if scene is not None:
            return scene
    raise RuntimeError(f"could not place {n_objects} objects in a {width}x{height} scene")


def render_single_object(
    rng: np.random.Generator, width: int, height: int, kind: ObjectKind, style: SceneStyle = INDOOR
) -> Scene:
    """A scene whose main object fills much of the frame (classification and pet-style images)."""
    cam_h = rng.uniform(*style.camera_height_m)
    focal = style.focal_frac * width
    horizon = rng.uniform(*style.horizon_frac) * height
    wall_z = rng.uniform(*style.wall_depth_m)
    image, depth, stuff = _background(rng, width, height, cam_h, focal, horizon, wall_z, style)
    target_px = rng.uniform(0.45, 0.7) * min(height, width / kind.aspect)
    z = focal * kind.height_m / target_px
    h = target_px
    w = h * kind.aspect
    cx = width / 2 + rng.uniform(-0.1, 0.1) * width
    base = min(height - 1.0, horizon + focal * cam_h / z)
    rect = (cx - w / 2, base - h, cx + w / 2, base)
    shape_mask = _shape_mask(kind.shape, rect, width, height)
    _paint(rng, image, shape_mask, kind.color)
    depth[shape_mask] = z
    for m in stuff.values():
        m &= ~shape_mask
    obj = SceneObject(kind, float(z), shape_mask, _bbox(shape_mask))
    return Scene(finish(image), depth, [obj], stuff, cam_h, focal)


def _try_render(rng, width, height, kinds, n_objects, style, min_visible_px) -> Scene | None:
    cam_h = rng.uniform(*style.camera_height_m)
    focal = style.focal_frac * width
    horizon = rng.uniform(*style.horizon_frac) * height
    wall_z = rng.uniform(*style.wall_depth_m)
    image, depth, stuff = _background(rng, width, height, cam_h, focal, horizon, wall_z, style)

    count = int(rng.integers(n_objects[0], n_objects[1] + 1))
    placed = []
    for _ in range(count):
        kind = kinds[int(rng.integers(len(kinds)))]
        z = rng.uniform(style.object_depth_m[0], min(style.object_depth_m[1], wall_z - 0.3))
        h = focal * kind.height_m / z
        w = h * kind.aspect
        if h > 0.9 * height or w > 0.9 * width:  # too close for the frame: push it back
            z *= max(h / (0.9 * height), w / (0.9 * width))
            h, w = focal * kind.height_m / z, focal * kind.height_m / z * kind.aspect
        cx = rng.uniform(w / 2, width - w / 2)
        base = horizon + focal * cam_h / z  # row where the object touches the ground
        base = min(base, height - 1.0)
        placed.append((z, kind, (cx - w / 2, base - h, cx + w / 2, base)))

    placed.sort(key=lambda p: -p[0])  # far to near: nearer objects occlude farther ones
    full_masks = [_shape_mask(k.shape, rect, width, height) for _, k, rect in placed]
    objects = []
    for i, (z, kind, _rect) in enumerate(placed):
        visible = full_masks[i].copy()
        for nearer in full_masks[i + 1 :]:
            visible &= ~nearer
        area = int(full_masks[i].sum())
        if area == 0 or visible.sum() < max(min_visible_px, 0.5 * area):
            return None
        objects.append(SceneObject(kind, float(z), visible, _bbox(visible)))

    for (z, kind, _rect), full in zip(placed, full_masks):
        _paint(rng, image, full, kind.color)
        depth[full] = z
        for m in stuff.values():
            m &= ~full
    return Scene(finish(image), depth, objects, stuff, cam_h, focal)


def _background(rng, width, height, cam_h, focal, horizon, wall_z, style):
    """Wall (or sky) above, textured floor below; returns image, depth and stuff masks."""
    rows = np.arange(height, dtype=np.float32)[:, None] + 0.5
    cols = np.arange(width, dtype=np.float32)[None, :] + 0.5
    wall_row = horizon + focal * cam_h / wall_z  # where the floor meets the wall
    floor = np.broadcast_to(rows >= wall_row, (height, width)).copy()
    with np.errstate(divide="ignore"):
        floor_z = np.where(rows > horizon, focal * cam_h / np.maximum(rows - horizon, 1e-6), np.inf)
    floor_z = np.broadcast_to(floor_z, (height, width))
    depth = np.where(floor, floor_z, wall_z).astype(np.float32)

    image = np.empty((height, width, 3), np.float32)
    wall_rgb = rng.uniform(90, 220, 3)
    gradient = (rows / height - 0.5) * rng.uniform(-40, 40)
    image[:] = wall_rgb + gradient[..., None]
    image += _smooth_noise(rng, height, width, 6)[..., None] * 18

    # floor: perspective checker tiles in world coordinates (depth cue)
    finite_z = np.where(np.isfinite(floor_z), floor_z, 0.0)
    x_world = (cols - width / 2) * finite_z / focal
    tiles = (np.floor(x_world / style.floor_tile_m) + np.floor(finite_z / style.floor_tile_m)) % 2
    floor_a, floor_b = rng.uniform(40, 200, 3), rng.uniform(40, 200, 3)
    floor_rgb = np.where(tiles[..., None] > 0, floor_a, floor_b)
    image = np.where(floor[..., None], floor_rgb, image)

    stuff = {"floor": floor}
    wall = ~floor
    if style.sky:
        sky_row = wall_row - rng.uniform(0.15, 0.3) * height
        sky = np.broadcast_to(rows < sky_row, (height, width)) & wall
        sky_rgb = np.array([110, 160, 235], np.float32) + (rows / height * 60)[..., None]
        image = np.where(sky[..., None], np.broadcast_to(sky_rgb, image.shape), image)
        depth[sky] = 0.0  # no depth measurement for sky
        wall &= ~sky
        stuff["sky"] = sky
    # a poster on the wall: an "other"/unlabelled region for datasets that have one (ADE20K 0)
    poster = np.zeros((height, width), bool)
    pw, ph = rng.uniform(0.1, 0.2) * width, rng.uniform(0.08, 0.15) * height
    px, py = rng.uniform(0, width - pw), rng.uniform(0, max(1.0, wall_row - ph))
    poster[int(py) : int(py + ph), int(px) : int(px + pw)] = True
    poster &= wall
    image[poster] = rng.uniform(0, 255, 3)
    wall &= ~poster
    stuff["wall"] = wall
    stuff["poster"] = poster
    return image, depth, stuff


def _paint(rng, image, mask, color):
    """Fill ``mask`` with a jittered, shaded version of ``color`` and finalise the uint8 image."""
    base = np.clip(np.asarray(color, np.float32) + rng.uniform(-12, 12, 3), 0, 255)
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return
    shade = 1.0 + 0.15 * (ys - ys.mean()) / max(1.0, np.ptp(ys))
    image[ys, xs] = np.clip(base[None, :] * shade[:, None] + rng.normal(0, 4, (len(ys), 3)), 0, 255)


def _smooth_noise(rng, height, width, cells):
    coarse = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    img = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(img, np.float32)


def finish(image: np.ndarray) -> np.ndarray:
    """Float image -> uint8 RGB."""
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return (x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0)


def _shape_mask(shape: str, rect, width: int, height: int) -> np.ndarray:
    """Rasterise ``shape`` inside ``rect`` = (x0, y0, x1, y1) onto a (height, width) bool mask."""
    x0, y0, x1, y1 = rect
    w, h = x1 - x0, y1 - y0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)

    def poly(points):  # points in unit square coordinates (0..1, y down)
        draw.polygon([(x0 + u * w, y0 + v * h) for u, v in points], fill=255)

    if shape == "ellipse":
        draw.ellipse(rect, fill=255)
    elif shape == "rectangle":
        draw.rectangle(rect, fill=255)
    elif shape == "capsule":
        r = w / 2
        draw.rounded_rectangle(rect, radius=max(1.0, r), fill=255)
    elif shape == "triangle":
        poly([(0.5, 0), (1, 1), (0, 1)])
    elif shape == "diamond":
        poly([(0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)])
    elif shape == "trapezoid":
        poly([(0.25, 0), (0.75, 0), (1, 0.55), (1, 1), (0, 1), (0, 0.55)])
    elif shape == "house":
        poly([(0.5, 0), (1, 0.35), (1, 1), (0, 1), (0, 0.35)])
    elif shape == "hexagon":
        poly([(0.25, 0), (0.75, 0), (1, 0.5), (0.75, 1), (0.25, 1), (0, 0.5)])
    elif shape == "pentagon":
        poly([(0.5, 0), (1, 0.38), (0.81, 1), (0.19, 1), (0, 0.38)])
    elif shape == "semicircle":
        draw.pieslice((x0, y0, x1, y1 + h), 180, 360, fill=255)
    elif shape == "arrow":
        poly([(0, 0.3), (0.6, 0.3), (0.6, 0), (1, 0.5), (0.6, 1), (0.6, 0.7), (0, 0.7)])
    elif shape == "cross":
        poly([(0.33, 0), (0.67, 0), (0.67, 0.33), (1, 0.33), (1, 0.67), (0.67, 0.67),
              (0.67, 1), (0.33, 1), (0.33, 0.67), (0, 0.67), (0, 0.33), (0.33, 0.33)])
    elif shape == "ring":
        draw.ellipse(rect, fill=255)
        draw.ellipse((cx - w / 4, cy - h / 4, cx + w / 4, cy + h / 4), fill=0)
    elif shape == "star":
        angles = np.linspace(-np.pi / 2, 1.5 * np.pi, 11)[:-1]
        radii = np.where(np.arange(10) % 2 == 0, 0.5, 0.22)
        poly([(0.5 + r * np.cos(a), 0.5 + r * np.sin(a)) for r, a in zip(radii, angles)])
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    return np.asarray(canvas) > 0
