"""Mini PASCAL VOC 2012: ``VOCtrainval_11-May-2012.tar`` filled with rendered outdoor scenes.

Archive members exactly as published, under ``VOCdevkit/VOC2012/``: ``JPEGImages/<id>.jpg``,
``Annotations/<id>.xml``, ``SegmentationClass/<id>.png`` and ``SegmentationObject/<id>.png``
(palette PNGs with the standard VOC colour map), ``ImageSets/Main/{train,val,trainval}.txt`` with the
per-class ``<class>_<split>.txt`` lists, and ``ImageSets/Segmentation/{train,val,trainval}.txt``.

The external test set differs from training on purpose: outdoor scenes, 1-3 objects, and a mix of
training categories with categories no training set has (sheep, boat, horse). About 10% of objects
are ``difficult``; as in VOC, a difficult object is void (255) in the segmentation PNGs, and every
object is outlined by a 2-pixel void band (1 px inside, 1 px outside its visible boundary).
Segmentation and detection lists hold the same images except a few Main-only (unsegmented) ones.
"""

from __future__ import annotations

import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from instructcv_core.data.mini.pack import pack_tar
from instructcv_core.data.mini.scenes import KINDS, OUTDOOR, Scene, render_scene

ARCHIVES = ("VOCtrainval_11-May-2012.tar",)
DEFAULT_SIZES = {"train": 20, "val": 60}
SPLITS = ("train", "val")

CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
# scene kinds -> VOC names: training categories plus three no training set has
VOC_NAMES = {
    "person": "person", "car": "car", "cat": "cat", "dog": "dog", "bird": "bird", "bottle": "bottle",
    "chair": "chair", "bus": "bus", "tv": "tvmonitor", "sheep": "sheep", "boat": "boat", "horse": "horse",
}
POSES = ("Unspecified", "Frontal", "Left", "Right", "Rear")
IMAGE_SIZES = ((192, 144), (176, 132), (160, 120), (144, 192), (192, 128))  # (width, height)
DIFFICULT_PROB = 0.1
MAIN_ONLY_EVERY = 8  # position % 8 == 5 within a split: in Main only, not segmented
VOID = 255
JPEG_QUALITY = 90


@dataclass
class VocObject:
    name: str  # VOC class name
    mask: np.ndarray  # bool (H, W), visible pixels
    box: tuple[int, int, int, int]  # xywh, pixel-edge
    difficult: bool
    truncated: bool
    pose: str


@dataclass
class VocImage:
    scene: Scene
    objects: list[VocObject]


@dataclass(frozen=True)
class PlannedImage:
    image_id: str
    split: str
    index: int  # render index (position in the sorted list of all ids)
    segmented: bool


def voc_colormap() -> np.ndarray:
    """The standard VOC palette (256 x 3 uint8): bit-interleaved class index; 255 -> (224, 224, 192)."""
    cmap = np.zeros((256, 3), np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


def plan(seed: int, sizes: dict[str, int]) -> list[PlannedImage]:
    """Image ids (``YYYY_NNNNNN``, sorted), their split and whether they are segmented."""
    total = sizes["train"] + sizes["val"]
    rng = np.random.default_rng([_u(seed), 7])
    codes = np.sort(rng.choice(6 * 4000, size=total, replace=False))
    ids = [f"{2007 + c // 4000}_{c % 4000 + 1:06d}" for c in codes.tolist()]
    in_train = np.zeros(total, bool)
    in_train[rng.permutation(total)[: sizes["train"]]] = True
    planned, position = [], {"train": 0, "val": 0}
    for index, image_id in enumerate(ids):
        split = "train" if in_train[index] else "val"
        segmented = position[split] % MAIN_ONLY_EVERY != 5
        position[split] += 1
        planned.append(PlannedImage(image_id, split, index, segmented))
    return planned


def render_voc_image(seed: int, index: int) -> VocImage:
    """Regenerate the scene and objects of render index ``index``."""
    rng = np.random.default_rng([_u(seed), 2, index])
    width, height = IMAGE_SIZES[int(rng.integers(len(IMAGE_SIZES)))]
    scene = render_scene(rng, width, height, [KINDS[k] for k in VOC_NAMES], (1, 3), OUTDOOR)
    objects = []
    for obj in scene.objects:
        x, y, w, h = obj.box
        objects.append(
            VocObject(
                name=VOC_NAMES[obj.kind.name],
                mask=obj.mask,
                box=obj.box,
                difficult=bool(rng.random() < DIFFICULT_PROB),
                truncated=x == 0 or y == 0 or x + w == width or y + h == height,
                pose=POSES[int(rng.integers(len(POSES)))],
            )
        )
    return VocImage(scene, objects)


def label_maps(image: VocImage) -> tuple[np.ndarray, np.ndarray]:
    """(class, instance) index maps: 0 background, 255 void (difficult objects, boundary bands)."""
    shape = image.scene.image.shape[:2]
    cls, inst = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    kernel = np.ones((3, 3), np.uint8)
    for i, obj in enumerate(image.objects):
        cls[obj.mask] = VOID if obj.difficult else CLASSES.index(obj.name) + 1
        inst[obj.mask] = VOID if obj.difficult else i + 1
    for obj in image.objects:
        m = obj.mask.astype(np.uint8)
        band = (cv2.dilate(m, kernel) > 0) & ~(cv2.erode(m, kernel) > 0)
        cls[band] = VOID
        inst[band] = VOID
    return cls, inst


def write_archives(out_dir: Path, seed: int, sizes: dict[str, int]) -> list[Path]:
    out_dir = Path(out_dir)
    planned = plan(seed, sizes)
    palette = voc_colormap().ravel().tolist()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "VOCdevkit" / "VOC2012"
        for sub in ("JPEGImages", "Annotations", "SegmentationClass", "SegmentationObject",
                    "ImageSets/Main", "ImageSets/Segmentation"):
            (root / sub).mkdir(parents=True)
        presence: dict[str, dict[str, int]] = {}  # image id -> class -> 1 / 0 (difficult only)
        for item in planned:
            image = render_voc_image(seed, item.index)
            Image.fromarray(image.scene.image).save(root / "JPEGImages" / f"{item.image_id}.jpg", quality=JPEG_QUALITY)
            (root / "Annotations" / f"{item.image_id}.xml").write_text(_xml(item, image))
            if item.segmented:
                cls, inst = label_maps(image)
                for folder, label in (("SegmentationClass", cls), ("SegmentationObject", inst)):
                    png = Image.fromarray(label)
                    png.putpalette(palette)
                    png.save(root / folder / f"{item.image_id}.png")
            flags: dict[str, int] = {}
            for obj in image.objects:
                flags[obj.name] = max(flags.get(obj.name, 0), 0 if obj.difficult else 1)
            presence[item.image_id] = flags
        _write_image_sets(root / "ImageSets", planned, presence)
        return [pack_tar(Path(tmp), out_dir / "VOCtrainval_11-May-2012.tar")]


def _write_image_sets(folder: Path, planned: list[PlannedImage], presence: dict[str, dict[str, int]]) -> None:
    lists = {
        "train": [p for p in planned if p.split == "train"],
        "val": [p for p in planned if p.split == "val"],
        "trainval": planned,
    }
    for name, items in lists.items():
        (folder / "Main" / f"{name}.txt").write_text("".join(f"{p.image_id}\n" for p in items))
        seg = "".join(f"{p.image_id}\n" for p in items if p.segmented)
        (folder / "Segmentation" / f"{name}.txt").write_text(seg)
        for cls in CLASSES:  # "<id> -1|0|1": absent / difficult only / present
            lines = "".join(f"{p.image_id} {presence[p.image_id].get(cls, -1):2d}\n" for p in items)
            (folder / "Main" / f"{cls}_{name}.txt").write_text(lines)


def _xml(item: PlannedImage, image: VocImage) -> str:
    height, width = image.scene.image.shape[:2]
    root = ET.Element("annotation")
    _sub(root, "folder", "VOC2012")
    _sub(root, "filename", f"{item.image_id}.jpg")
    source = _sub(root, "source")
    _sub(source, "database", "The VOC2012 Database")
    _sub(source, "annotation", "PASCAL VOC2012")
    _sub(source, "image", "flickr")
    size = _sub(root, "size")
    for key, value in (("width", width), ("height", height), ("depth", 3)):
        _sub(size, key, str(value))
    _sub(root, "segmented", str(int(item.segmented)))
    for obj in image.objects:
        node = _sub(root, "object")
        _sub(node, "name", obj.name)
        _sub(node, "pose", obj.pose)
        _sub(node, "truncated", str(int(obj.truncated)))
        _sub(node, "difficult", str(int(obj.difficult)))
        x, y, w, h = obj.box  # pixel-edge xywh -> 1-based inclusive corners
        bndbox = _sub(node, "bndbox")
        for key, value in (("xmin", x + 1), ("ymin", y + 1), ("xmax", x + w), ("ymax", y + h)):
            _sub(bndbox, key, str(value))
    ET.indent(root, space="\t")
    return ET.tostring(root, encoding="unicode") + "\n"


def _sub(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
    node = ET.SubElement(parent, tag)
    if text is not None:
        node.text = text
    return node


def _u(seed: int) -> int:
    return int(seed) % (1 << 63)
