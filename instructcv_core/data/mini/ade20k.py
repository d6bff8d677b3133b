"""Mini ADE20K SceneParse150: ``ADEChallengeData2016.zip`` filled with rendered scenes.

Archive members exactly as published: ``ADEChallengeData2016/{images,annotations}/{training,
validation}/ADE_{train,val}_%08d.{jpg,png}``, ``objectInfo150.txt`` (the real 150 classes with their
synonym strings, in the real order and whitespace; the Ratio/Train/Val columns are counted on the
mini data) and ``sceneCategories.txt``.

Labels: indoor scenes label the wall 1 (wall) and the floor 4 (floor); outdoor scenes label the
facade 2 (building), the ground 7 (road) and the sky 3 (sky). The poster on the wall is 0 ("other
objects", not a category). Objects keep their ADE class: person 13, chair 20, car 21, bus 81,
tv 90 (television receiver), bottle 99; ADE has no cat/dog/bird class, so they are 127 (animal),
as the real annotators label them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from instructcv_core.data.mini.pack import pack_zip
from instructcv_core.data.mini.scenes import INDOOR, KINDS, OUTDOOR, Scene, render_scene

ARCHIVES = ("ADEChallengeData2016.zip",)
DEFAULT_SIZES = {"training": 240, "validation": 60}
FOLDERS = ("training", "validation")
STEMS = {"training": "ADE_train", "validation": "ADE_val"}

TRAIN_KINDS = ("person", "car", "cat", "dog", "chair", "bottle", "bird", "tv", "bus")
OBJECT_IDS = {"person": 13, "chair": 20, "car": 21, "bus": 81, "tv": 90, "bottle": 99, "cat": 127, "dog": 127, "bird": 127}
INDOOR_STUFF = {"wall": 1, "floor": 4, "poster": 0}
OUTDOOR_STUFF = {"wall": 2, "floor": 7, "sky": 3, "poster": 0}
INDOOR_SCENES = ("bedroom", "living_room", "kitchen", "office", "dining_room")
OUTDOOR_SCENES = ("street", "parking_lot", "highway", "plaza")
OUTDOOR_PROB = 0.25
IMAGE_SIZES = ((192, 144), (176, 132), (160, 120), (144, 192), (168, 168))  # (width, height)
JPEG_QUALITY = 90

# objectInfo150.txt's Name column, in Idx order, with the real file's synonyms and stray spaces.
OBJECT_INFO_NAMES = (
    "wall", "building, edifice", "sky", "floor, flooring", "tree", "ceiling", "road, route", "bed ",
    "windowpane, window ", "grass", "cabinet", "sidewalk, pavement",
    "person, individual, someone, somebody, mortal, soul", "earth, ground", "door, double door", "table",
    "mountain, mount", "plant, flora, plant life", "curtain, drape, drapery, mantle, pall", "chair",
    "car, auto, automobile, machine, motorcar", "water", "painting, picture", "sofa, couch, lounge", "shelf",
    "house", "sea", "mirror", "rug, carpet, carpeting", "field", "armchair", "seat", "fence, fencing", "desk",
    "rock, stone", "wardrobe, closet, press", "lamp", "bathtub, bathing tub, bath, tub", "railing, rail",
    "cushion", "base, pedestal, stand", "box", "column, pillar", "signboard, sign",
    "chest of drawers, chest, bureau, dresser", "counter", "sand", "sink", "skyscraper",
    "fireplace, hearth, open fireplace", "refrigerator, icebox", "grandstand, covered stand", "path",
    "stairs, steps", "runway", "case, display case, showcase, vitrine",
    "pool table, billiard table, snooker table", "pillow", "screen door, screen", "stairway, staircase",
    "river", "bridge, span", "bookcase", "blind, screen", "coffee table, cocktail table",
    "toilet, can, commode, crapper, pot, potty, stool, throne", "flower", "book", "hill", "bench",
    "countertop", "stove, kitchen stove, range, kitchen range, cooking stove", "palm, palm tree",
    "kitchen island",
    "computer, computing machine, computing device, data processor, electronic computer, information processing system",
    "swivel chair", "boat", "bar", "arcade machine", "hovel, hut, hutch, shack, shanty",
    "bus, autobus, coach, charabanc, double-decker, jitney, motorbus, motorcoach, omnibus, passenger vehicle",
    "towel", "light, light source", "truck, motortruck", "tower", "chandelier, pendant, pendent",
    "awning, sunshade, sunblind", "streetlight, street lamp", "booth, cubicle, stall, kiosk",
    "television, television receiver, television set, tv, tv set, idiot box, boob tube, telly, goggle box",
    "airplane, aeroplane, plane", "dirt track", "apparel, wearing apparel, dress, clothes", "pole",
    "land, ground, soil", "bannister, banister, balustrade, balusters, handrail",
    "escalator, moving staircase, moving stairway", "ottoman, pouf, pouffe, puff, hassock", "bottle",
    "buffet, counter, sideboard", "poster, posting, placard, notice, bill, card", "stage", "van", "ship",
    "fountain", "conveyer belt, conveyor belt, conveyer, conveyor, transporter", "canopy",
    "washer, automatic washer, washing machine", "plaything, toy", "swimming pool, swimming bath, natatorium",
    "stool", "barrel, cask", "basket, handbasket", "waterfall, falls", "tent, collapsible shelter", "bag",
    "minibike, motorbike", "cradle", "oven", "ball", "food, solid food", "step, stair", "tank, storage tank",
    "trade name, brand name, brand, marque", "microwave, microwave oven", "pot, flowerpot",
    "animal, animate being, beast, brute, creature, fauna", "bicycle, bike, wheel, cycle ", "lake",
    "dishwasher, dish washer, dishwashing machine", "screen, silver screen, projection screen",
    "blanket, cover", "sculpture", "hood, exhaust hood", "sconce", "vase",
    "traffic light, traffic signal, stoplight", "tray",
    "ashcan, trash can, garbage can, wastebin, ash bin, ash-bin, ashbin, dustbin, trash barrel, trash bin",
    "fan", "pier, wharf, wharfage, dock", "crt screen", "plate", "monitor, monitoring device",
    "bulletin board, notice board", "shower", "radiator", "glass, drinking glass", "clock", "flag",
)
_IDX_WITH_TRAILING_SPACE = {22, 24, 25, 26, 27}  # the real file writes "22 \t..." for these


def render_ade20k_image(seed: int, folder: str, index: int) -> tuple[Scene, np.ndarray, str]:
    """Regenerate image ``index`` of ``folder``: the scene, its uint8 label map and scene name."""
    rng = np.random.default_rng([_u(seed), FOLDERS.index(folder), index])
    width, height = IMAGE_SIZES[int(rng.integers(len(IMAGE_SIZES)))]
    outdoor = bool(rng.random() < OUTDOOR_PROB)
    scene_name = (OUTDOOR_SCENES if outdoor else INDOOR_SCENES)[int(rng.integers(4))]
    scene = render_scene(rng, width, height, [KINDS[k] for k in TRAIN_KINDS], (1, 4), OUTDOOR if outdoor else INDOOR)
    label = np.zeros((height, width), np.uint8)
    for stuff, value in (OUTDOOR_STUFF if outdoor else INDOOR_STUFF).items():
        label[scene.stuff[stuff]] = value
    for obj in scene.objects:
        label[obj.mask] = OBJECT_IDS[obj.kind.name]
    return scene, label, scene_name


def write_archives(out_dir: Path, seed: int, sizes: dict[str, int]) -> list[Path]:
    out_dir = Path(out_dir)
    pixels = np.zeros(len(OBJECT_INFO_NAMES) + 1, np.int64)
    images_with = {folder: np.zeros(len(OBJECT_INFO_NAMES) + 1, np.int64) for folder in FOLDERS}
    scene_lines = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ADEChallengeData2016"
        for folder in FOLDERS:
            (root / "images" / folder).mkdir(parents=True)
            (root / "annotations" / folder).mkdir(parents=True)
            for index in range(sizes[folder]):
                scene, label, scene_name = render_ade20k_image(seed, folder, index)
                stem = f"{STEMS[folder]}_{index + 1:08d}"
                Image.fromarray(scene.image).save(root / "images" / folder / f"{stem}.jpg", quality=JPEG_QUALITY)
                Image.fromarray(label).save(root / "annotations" / folder / f"{stem}.png")
                counts = np.bincount(label.ravel(), minlength=len(pixels))
                pixels += counts
                images_with[folder] += counts > 0
                scene_lines.append(f"{stem} {scene_name}\n")
        (root / "objectInfo150.txt").write_text(_object_info(pixels, images_with))
        (root / "sceneCategories.txt").write_text("".join(scene_lines))
        return [pack_zip(Path(tmp), out_dir / "ADEChallengeData2016.zip")]


def _object_info(pixels: np.ndarray, images_with: dict[str, np.ndarray]) -> str:
    """objectInfo150.txt: the real names; Ratio = pixel share, Train/Val = images containing it."""
    total = max(1, int(pixels.sum()))
    lines = ["Idx\tRatio\tTrain\tVal\tName\n"]
    for idx, name in enumerate(OBJECT_INFO_NAMES, start=1):
        pad = " " if idx in _IDX_WITH_TRAILING_SPACE else ""
        train, val = images_with["training"][idx], images_with["validation"][idx]
        lines.append(f"{idx}{pad}\t{pixels[idx] / total:.4f}\t{train}\t{val}\t{name}\n")
    return "".join(lines)


def _u(seed: int) -> int:
    return int(seed) % (1 << 63)
