"""Mini Oxford-IIIT Pet: 8 breeds with their real CLASS-IDs, in the real on-disk format.

A cat breed is drawn as the renderer's cat shape (a triangle) and a dog breed as its dog shape (an
ellipse); breeds differ by colour and proportions. One pet per image (`render_single_object`).
Trimaps: 1 = pet, 2 = background, 3 = a boundary band 2 px wide (1 px each side of the outline:
``dilate(mask) & ~erode(mask)`` with a 3x3 kernel). Head boxes: the pet's top 40 %, written as VOC
XML (1-based inclusive corners) for most trainval images. Both archives are plain tar files named
``.tar.gz``, exactly as the real ones are.
"""

from __future__ import annotations

import io
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from instructcv_core.data.datasets.pets import BREEDS
from instructcv_core.data.mini.pack import pack_tar
from instructcv_core.data.mini.scenes import INDOOR, KINDS, ObjectKind, Scene, render_single_object

ARCHIVES = ("images.tar.gz", "annotations.tar.gz")
DEFAULT_SIZES = {"trainval": 160, "test": 60}

# breed -> (colour, aspect factor relative to the species' shape)
_BREED_LOOK = {
    "Abyssinian": ((190, 110, 55), 1.0),
    "Bengal": ((225, 175, 60), 0.8),
    "Persian": ((235, 232, 225), 1.25),
    "Siamese": ((120, 95, 80), 0.9),
    "beagle": ((165, 105, 45), 1.0),
    "boxer": ((200, 140, 70), 0.75),
    "pug": ((70, 60, 55), 1.2),
    "samoyed": ((245, 245, 240), 0.9),
}
MINI_BREEDS = tuple(sorted(_BREED_LOOK, key=BREEDS.index))  # in CLASS-ID order
HEAD_FRACTION = 0.4  # the head box covers the pet's top 40 %
NO_XML_FRACTION = 0.08  # some trainval images have no head XML, as in the real data

LIST_HEADER = (
    "#Image CLASS-ID SPECIES BREED ID\n"
    "#ID: 1:37 Class ids\n"
    "#SPECIES: 1:Cat 2:Dog\n"
    "#BREED ID: 1-25:Cat 1:12:Dog\n"
    "#All images with 1st letter as captial are cat images\n"
    "#images with small first letter are dog images\n"
)
_README = (
    "OXFORD-IIIT PET Dataset (instructcv-mini stand-in)\n"
    "Annotations: list.txt (Image CLASS-ID SPECIES BREED-ID), trainval.txt, test.txt,\n"
    "trimaps/ (1: Foreground 2: Background 3: Not classified), xmls/ (head bounding boxes, PASCAL VOC).\n"
)
_APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(66)


@dataclass(frozen=True)
class PetImage:
    """One planned image: its file stem, split, breed, size and whether it has a head XML."""

    index: int
    name: str
    split: str
    breed: str
    width: int
    height: int
    has_xml: bool


def species_of(breed: str) -> tuple[int, str]:
    """(SPECIES id, name): a capitalised breed is a cat."""
    return (1, "cat") if breed[0].isupper() else (2, "dog")


def breed_id(breed: str) -> int:
    """BREED-ID: 1-based index of the breed among its species' breeds, in CLASS-ID order."""
    same = [b for b in BREEDS if species_of(b) == species_of(breed)]
    return same.index(breed) + 1


def breed_kind(breed: str) -> ObjectKind:
    base = KINDS[species_of(breed)[1]]
    color, aspect = _BREED_LOOK[breed]
    return ObjectKind(breed, base.shape, color, base.height_m, base.aspect * aspect)


def plan(seed: int, sizes: dict[str, int]) -> list[PetImage]:
    """Every image of the mini set: breeds balanced, splits interleaved, numbers with gaps."""
    rng = np.random.default_rng([seed, 0])
    total = sizes["trainval"] + sizes["test"]
    order = rng.permutation(total)
    split_of = {int(i): ("trainval" if k < sizes["trainval"] else "test") for k, i in enumerate(order)}
    counters = dict.fromkeys(MINI_BREEDS, 0)
    items = []
    for i in range(total):
        breed = MINI_BREEDS[i % len(MINI_BREEDS)]
        counters[breed] += int(rng.integers(1, 3))
        w, h = int(rng.integers(160, 193)), int(rng.integers(120, 145))
        if rng.random() < 0.2:
            w, h = h, w  # portrait photos exist too
        has_xml = split_of[i] == "trainval" and rng.random() >= NO_XML_FRACTION
        items.append(PetImage(i, f"{breed}_{counters[breed]}", split_of[i], breed, w, h, has_xml))
    return items


def render_pet(seed: int, item: PetImage) -> tuple[Scene, np.ndarray, tuple[int, int, int, int]]:
    """(scene, trimap uint8, head box xywh 0-based pixel edges) of one planned image."""
    rng = np.random.default_rng([seed, 1, item.index])
    scene = render_single_object(rng, item.width, item.height, breed_kind(item.breed), INDOOR)
    mask = scene.objects[0].mask
    return scene, trimap_from_mask(mask), head_box(mask)


def trimap_from_mask(mask: np.ndarray) -> np.ndarray:
    """1 inside (eroded), 3 on the 2-px band around the outline, 2 elsewhere."""
    kernel = np.ones((3, 3), np.uint8)
    m = mask.astype(np.uint8)
    trimap = np.full(mask.shape, 2, np.uint8)
    trimap[cv2.dilate(m, kernel) > 0] = 3
    trimap[cv2.erode(m, kernel) > 0] = 1
    return trimap


def head_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """xywh of the mask pixels in the top HEAD_FRACTION of the mask's rows."""
    ys, _ = np.nonzero(mask)
    y0, y1 = ys.min(), ys.max() + 1
    top = mask.copy()
    top[y0 + max(1, int(round((y1 - y0) * HEAD_FRACTION))) :] = False
    ys, xs = np.nonzero(top)
    return int(xs.min()), int(ys.min()), int(xs.max() + 1 - xs.min()), int(ys.max() + 1 - ys.min())


def head_xml(item: PetImage, box: tuple[int, int, int, int]) -> str:
    """The VOC XML of one head box: 1-based inclusive corners, as the real xmls/ files."""
    x, y, w, h = box
    species = species_of(item.breed)[1]
    return (
        "<annotation><folder>OXIIIT</folder>"
        f"<filename>{item.name}.jpg</filename>"
        "<source><database>OXFORD-IIIT Pet Dataset</database><annotation>OXIIIT</annotation>"
        "<image>flickr</image></source>"
        f"<size><width>{item.width}</width><height>{item.height}</height><depth>3</depth></size>"
        "<segmented>0</segmented>"
        f"<object><name>{species}</name><pose>Frontal</pose><truncated>0</truncated><occluded>0</occluded>"
        f"<bndbox><xmin>{x + 1}</xmin><ymin>{y + 1}</ymin><xmax>{x + w}</xmax><ymax>{y + h}</ymax></bndbox>"
        "<difficult>0</difficult></object></annotation>\n"
    )


def list_line(item: PetImage) -> str:
    species_id, _ = species_of(item.breed)
    return f"{item.name} {BREEDS.index(item.breed) + 1} {species_id} {breed_id(item.breed)}\n"


def write_archives(out_dir: Path, seed: int, sizes: dict[str, int]) -> list[Path]:
    out_dir = Path(out_dir)
    items = plan(seed, sizes)
    with tempfile.TemporaryDirectory() as tmp:
        img_root, ann_root = Path(tmp, "img"), Path(tmp, "ann")
        images, ann = img_root / "images", ann_root / "annotations"
        for d in (images, ann / "trimaps", ann / "xmls"):
            d.mkdir(parents=True)
        for item in items:
            scene, trimap, box = render_pet(seed, item)
            (images / f"{item.name}.jpg").write_bytes(_jpeg(scene.image))
            Image.fromarray(trimap, "L").save(ann / "trimaps" / f"{item.name}.png")
            if item.has_xml:
                (ann / "xmls" / f"{item.name}.xml").write_text(head_xml(item, box))
        # macOS resource-fork leftovers ship in the real trimaps/ folder too
        for item in items[:2]:
            (ann / "trimaps" / f"._{item.name}.png").write_bytes(_APPLEDOUBLE)
        ordered = sorted(items, key=lambda it: (BREEDS.index(it.breed), it.name))
        (ann / "list.txt").write_text(LIST_HEADER + "".join(list_line(it) for it in ordered))
        for split in ("trainval", "test"):
            (ann / f"{split}.txt").write_text("".join(list_line(it) for it in ordered if it.split == split))
        (ann / "README").write_text(_README)
        return [
            pack_tar(img_root, out_dir / "images.tar.gz", gzip_compress=False),
            pack_tar(ann_root, out_dir / "annotations.tar.gz", gzip_compress=False),
        ]


def _jpeg(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=90)
    return buf.getvalue()
