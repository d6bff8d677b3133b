"""SUN RGB-D: 10,335 RGB-D images from four sensors, used here as an external depth test set.

On-disk layout under the root (the ``SUNRGBD/`` folder of SUNRGBD.zip)::

    <sensor>/<subset>/<scene>/image/<name>.jpg
    <sensor>/<subset>/<scene>/depth/<name>.png       raw depth
    <sensor>/<subset>/<scene>/depth_bfx/<name>.png   refined (hole-filled) depth
    <sensor>/<subset>/<scene>/intrinsics.txt, scene.txt, extrinsics/, annotation*/ ...

``sensor`` is kv1, kv2, realsense or xtion; ``scene`` may be nested (``xtion/sun3ddata/<building>/
<sequence>/<frame>``), so a scene is any folder holding an ``image/`` folder. Depth PNGs are uint16
millimetres with their 16 bits rotated left by 3; `instructcv_core.data.labels.decode_sunrgbd_depth`
rotates them back, divides by 1000 and caps at 8 m (depth_format "sunrgbd_png").

Records: split "test", ``image_id`` = "<sensor>/<subset>/<scene>", ``label_name`` = scene.txt,
``depth_path`` = the ``depth/`` PNG (``depth_variant="depth_bfx"`` picks the refined one instead);
with the raw variant, ``depth_dense_path`` = the ``depth_bfx/`` PNG where it exists.
Options: ``exclude_nyu`` (default True) drops ``kv1/NYUdata``, the NYU Depth v2 images InstructCV
removes from this test set; ``split_file`` (MDET's ``SUNRGBD_val_splits.txt``: ``<rgb> <depth>``
lines, paths relative to the dataset's parent, e.g. ``SUNRGBD/kv2/...``) restricts to its lines;
``split="mdet_test"`` does the same with the copy of that list downloaded beside the dataset
(:data:`MDET_SPLIT_NAME`): the standard 5,050-image test split, 4,396 images without the NYU part,
which is the test set InstructCV reports (its ``SUNRGBD_val_splits4.txt``). ``split="all"`` (the
default) takes every scene folder (about 10,335 images, 8,886 without the NYU part): not a
published test split.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from instructcv_core.data.datasets.base import (
    DatasetLayoutError,
    DatasetSpec,
    ReadResult,
    RemoteFile,
    StructurePin,
    check_images,
    read_path_pairs,
    require,
    sixteen_bit_warnings,
)
from instructcv_core.data.images import ImageRefused
from instructcv_core.data.records import ImageRecord, QuarantineEntry

SENSORS = ("kv1", "kv2", "realsense", "xtion")
NYU_PREFIX = "kv1/NYUdata/"
DEPTH_VARIANTS = ("depth", "depth_bfx")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
#: MDET's list of the standard SUN RGB-D test split (5,050 ``<rgb> <depth>`` lines), placed beside the
#: dataset folder by the download.
MDET_SPLIT_NAME = "SUNRGBD_val_splits.txt"
SPLITS = ("all", "mdet_test")

SPEC = DatasetSpec(
    name="sunrgbd",
    title="SUN RGB-D",
    licence=(
        "No licence text is published with SUN RGB-D; Princeton distributes it for research. Cite "
        "Song, Lichtenberg and Xiao, CVPR 2015, and the datasets it re-uses (NYU Depth v2, Berkeley "
        "B3DO, SUN3D), whose images it contains."
    ),
    citation=(
        "S. Song, S. P. Lichtenberg and J. Xiao. SUN RGB-D: A RGB-D Scene Understanding Benchmark "
        "Suite. IEEE Conference on Computer Vision and Pattern Recognition (CVPR), 2015."
    ),
    homepage="https://rgbd.cs.princeton.edu/",
    files=(
        RemoteFile(
            "SUNRGBD.zip", ("http://rgbd.cs.princeton.edu/data/SUNRGBD.zip",),
            # no checksum or size published; one RGB image per scene folder, 10,335 RGB-D images
            structure=(StructurePin("members", 10_335, "SUNRGBD/*/image/*.jpg", at_least=True,
                                    source="SUN RGB-D: 10,335 RGB-D images, Song et al. 2015"),),
        ),
        RemoteFile(
            "SUNRGBDtoolbox.zip",
            ("http://rgbd.cs.princeton.edu/data/SUNRGBDtoolbox.zip",),
            "md5:18d22e1761d36352f37232cba102f91f",
            required=False,
        ),
        RemoteFile(
            MDET_SPLIT_NAME,
            (f"https://raw.githubusercontent.com/zhyever/Monocular-Depth-Estimation-Toolbox/main/splits/{MDET_SPLIT_NAME}",),
            extract=False,
            required=False,
            structure=(StructurePin("lines", 5_050, source="the standard SUN RGB-D test split, one <rgb> <depth> line per image"),),
        ),
    ),
    root_subdir="SUNRGBD",
    marker="kv1/NYUdata/NYU0001/intrinsics.txt",
)


def read(
    root: Path, depth_variant: str = "depth", exclude_nyu: bool = True, split_file: Path | None = None,
    split: str = "all",
) -> ReadResult:
    """One "test" record per scene folder (or per line of ``split_file`` / the ``mdet_test`` list)."""
    if depth_variant not in DEPTH_VARIANTS:
        raise ValueError(f"depth_variant must be one of {DEPTH_VARIANTS}, got {depth_variant!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(root)
    if split == "mdet_test":
        if split_file is not None:
            raise ValueError("give either split='mdet_test' or a split_file, not both")
        split_file = root.parent / MDET_SPLIT_NAME
        if not split_file.exists():
            raise DatasetLayoutError(
                f"{split_file}: missing. split 'mdet_test' (the standard 5,050-image SUN RGB-D test split, "
                f"4,396 without NYU, as InstructCV) needs MDET's {MDET_SPLIT_NAME} beside the SUNRGBD folder; "
                "its download failed or the dataset was given as extracted_dir without it")
    if split_file is not None:
        pairs = _split_file_pairs(root, require(Path(split_file), "SUN RGB-D split file (<rgb> <depth> lines)"))
    else:
        pairs = [(scene, None) for scene in find_scenes(root)]
    records: list[ImageRecord] = []
    quarantine: list[QuarantineEntry] = []
    # (scene, (image, depth) or why the scene has no image), then one pass of checks
    located = [
        (scene, _locate(root, scene, listed, depth_variant))
        for scene, listed in pairs
        if not (exclude_nyu and (scene + "/").startswith(NYU_PREFIX))
    ]
    image_rels = [found[0] for _, found in located if not isinstance(found, QuarantineEntry)]
    image_paths = [root / image_rel for image_rel in image_rels]
    checked = check_images(image_paths)
    sizes = iter(checked)
    warnings = sixteen_bit_warnings(root, image_paths, checked)
    for scene, found in located:
        if isinstance(found, QuarantineEntry):
            quarantine.append(found)
            continue
        record = _record(root, scene, *found, next(sizes), depth_variant, quarantine)
        if record is not None:
            records.append(record)
    return ReadResult(records, [], quarantine, warnings)


def find_scenes(root: Path) -> list[str]:
    """Scene folders (relative POSIX paths, sorted): every folder that holds an ``image/`` folder."""
    if not any((root / s).is_dir() for s in SENSORS):
        raise DatasetLayoutError(f"{root}: missing SUN RGB-D sensor folders (expected some of {', '.join(SENSORS)})")
    scenes = []
    for sensor in SENSORS:
        for dirpath, dirnames, _files in os.walk(root / sensor):
            dirnames.sort()
            if "image" in dirnames:
                scenes.append(Path(dirpath).relative_to(root).as_posix())
                dirnames[:] = []  # a scene's own subfolders hold no further scenes
    return scenes


def _split_file_pairs(root: Path, path: Path) -> list[tuple[str, tuple[str, str]]]:
    """(scene, (rgb, depth)) per `<rgb> <depth>` line, paths made relative to ``root``."""
    pairs = []
    for rgb_path, depth_path in read_path_pairs(path, "<rgb path> <depth path>"):
        rgb, depth = _relative_to_root(rgb_path, root.name), _relative_to_root(depth_path, root.name)
        pairs.append((Path(rgb).parent.parent.as_posix(), (rgb, depth)))
    return pairs


def _relative_to_root(path: str, root_name: str) -> str:
    """``SUNRGBD/kv1/...`` (or ``/any/prefix/SUNRGBD/kv1/...``) -> ``kv1/...``."""
    parts = [p for p in path.split("/") if p]
    if root_name in parts:
        parts = parts[parts.index(root_name) + 1 :]
    return "/".join(parts)


def _locate(root, scene, listed, depth_variant) -> tuple[str, str | None] | QuarantineEntry:
    """(image, depth path or None) of a scene, relative to ``root``; a quarantine entry if no image."""
    if listed is None:
        image = _single_file(root / scene / "image", IMAGE_SUFFIXES)
        depth = _single_file(root / scene / depth_variant, (".png",))
        if image is None:
            return QuarantineEntry(f"{scene}/image", "no image file in the scene's image/ folder")
        return f"{scene}/image/{image}", (f"{scene}/{depth_variant}/{depth}" if depth else None)
    image_rel, depth_rel = listed
    depth_path = Path(depth_rel)
    return image_rel, (depth_path.parent.parent / depth_variant / depth_path.name).as_posix()


def _record(root, scene, image_rel, depth_rel, size, depth_variant, quarantine) -> ImageRecord | None:
    if isinstance(size, str):
        quarantine.append(QuarantineEntry(image_rel, size))
        return None
    if depth_rel is None or not (root / depth_rel).exists():
        missing = depth_rel or f"{scene}/{depth_variant}"
        quarantine.append(QuarantineEntry(missing, f"no {depth_variant} PNG for {image_rel}"))
        return None
    problem = depth_problem(root / depth_rel, size)
    if problem:
        quarantine.append(QuarantineEntry(depth_rel, problem))
        return None
    dense = None
    if depth_variant == "depth":
        bfx = root / Path(depth_rel).parent.parent / "depth_bfx" / Path(depth_rel).name
        dense = bfx.relative_to(root).as_posix() if bfx.exists() else None
    scene_txt = root / scene / "scene.txt"
    return ImageRecord(
        dataset="sunrgbd",
        image_id=scene,
        split="test",
        image_path=image_rel,
        width=size[0],
        height=size[1],
        depth_path=depth_rel,
        depth_format="sunrgbd_png",
        depth_dense_path=dense,
        label_name=scene_txt.read_text().strip() if scene_txt.exists() else None,
    )


MAX_CAPPED_FRACTION = 0.5


def depth_problem(path: Path, size: tuple[int, int]) -> str | None:
    """Why a SUN RGB-D depth PNG is implausible for an image of ``size`` (width, height), or None.

    Decoded as the toolbox does (`decode_sunrgbd_depth`). A file stored without the 3-bit rotation
    decodes to huge values, nearly all capped at 8 m; real scenes have most measured pixels well
    inside the range, so more than half of them at the cap means a wrongly encoded file.
    """
    from instructcv_core.data.labels import SUNRGBD_MAX_DEPTH_M, decode_sunrgbd_depth

    try:
        depth = decode_sunrgbd_depth(path)
    except ImageRefused as exc:
        return exc.reason
    if depth.shape != (size[1], size[0]):
        return f"depth is {depth.shape[1]}x{depth.shape[0]} but the image is {size[0]}x{size[1]}"
    measured = depth[depth > 0]
    if measured.size == 0:
        return "no measured pixel (all 0)"
    capped = float(np.mean(measured >= SUNRGBD_MAX_DEPTH_M))
    if capped > MAX_CAPPED_FRACTION:
        return (f"{capped:.0%} of the measured pixels are at the {SUNRGBD_MAX_DEPTH_M:g} m cap: not a depth "
                "map in SUN RGB-D's encoding (millimetres with the bits rotated left by 3)")
    return None


def _single_file(folder: Path, suffixes: tuple[str, ...]) -> str | None:
    """Name of the first file (sorted) in ``folder`` with one of ``suffixes``; None if none."""
    if not folder.is_dir():
        return None
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    return names[0] if names else None
