"""ImageNet subset (external classification test): a prepared ImageNet folder, or Imagenette.

ILSVRC2012 is registration-only (`SPEC`, no URLs); `IMAGENETTE_SPEC` is the public alternative
(fast.ai's 10-class subset; `IMAGENETTE_320_SPEC` and `IMAGENETTE_FULL_SPEC` are its larger sizes).
Both prepared layouts are the same::

    train/<wnid>/*.JPEG      (ImageNet: <wnid>_<n>.JPEG)
    val/<wnid>/*.JPEG        (ImageNet: ILSVRC2012_val_%08d.JPEG, sorted into class folders)

Imagenette's archive root is ``imagenette2-160/`` (``-320``, or ``imagenette2/`` for full size) and
also holds ``noisy_imagenette.csv``.

Records: one per image; split = the top folder; ``label`` = index of the wnid among all wnids
found (sorted, both splits together); the category table has id = label, name = the human name and
``supercategory`` = the wnid (ImageNet's native class id); ``label_name`` = the
class's human name: from the bundled table (the 10 Imagenette classes and yurt), else from a
``LOC_synset_mapping.txt`` / ``words.txt`` in the root (first synonym), else the wnid itself.
Names shared by two wnids (ImageNet has two "crane"s) get the wnid appended to stay distinct.
``categories`` = [label_name].
"""

from __future__ import annotations

from pathlib import Path

from instructcv_core.data.datasets.base import (
    DatasetLayoutError,
    DatasetSpec,
    ReadResult,
    RemoteFile,
    check_images,
    sixteen_bit_warnings,
)
from instructcv_core.data.records import Category, ImageRecord, QuarantineEntry, ReadWarning

SPLITS = ("train", "val")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
MAPPING_FILES = ("LOC_synset_mapping.txt", "words.txt")

# wnid -> human name: the 10 Imagenette classes (torchvision's first synonyms) and InstructCV's yurt.
WNID_NAMES = {
    "n01440764": "tench",
    "n02102040": "English springer",
    "n02979186": "cassette player",
    "n03000684": "chain saw",
    "n03028079": "church",
    "n03394916": "French horn",
    "n03417042": "garbage truck",
    "n03425413": "gas pump",
    "n03445777": "golf ball",
    "n03888257": "parachute",
    "n04613696": "yurt",
}

_CITATION_IMAGENET = (
    "O. Russakovsky, J. Deng, H. Su, et al. ImageNet Large Scale Visual Recognition Challenge. "
    "International Journal of Computer Vision (IJCV), 2015."
)

SPEC = DatasetSpec(
    name="imagenet_sub",
    title="ImageNet (ILSVRC2012) subset",
    licence=(
        "ImageNet is available only after registration at https://image-net.org, under its terms of "
        "access: non-commercial research and educational use only; the images belong to their "
        "owners. Download the archives there yourself and prepare train/<wnid>/ and val/<wnid>/ "
        "folders (the validation labels come from the devkit). For a public alternative without "
        "registration, use Imagenette (IMAGENETTE_SPEC)."
    ),
    citation=_CITATION_IMAGENET,
    homepage="https://image-net.org/challenges/LSVRC/2012/",
    files=(
        RemoteFile("ILSVRC2012_img_train.tar", (), "md5:1d675b47d978889d74fa0da5fadfb00e"),
        RemoteFile("ILSVRC2012_img_val.tar", (), "md5:29b22e2961454d5413ddabcf34fc5622"),
        RemoteFile("ILSVRC2012_devkit_t12.tar.gz", (), "md5:fa75699e90414af021442c21a62c3abf"),
    ),
    root_subdir=".",
    marker="val",  # a folder: a prepared ImageNet has no single file every copy shares
    registration_only=True,
)


def _imagenette_spec(folder: str, md5: str) -> DatasetSpec:
    return DatasetSpec(
        name="imagenet_sub",
        title=f"Imagenette ({folder}): a 10-class ImageNet subset",
        licence=(
            "Imagenette is a subset of ImageNet published by fast.ai for download without "
            "registration. Its images come from ImageNet and keep ImageNet's terms: non-commercial "
            "research and educational use only; the images belong to their owners."
        ),
        citation="J. Howard. Imagenette. https://github.com/fastai/imagenette, 2019. " + _CITATION_IMAGENET,
        homepage="https://github.com/fastai/imagenette",
        files=(
            RemoteFile(f"{folder}.tgz", (f"https://s3.amazonaws.com/fast-ai-imageclas/{folder}.tgz",), f"md5:{md5}"),
        ),
        root_subdir=folder,
        marker="noisy_imagenette.csv",
    )


IMAGENETTE_SPEC = _imagenette_spec("imagenette2-160", "e793b78cc4c9e9a4ccc0c1155377a412")  # shortest side 160 px
IMAGENETTE_320_SPEC = _imagenette_spec("imagenette2-320", "3df6f0d01a2c9592104656642f5e78a3")  # shortest side 320 px
IMAGENETTE_FULL_SPEC = _imagenette_spec("imagenette2", "fe2fc210e6bb7c5664d602c3cd71e612")  # full size


def read(root: Path) -> ReadResult:
    """One record per image of ``train/<wnid>/`` and ``val/<wnid>/``."""
    root = Path(root)
    splits = [s for s in SPLITS if (root / s).is_dir()]
    if not splits:
        raise DatasetLayoutError(f"{root}: missing train/ and val/ class folders (train/<wnid>/*.JPEG)")
    wnids = sorted({d.name for s in splits for d in (root / s).iterdir() if d.is_dir()})
    names = class_names(root, wnids)
    categories = [Category(i, names[w], w) for i, w in enumerate(wnids)]
    labels = {w: i for i, w in enumerate(wnids)}
    records: list[ImageRecord] = []
    quarantine: list[QuarantineEntry] = []
    warnings: list[ReadWarning] = []
    for split in splits:
        images = [
            (wnid, path)
            for wnid in sorted(d.name for d in (root / split).iterdir() if d.is_dir())
            for path in sorted((root / split / wnid).iterdir())
            if path.suffix.lower() in IMAGE_SUFFIXES
        ]
        sizes = check_images([path for _, path in images])
        warnings += sixteen_bit_warnings(root, [path for _, path in images], sizes)
        for (wnid, path), size in zip(images, sizes):
            record = _record(root, split, path, size, labels[wnid], names[wnid], quarantine)
            if record is not None:
                records.append(record)
    return ReadResult(records, categories, quarantine, warnings)


def class_names(root: Path, wnids: list[str]) -> dict[str, str]:
    """wnid -> human name (bundled table, then a mapping file in ``root``, then the wnid)."""
    mapping = _mapping_file(root)
    names = {w: WNID_NAMES.get(w) or mapping.get(w) or w for w in wnids}
    counts: dict[str, int] = {}
    for name in names.values():
        counts[name] = counts.get(name, 0) + 1
    return {w: (f"{n} ({w})" if counts[n] > 1 else n) for w, n in names.items()}


def _mapping_file(root: Path) -> dict[str, str]:
    """`<wnid> <synonyms, comma separated>` lines (tab or space separated) -> first synonym."""
    for name in MAPPING_FILES:
        path = root / name
        if path.exists():
            mapping = {}
            for line in path.read_text().splitlines():
                parts = line.strip().split(None, 1)
                if len(parts) == 2:
                    mapping[parts[0]] = parts[1].split(",")[0].strip()
            return mapping
    return {}


def _record(root, split, path, size, label, name, quarantine) -> ImageRecord | None:
    rel = path.relative_to(root).as_posix()
    if isinstance(size, str):
        quarantine.append(QuarantineEntry(rel, size))
        return None
    return ImageRecord(
        dataset="imagenet_sub",
        image_id=f"{path.parent.name}/{path.stem}",
        split=split,
        image_path=rel,
        width=size[0],
        height=size[1],
        categories=[name],
        label=label,
        label_name=name,
    )
