"""FSS-1000 (few-shot / open-vocabulary segmentation): reader of the published folder layout.

Layout (root = ``fewshot_data/``, as ``fewshot_data.zip`` extracts)::

    <class_name>/<n>.jpg    n = 1..10
    <class_name>/<n>.png    the mask of the same stem: read as L, >= 128 = the object

Conventions:
- One record per image; the category is the class folder name, ``image_id`` is ``<class>/<n>``.
- Every class is in split ``test`` unless ``split_file`` or ``split`` says otherwise. ``split_file`` is an
  HSNet-style class list (one class name per line, e.g. ``data/splits/fss/trn.txt``) or a folder
  holding ``trn.txt`` / ``val.txt`` / ``test.txt``; the split name is the list's file stem, and
  classes no list names get no records. ``split="hsnet_test"`` reads the standard 240 test classes
  (HSNet's ``test.txt``, the FSS-1000 520/240/240 class split) downloaded beside the dataset as
  :data:`HSNET_TEST_NAME`; only those classes get records (split ``test``). ``split="all"`` (the
  default) makes all 1,000 classes "test", including classes seen in training: not an
  open-vocabulary test set.
- Category ids are 1..N over the class folders sorted by name (FSS-1000 has no native ids).
"""

from __future__ import annotations

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
from instructcv_core.data.images import read_grey
from instructcv_core.data.records import Category, ImageRecord, QuarantineEntry

HSNET_SPLITS = ("trn", "val", "test")
THRESHOLD = 128
#: HSNet's list of the 240 standard FSS-1000 test classes, placed beside the dataset by the download.
HSNET_TEST_NAME = "fss1000_hsnet_test.txt"
SPLITS = ("all", "hsnet_test")

SPEC = DatasetSpec(
    name="fss1000",
    title="FSS-1000: a 1000-class dataset for few-shot segmentation",
    licence=(
        "No licence is stated by the authors (HKUSTCV/FSS-1000 readme). The images were collected "
        "from the internet; use them for non-commercial research only and cite the paper."
    ),
    citation=(
        "Li, X., Wei, T., Chen, Y. P., Tai, Y.-W., Tang, C.-K. FSS-1000: A 1000-Class Dataset for "
        "Few-Shot Segmentation. CVPR 2020."
    ),
    homepage="https://github.com/HKUSTCV/FSS-1000",
    files=(
        RemoteFile(
            "fewshot_data.zip",
            # the authors' Google Drive file, then the repack listed by aim-uofa/Matcher
            ("gdrive://16TgqOeI_0P41Eh3jWQlxlRXG9KIqtMgI", "gdrive://1Fn-cUESMMF1pQy8Xff-vPQvXJdZoUlP3"),
            None,
            # no checksum or size published: 1,000 classes x 10 image/mask pairs
            structure=(StructurePin("members", 10_000, "*.jpg", at_least=True, source="FSS-1000: 1,000 classes x 10 images"),
                       StructurePin("members", 10_000, "*.png", at_least=True, source="FSS-1000: 1,000 classes x 10 masks")),
        ),
        RemoteFile(
            HSNET_TEST_NAME,
            ("https://raw.githubusercontent.com/juhongm999/hsnet/main/data/splits/fss/test.txt",),
            extract=False,
            required=False,
            structure=(StructurePin("lines", 240, source="HSNet's FSS-1000 split: 240 test classes"),),
        ),
    ),
    root_subdir="fewshot_data",
    marker="abacus/1.jpg",  # the first class folder of the real dataset (the mini has it too)
)


def read(root: Path, split_file: Path | None = None, split: str = "all") -> ReadResult:
    """One record per image of each class that has a split."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = require(Path(root), "FSS-1000 folder of class folders")
    if split == "hsnet_test":
        if split_file is not None:
            raise ValueError("give either split='hsnet_test' or a split_file, not both")
        split_file = Path(root).parent / HSNET_TEST_NAME
        if not split_file.exists():
            raise DatasetLayoutError(
                f"{split_file}: missing. split 'hsnet_test' (the 240 standard FSS-1000 test classes) needs HSNet's "
                "data/splits/fss/test.txt beside the fewshot_data folder under this name; its download failed "
                "or the dataset was given as extracted_dir without it")
    classes, quarantine = class_folders(root)
    if not classes:
        raise DatasetLayoutError(f"{root}: no class folders")
    categories = [Category(i + 1, name) for i, name in enumerate(classes)]
    records: list[ImageRecord] = []
    # (class, split, its images; None where the class has no folder), then one pass of checks
    listed = [
        (name, split, sorted((root / name).glob("*.jpg"), key=_stem_order) if name in classes else None)
        for name, split in class_splits(classes, split_file).items()
    ]
    image_paths = [path for _, _, paths in listed for path in paths or ()]
    checked = check_images(image_paths)
    sizes = iter(checked)
    for name, split, paths in listed:
        if paths is None:
            quarantine.append(QuarantineEntry(f"{name}/", f"class listed for split {split!r} has no folder"))
            continue
        for path in paths:
            result = _record(root, name, path, split, next(sizes))
            (quarantine if isinstance(result, QuarantineEntry) else records).append(result)
    return ReadResult(records, categories, quarantine, sixteen_bit_warnings(root, image_paths, checked))


def class_folders(root: Path) -> tuple[list[str], list[QuarantineEntry]]:
    """The class folders (sorted) and a quarantine entry for every other folder.

    A class folder holds at least one ``.jpg``. Folders an archiver adds (``__MACOSX``, hidden
    ``.``-folders) and empty folders are not classes: counting them would shift every category id.
    """
    classes, skipped = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name.startswith((".", "__")):
            skipped.append(QuarantineEntry(f"{folder.name}/", "not a class folder (archiver metadata or hidden)"))
        elif not any(folder.glob("*.jpg")):
            skipped.append(QuarantineEntry(f"{folder.name}/", "class folder without .jpg images"))
        else:
            classes.append(folder.name)
    return classes, skipped


def class_splits(classes: list[str], split_file: Path | None) -> dict[str, str]:
    """Class name -> split: ``test`` for all, or as the HSNet-style list(s) say."""
    if split_file is None:
        return {name: "test" for name in classes}
    split_file = require(Path(split_file), "FSS-1000 split list")
    if split_file.is_dir():
        lists = [split_file / f"{s}.txt" for s in HSNET_SPLITS if (split_file / f"{s}.txt").exists()]
        if not lists:
            raise DatasetLayoutError(f"{split_file}: missing split lists ({', '.join(s + '.txt' for s in HSNET_SPLITS)})")
    else:
        lists = [split_file]
    assignment: dict[str, str] = {}
    for path in lists:
        name = "test" if path.name == HSNET_TEST_NAME else path.stem
        for line in path.read_text().splitlines():
            if line.strip():
                assignment.setdefault(line.strip(), name)
    return dict(sorted(assignment.items()))


def class_masks(record: ImageRecord, root: Path) -> tuple[dict[str, np.ndarray], None]:
    """The record's class mask (``>= 128`` in the L-mode PNG); FSS-1000 has no void label."""
    mask = load_mask(Path(root) / record.mask_path)
    name = record.image_path.split("/")[0]
    return ({name: mask} if mask.any() else {}), None


def load_mask(path: Path) -> np.ndarray:
    """Bool (H, W) mask: the PNG read as L (grey), object where the value is >= 128."""
    return read_grey(path) >= THRESHOLD


def _record(
    root: Path, name: str, path: Path, split: str, size: tuple[int, int] | str
) -> ImageRecord | QuarantineEntry:
    rel_image, rel_mask = f"{name}/{path.name}", f"{name}/{path.stem}.png"
    if isinstance(size, str):
        return QuarantineEntry(rel_image, size)
    if not (root / rel_mask).exists():
        return QuarantineEntry(rel_image, f"no mask {rel_mask}")
    try:
        mask = load_mask(root / rel_mask)
    except Exception as exc:  # PIL raises many types for bad data
        return QuarantineEntry(rel_mask, f"undecodable mask ({type(exc).__name__}: {exc})")
    if mask.shape != (size[1], size[0]):
        return QuarantineEntry(rel_mask, f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is {size[0]}x{size[1]}")
    return ImageRecord(
        dataset="fss1000",
        image_id=f"{name}/{path.stem}",
        split=split,
        image_path=rel_image,
        width=size[0],
        height=size[1],
        categories=[name] if mask.any() else [],
        mask_path=rel_mask,
        mask_format="binary_l",
    )


def _stem_order(path: Path) -> tuple[int, int | str]:
    """Numeric stems in numeric order (1, 2, ..., 10), any others after them by name."""
    return (0, int(path.stem)) if path.stem.isdigit() else (1, path.stem)
