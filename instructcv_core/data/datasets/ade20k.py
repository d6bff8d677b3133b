"""ADE20K SceneParse150 (ADEChallengeData2016): reader of the official on-disk layout.

Layout (root = ``ADEChallengeData2016/``)::

    objectInfo150.txt                      tab-separated ``Idx Ratio Train Val Name``
    sceneCategories.txt                    ``<image stem> <scene>`` (not needed here)
    images/{training,validation}/ADE_{train,val}_%08d.jpg
    annotations/{training,validation}/ADE_{train,val}_%08d.png

Conventions:
- Record splits: ``training`` -> ``train``, ``validation`` -> ``val``; ``image_id`` is the file stem.
- Label PNGs are single-channel: 0 = "other objects" (not a category; reported as void by
  `class_masks`), 1..150 = the ``Idx`` column of objectInfo150.txt.
- A category's name is the first WordNet synonym of its ``Name`` (text before the first comma,
  whitespace stripped): ``"windowpane, window "`` -> ``windowpane``; ids are 1..150.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from instructcv_core.data.datasets.base import (
    DatasetLayoutError,
    DatasetSpec,
    ReadResult,
    RemoteFile,
    StructurePin,
    check_images,
    require,
    sixteen_bit_warnings,
)
from instructcv_core.data.images import read_label
from instructcv_core.data.records import Category, ImageRecord, QuarantineEntry, ReadWarning
from instructcv_core.data.schema import MAX_LISTED, AnnotationError, listed

FOLDERS = {"train": "training", "val": "validation"}
NUM_CLASSES = 150

SPEC = DatasetSpec(
    name="ade20k",
    title="ADE20K SceneParse150 (ADEChallengeData2016)",
    licence=(
        "ADE20K images may be used for non-commercial research and educational purposes only; MIT "
        "does not own their copyright. The scene-parsing devkit code is under a BSD-style licence."
    ),
    citation=(
        "Zhou, B., Zhao, H., Puig, X., Fidler, S., Barriuso, A., Torralba, A. Scene Parsing through "
        "ADE20K Dataset. CVPR 2017."
    ),
    homepage="http://sceneparsing.csail.mit.edu",
    files=(
        RemoteFile(
            "ADEChallengeData2016.zip",
            ("http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip",),
            "sha1:219e1696abb36c8ba3a3afe7fb2f4b4606a897c7",
        ),
        RemoteFile(
            "release_test.zip",
            ("http://data.csail.mit.edu/places/ADEchallenge/release_test.zip",),
            "sha1:e05747892219d10e9243933371a497e905a4860c",
            required=False,
        ),
        RemoteFile(
            "annotations_instance.tar",
            ("http://sceneparsing.csail.mit.edu/data/ChallengeData2017/annotations_instance.tar",),
            None,
            required=False,
            # no checksum or size published: one instance PNG per image of the 20,210 / 2,000 split
            structure=(StructurePin("members", 20_210, "*training/*.png", at_least=True,
                                    source="ADE20K SceneParsing: 20,210 training images"),
                       StructurePin("members", 2_000, "*validation/*.png", at_least=True,
                                    source="ADE20K SceneParsing: 2,000 validation images")),
        ),
    ),
    root_subdir="ADEChallengeData2016",
    marker="objectInfo150.txt",
)


def read_object_info(path: Path) -> list[Category]:
    """Parse objectInfo150.txt into categories 1..150 named by their first synonym.

    A bad file is one error naming every malformed line (up to `MAX_LISTED`), then the order and
    uniqueness problems of the lines that parsed.
    """
    lines = require(Path(path), "ADE20K class list objectInfo150.txt").read_text().splitlines()
    categories, problems = [], []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 5 or not fields[0].strip().isdigit():
            problems.append(f"line {number}: expected 'Idx<TAB>Ratio<TAB>Train<TAB>Val<TAB>Name', got {line!r}")
            continue
        categories.append(Category(int(fields[0].strip()), fields[4].split(",")[0].strip()))
    if not problems and [c.id for c in categories] != list(range(1, NUM_CLASSES + 1)):
        problems.append(f"expected Idx 1..{NUM_CLASSES} in order")
    names = [c.name for c in categories]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        problems.append(f"first synonyms are not unique: {listed(repeated)}")
    if len(problems) == 1:
        raise DatasetLayoutError(f"{path}: {problems[0]}")
    if problems:
        shown = problems[:MAX_LISTED] + ([f"and {len(problems) - MAX_LISTED} more"] if len(problems) > MAX_LISTED else [])
        raise DatasetLayoutError(f"{path}: {len(problems)} problems:\n" + "\n".join(f"  {p}" for p in shown))
    return categories


def read(root: Path, splits: tuple[str, ...] = tuple(FOLDERS)) -> ReadResult:
    """One record per image of each split, with the categories its label PNG contains."""
    root = Path(root)
    categories = read_object_info(root / "objectInfo150.txt")
    names = {c.id: c.name for c in categories}
    records: list[ImageRecord] = []
    quarantine: list[QuarantineEntry] = []
    warnings: list[ReadWarning] = []
    for split in splits:
        folder = FOLDERS[split]
        images = require(root / "images" / folder, f"ADE20K {folder} image folder")
        require(root / "annotations" / folder, f"ADE20K {folder} annotation folder")
        paths = sorted(images.glob("*.jpg"))
        stems = {path.stem for path in paths}
        quarantine += [
            QuarantineEntry(f"annotations/{folder}/{label.name}", f"annotation without an image (no images/{folder}/{label.stem}.jpg)")
            for label in sorted((root / "annotations" / folder).glob("*.png"))
            if label.stem not in stems
        ]
        sizes = check_images(paths)
        warnings += sixteen_bit_warnings(root, paths, sizes)
        for path, size in zip(paths, sizes):
            rel_image = f"images/{folder}/{path.name}"
            rel_label = f"annotations/{folder}/{path.stem}.png"
            if isinstance(size, str):
                quarantine.append(QuarantineEntry(rel_image, size))
                continue
            present = _label_values(root / rel_label, size)
            if isinstance(present, str):
                quarantine.append(QuarantineEntry(rel_label, present))
                continue
            records.append(
                ImageRecord(
                    dataset="ade20k",
                    image_id=path.stem,
                    split=split,
                    image_path=rel_image,
                    width=size[0],
                    height=size[1],
                    categories=sorted(names[v] for v in present if v != 0),
                    mask_path=rel_label,
                    mask_format="ade20k_index",
                )
            )
    return ReadResult(records, categories, quarantine, warnings)


def class_masks(record: ImageRecord, root: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-category masks of ``record`` and the void mask (label 0, "other objects")."""
    root = Path(root)
    names = _names(str(root / "objectInfo150.txt"))
    label = load_label(root / record.mask_path)
    masks = {names[int(v)]: label == v for v in np.unique(label) if v != 0}
    return masks, label == 0


def load_label(path: Path) -> np.ndarray:
    """The label PNG as a (H, W) uint8 array of objectInfo150 indices (0 = other)."""
    label = read_label(path, ("L", "P"))
    bad = np.unique(label[label > NUM_CLASSES]).tolist()
    if bad:
        raise AnnotationError(path, "", f"label values {bad} outside 0..{NUM_CLASSES} "
                              f"({int((label > NUM_CLASSES).sum())} pixels)")
    return label


def _label_values(path: Path, size: tuple[int, int]) -> set[int] | str:
    """The values in a label PNG, or why it is unusable."""
    if not path.exists():
        return "missing annotation PNG"
    try:
        label = load_label(path)
    except Exception as exc:  # undecodable PNG, wrong mode, values out of range
        return f"unusable annotation ({type(exc).__name__}: {exc})"
    if label.shape != (size[1], size[0]):
        return f"annotation is {label.shape[1]}x{label.shape[0]} but the image is {size[0]}x{size[1]}"
    return {int(v) for v in np.unique(label)}


@functools.lru_cache(maxsize=8)
def _names(path: str) -> dict[int, str]:
    return {c.id: c.name for c in read_object_info(Path(path))}
