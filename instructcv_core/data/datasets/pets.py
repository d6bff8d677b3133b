"""Oxford-IIIT Pet: 37 breeds (12 cat, 25 dog), breed labels, pet trimaps and head boxes.

On-disk layout (both archives are plain, uncompressed tar files despite their ``.tar.gz`` names)::

    images/<Breed>_<n>.jpg
    annotations/list.txt              6 '#' header lines, then `Image CLASS-ID SPECIES BREED-ID`
    annotations/trainval.txt          the same 4 columns, no header
    annotations/test.txt              the same 4 columns, no header
    annotations/trimaps/<Image>.png   1 = pet, 2 = background, 3 = boundary (not classified)
    annotations/xmls/<Image>.xml      PASCAL VOC XML with one head box (trainval images only)

Conventions of the records:

- ``label`` = CLASS-ID - 1 (0-based, as torchvision does); the category table keeps the native
  1-based CLASS-IDs, so ``label + 1`` is the id of the record's breed in ``categories``.
- ``label_name`` = the breed name as the file stems spell it (capital first letter = cat breed).
- ``species`` = "cat" (SPECIES 1) or "dog" (SPECIES 2); ``categories`` = [species], which is what
  a segmentation instruction names ("segment the cat").
- ``boxes`` = the head box of the XML where the image has one (trainval only), with
  ``category`` = species and ``category_id`` = SPECIES; VOC's 1-based inclusive corners become
  pixel-edge xywh: ``x = xmin - 1``, ``w = xmax - xmin + 1``.
- masks: ``class_masks`` gives {species: trimap == 1} and void = trimap == 3 (the boundary band).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from instructcv_core.data.datasets.base import (
    DatasetSpec,
    ReadResult,
    RemoteFile,
    check_images,
    require,
    sixteen_bit_warnings,
)
from instructcv_core.data.images import ImageRefused, open_image
from instructcv_core.data.records import Box, Category, ImageRecord, QuarantineEntry, ReadWarning
from instructcv_core.data.schema import MAX_LISTED, AnnotationError
from instructcv_core.data.voc_xml import UnsafeXmlError, parse_voc_xml

# The 37 breeds in CLASS-ID order (CLASS-ID = index + 1), spelled as the image file stems.
BREEDS = (
    "Abyssinian", "american_bulldog", "american_pit_bull_terrier", "basset_hound", "beagle",
    "Bengal", "Birman", "Bombay", "boxer", "British_Shorthair", "chihuahua", "Egyptian_Mau",
    "english_cocker_spaniel", "english_setter", "german_shorthaired", "great_pyrenees", "havanese",
    "japanese_chin", "keeshond", "leonberger", "Maine_Coon", "miniature_pinscher", "newfoundland",
    "Persian", "pomeranian", "pug", "Ragdoll", "Russian_Blue", "saint_bernard", "samoyed",
    "scottish_terrier", "shiba_inu", "Siamese", "Sphynx", "staffordshire_bull_terrier",
    "wheaten_terrier", "yorkshire_terrier",
)
SPECIES = {1: "cat", 2: "dog"}
SPLITS = ("trainval", "test")
LIST_HEADER_LINES = 6

# Trimap values (annotations README).
TRIMAP_PET, TRIMAP_BACKGROUND, TRIMAP_BOUNDARY = 1, 2, 3
TRIMAP_VALUES = {TRIMAP_PET, TRIMAP_BACKGROUND, TRIMAP_BOUNDARY}

_BASE = "https://www.robots.ox.ac.uk/~vgg/data/pets/data"
_MIRROR = "https://thor.robots.ox.ac.uk/~vgg/data/pets"

SPEC = DatasetSpec(
    name="pets",
    title="The Oxford-IIIT Pet Dataset",
    licence=(
        "Oxford-IIIT Pet is distributed under the Creative Commons Attribution-ShareAlike 4.0 "
        "International licence (CC BY-SA 4.0). The dataset README says it is provided for research "
        "purposes and that the terms of the original sites the images were collected from must be "
        "respected."
    ),
    citation=(
        "O. M. Parkhi, A. Vedaldi, A. Zisserman and C. V. Jawahar. Cats and Dogs. "
        "IEEE Conference on Computer Vision and Pattern Recognition (CVPR), 2012."
    ),
    homepage="https://www.robots.ox.ac.uk/~vgg/data/pets/",
    files=(
        # MD5 from torchvision; the TFDS mirror publishes sha256
        # 67195c5e1c01f1ab5f9b6a5d22b8c27a580d896ece458917e61d459337fa318d for the same bytes.
        RemoteFile(
            "images.tar.gz",
            (f"{_BASE}/images.tar.gz", f"{_MIRROR}/images.tar.gz"),
            "md5:5c4f3ee8e5d25df40f4fd59a7f44e54c",
            size=791_918_971,
        ),
        # TFDS sha256: 52425fb6de5c424942b7626b428656fcbd798db970a937df61750c0f1d358e91
        RemoteFile(
            "annotations.tar.gz",
            (f"{_BASE}/annotations.tar.gz", f"{_MIRROR}/annotations.tar.gz"),
            "md5:95a8c909bbe2e81eed6a22bccdf3f68f",
            size=19_173_078,
        ),
    ),
    root_subdir=".",
    marker="annotations/list.txt",
)


def read(root: Path) -> ReadResult:
    """Read both splits of an extracted Oxford-IIIT Pet folder (``images/`` + ``annotations/``)."""
    root = Path(root)
    ann = root / "annotations"
    table = _class_table(require(ann / "list.txt", "Oxford-IIIT Pet class list (annotations/list.txt)"))
    categories = [Category(cid, name, SPECIES[sp]) for cid, (name, sp) in sorted(table.items())]
    records: list[ImageRecord] = []
    quarantine: list[QuarantineEntry] = []
    warnings: list[ReadWarning] = []
    for split in SPLITS:
        list_path = require(ann / f"{split}.txt", f"Oxford-IIIT Pet {split} list (annotations/{split}.txt)")
        rows = _rows(list_path)
        problems = []
        for image, class_id, species_id, _breed_id in rows:
            if class_id not in table:
                problems.append(f"{list_path}: {image} has CLASS-ID {class_id}, absent from list.txt")
            elif table[class_id] != (breed_of(image), species_id):
                problems.append(
                    f"{list_path}: {image} has CLASS-ID {class_id} and SPECIES {species_id}, but list.txt gives "
                    f"CLASS-ID {class_id} to breed {table[class_id][0]!r} of SPECIES {table[class_id][1]}"
                )
        _raise_if_any(list_path, problems)
        image_paths = [root / _image_rel(image) for image, *_ in rows]
        sizes = check_images(image_paths)
        warnings += sixteen_bit_warnings(root, image_paths, sizes)
        for (image, class_id, species_id, _breed_id), size in zip(rows, sizes):
            record = _record(root, split, image, size, class_id, SPECIES[species_id], table, quarantine)
            if record is not None:
                records.append(record)
    return ReadResult(records, categories, quarantine, warnings)


def class_masks(record: ImageRecord, root: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """{species: trimap == 1} and the void mask trimap == 3 (the unclassified boundary band)."""
    trimap = load_trimap(Path(root) / record.mask_path)
    species = record.species or record.categories[0]
    return {species: trimap == TRIMAP_PET}, trimap == TRIMAP_BOUNDARY


def load_trimap(path: Path) -> np.ndarray:
    """A trimap as uint8 (H, W) holding only 1 (pet), 2 (background) and 3 (boundary).

    A few trimaps elsewhere are saved as RGB with equal channels; those are accepted as grey.
    Any other value is an `AnnotationError`: counting it as background would mislabel pixels.
    """
    with open_image(path) as im:
        if im.mode not in ("L", "P", "RGB"):
            raise AnnotationError(path, "", f"a trimap must be an 8-bit single-channel PNG, got mode {im.mode}")
        trimap = np.asarray(im)
    if trimap.ndim == 3:
        if not (np.array_equal(trimap[..., 0], trimap[..., 1]) and np.array_equal(trimap[..., 0], trimap[..., 2])):
            raise AnnotationError(path, "", "an RGB trimap must have equal channels")
        trimap = trimap[..., 0]
    bad = sorted(set(np.unique(trimap).tolist()) - TRIMAP_VALUES)
    if bad:
        raise AnnotationError(path, "", f"trimap values {bad} are none of 1 (pet), 2 (background), 3 (boundary)")
    return trimap


def breed_of(image: str) -> str:
    """``"great_pyrenees_12"`` -> ``"great_pyrenees"``: the stem without its trailing ``_<n>``."""
    return image.rsplit("_", 1)[0]


def _class_table(list_path: Path) -> dict[int, tuple[str, int]]:
    """CLASS-ID -> (breed name, SPECIES) from list.txt, checked against the published breed list."""
    table: dict[int, tuple[str, int]] = {}
    for image, class_id, species_id, _breed_id in _rows(list_path):
        name = breed_of(image)
        if not 1 <= class_id <= len(BREEDS) or BREEDS[class_id - 1] != name:
            raise ValueError(f"{list_path}: {image} has CLASS-ID {class_id}, which is not breed {name!r}")
        if table.setdefault(class_id, (name, species_id)) != (name, species_id):
            raise ValueError(f"{list_path}: CLASS-ID {class_id} is given two breeds or species")
    return table


def _rows(path: Path) -> list[tuple[str, int, int, int]]:
    """The `Image CLASS-ID SPECIES BREED-ID` rows of a list file ('#' lines are headers).

    A malformed line stops the read; the error names every malformed line of the file (`_raise_if_any`).
    """
    rows, problems = [], []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        try:
            if len(parts) != 4:
                raise ValueError
            image, class_id, species_id, breed_id = parts[0], *map(int, parts[1:4])
        except ValueError:
            problems.append(f"{path}:{lineno}: expected `Image CLASS-ID SPECIES BREED-ID`, got {line!r}")
            continue
        if class_id < 1 or breed_id < 1:
            problems.append(f"{path}:{lineno}: CLASS-ID and BREED-ID are 1-based, got {class_id} and {breed_id}")
        elif species_id not in SPECIES:
            problems.append(f"{path}:{lineno}: SPECIES must be 1 (cat) or 2 (dog), got {species_id}")
        else:
            rows.append((image, class_id, species_id, breed_id))
    _raise_if_any(path, problems)
    return rows


def _raise_if_any(path: Path, problems: list[str]) -> None:
    """One ValueError naming every problem of a list file (the first `MAX_LISTED`, then a count)."""
    if len(problems) == 1:
        raise ValueError(problems[0])
    if problems:
        shown = [f"  {p}" for p in problems[:MAX_LISTED]]
        if len(problems) > MAX_LISTED:
            shown.append(f"  and {len(problems) - MAX_LISTED} more")
        raise ValueError(f"{path}: {len(problems)} problems:\n" + "\n".join(shown))


def _image_rel(image: str) -> str:
    return f"images/{image}.jpg"


def _record(root, split, image, size, class_id, species, table, quarantine) -> ImageRecord | None:
    image_rel = _image_rel(image)
    if isinstance(size, str):
        quarantine.append(QuarantineEntry(image_rel, size))
        return None
    trimap_rel = f"annotations/trimaps/{image}.png"
    try:
        trimap = load_trimap(root / trimap_rel)
    except (AnnotationError, ImageRefused) as exc:
        quarantine.append(QuarantineEntry(trimap_rel, f"unusable trimap of {image_rel}: {_reason(exc)}"))
        return None
    if trimap.shape != (size[1], size[0]):
        reason = f"trimap is {trimap.shape[1]}x{trimap.shape[0]} but the image is {size[0]}x{size[1]}"
        quarantine.append(QuarantineEntry(trimap_rel, reason))
        return None
    return ImageRecord(
        dataset="pets",
        image_id=image,
        split=split,
        image_path=image_rel,
        width=size[0],
        height=size[1],
        categories=[species],
        boxes=_head_boxes(root, f"annotations/xmls/{image}.xml", species, quarantine),
        mask_path=trimap_rel,
        mask_format="pets_trimap",
        label=class_id - 1,
        label_name=table[class_id][0],
        species=species,
    )


def _head_boxes(root: Path, xml_rel: str, species: str, quarantine) -> list[Box]:
    """Head boxes of the VOC XML (1-based inclusive corners -> pixel-edge xywh); none if absent.

    An unusable XML is reported and the record keeps no box; an unusable ``<object>`` is reported
    by its id (``object<k>:<name>``) and the record keeps the other boxes; a hostile file
    (`UnsafeXmlError`) stops.
    """
    path = root / xml_rel
    if not path.exists():
        return []
    species_id = {v: k for k, v in SPECIES.items()}[species]
    try:
        annotation = parse_voc_xml(path, xml_rel)
    except UnsafeXmlError:
        raise
    except (AnnotationError, OSError) as exc:
        quarantine.append(QuarantineEntry(xml_rel, f"unreadable head-box XML ({type(exc).__name__}: {exc})"))
        return []
    quarantine += [QuarantineEntry(xml_rel, f"unusable head box: {r.error.problem}", annotation=r.object_id)
                   for r in annotation.rejected]
    return [
        Box(species, species_id, o.xmin - 1, o.ymin - 1, o.xmax - o.xmin + 1, o.ymax - o.ymin + 1, difficult=o.difficult)
        for o in annotation.objects
    ]


def _reason(exc: Exception) -> str:
    return exc.reason if isinstance(exc, ImageRefused) else exc.problem
