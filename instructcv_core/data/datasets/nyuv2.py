"""NYU Depth v2: the 1,449-image labeled set with the official split, and BTS's "sync" training set.

On-disk layout under the root::

    nyu_depth_v2_labeled.mat    MATLAB v7.3 (HDF5). Under h5py (MATLAB's column-major order reversed):
                                images (N, 3, W, H) uint8, depths (N, W, H) float32 metres (in-painted),
                                rawDepths (N, W, H) float32 metres with 0 = no measurement,
                                sceneTypes (1, N) cell = HDF5 object references to uint16 char arrays
    splits.mat                  MATLAB v5: trainNdxs, testNdxs, 1-based column vectors (795 / 654)
    sync/<scene>/rgb_%05d.jpg, sync/<scene>/sync_depth_%05d.png   (optional, BTS sync.zip; uint16 mm)
    nyudepthv2_train_files_with_gt.txt                             (optional, BTS list of sync pairs:
                                `/scene/rgb_XXXXX.jpg /scene/sync_depth_XXXXX.png <focal>`)

The reader exports every labeled sample once (like BTS's extract script, but lossless) to
``export/{train,test}/``: ``rgb_%05d.png``, ``depth_raw_%05d.png`` (rawDepths, uint16 mm, 0 = missing)
and ``depth_%05d.png`` (in-painted depths, uint16 mm). ``%05d`` is the 1-based index into the mat,
the index splits.mat uses (BTS names its files with the 0-based index instead). The export is
idempotent and resumable: files already there are kept while the mat and split files are unchanged
(``export/.export.json`` records their size and mtime; a change wipes the export and redoes it), and
each file appears atomically. Depth pixels that are no distance (NaN, infinite, negative, above
`MAX_DEPTH_M`) are written as 0 = missing and reported (``depth_masked`` warnings); a depth map with
more than `MAX_INVALID_DEPTH_FRACTION` of them quarantines its sample.

Records: labeled samples get split "train"/"test", ``image_id`` = "%05d" (1-based), ``depth_path``
= the raw depth, ``depth_dense_path`` = the in-painted one, ``label_name`` = the scene type. Sync
pairs get split "train_sync", ``image_id`` = "<scene>/<frame>", ``label_name`` = the scene type (the
scene folder name without its ``_<number>[letter]`` suffix).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import cv2
import h5py
import numpy as np
import scipy.io

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
from instructcv_core.data.images import ImageRefused, header_size
from instructcv_core.data.records import ImageRecord, QuarantineEntry, ReadWarning, atomic_write, atomic_write_text
from instructcv_core.data.schema import MAX_LISTED, AnnotationError, FieldErrors

MAT_NAME = "nyu_depth_v2_labeled.mat"
SPLITS_NAME = "splits.mat"
SYNC_DIR = "sync"
SYNC_LIST_NAME = "nyudepthv2_train_files_with_gt.txt"
SYNC_MISSING_EFFECT = ("depth training falls from about 24,000 BTS sync frames (the official training set) to "
                       "the 795 labeled training images")
EXPORT_DIR = "export"
EXPORT_STAMP = ".export.json"
EXPORT_VERSION = 1
SPLIT_KEYS = {"train": "trainNdxs", "test": "testNdxs"}

SPEC = DatasetSpec(
    name="nyuv2",
    title="NYU Depth Dataset V2 (labeled set, official split; BTS sync training set)",
    licence=(
        "No licence text is published with NYU Depth v2; the dataset is distributed by NYU for "
        "research. Cite Silberman, Hoiem, Kohli and Fergus, ECCV 2012. The optional sync.zip is the "
        "BTS authors' preprocessing of the raw NYU Depth v2 recordings, shared via Google Drive."
    ),
    citation=(
        "N. Silberman, D. Hoiem, P. Kohli and R. Fergus. Indoor Segmentation and Support Inference "
        "from RGBD Images. European Conference on Computer Vision (ECCV), 2012."
    ),
    homepage="https://cs.nyu.edu/~fergus/datasets/nyu_depth_v2.html",
    files=(
        # no checksum is published; the size is the file's published byte length
        RemoteFile(
            MAT_NAME,
            ("http://horatio.cs.nyu.edu/mit/silberman/nyu_depth_v2/nyu_depth_v2_labeled.mat",),
            size=2_972_037_809,
            extract=False,
        ),
        RemoteFile(
            SPLITS_NAME,
            (
                "http://horatio.cs.nyu.edu/mit/silberman/indoor_seg_sup/splits.mat",
                "https://raw.githubusercontent.com/cleinc/bts/master/utils/splits.mat",  # BTS copy
            ),
            extract=False,
            # no checksum or size published; the official split is: 795 train, 654 test (1-based indices)
            structure=(StructurePin("mat_array", 795, "trainNdxs", source="the official NYUv2 split"),
                       StructurePin("mat_array", 654, "testNdxs", source="the official NYUv2 split")),
        ),
        RemoteFile(
            "sync.zip", ("gdrive://1AysroWpfISmm-yRFGBgFTrLy6FjQwvwP",), extract=True, required=False,
            # no checksum or size published; it holds (at least) the 24,231 pairs of the BTS list
            structure=(StructurePin("members", 24_231, "*rgb_*.jpg", at_least=True, source="the BTS pair list"),
                       StructurePin("members", 24_231, "*sync_depth_*.png", at_least=True, source="the BTS pair list")),
            required_in=("paper",), missing_effect=SYNC_MISSING_EFFECT,
        ),
        RemoteFile(
            SYNC_LIST_NAME,
            (f"https://raw.githubusercontent.com/cleinc/bts/master/train_test_inputs/{SYNC_LIST_NAME}",),
            extract=False,
            required=False,
            structure=(StructurePin("lines", 24_231, source="BTS train_test_inputs: one line per training pair"),),
            required_in=("paper",),
            missing_effect=SYNC_MISSING_EFFECT,
        ),
    ),
    root_subdir=".",
    marker=MAT_NAME,
)


def read(root: Path, include_sync: bool = True) -> ReadResult:
    """Records of the labeled set (exported to PNG on first use) and, if present, the sync set."""
    root = Path(root)
    mat_path = require(root / MAT_NAME, "NYU Depth v2 labeled set (MATLAB v7.3 / HDF5 file)")
    splits_path = require(root / SPLITS_NAME, "NYU Depth v2 official split (trainNdxs / testNdxs)")
    with _open_mat(mat_path) as f:
        n_images = _check_mat(f, mat_path)
    splits = load_splits(splits_path, n_images)
    scene_types, refused, masked = export_labeled(root, splits)
    records: list[ImageRecord] = []
    quarantine: list[QuarantineEntry] = [QuarantineEntry(MAT_NAME, reason) for reason in refused.values()]
    warnings: list[ReadWarning] = list(masked)
    for split, indices in splits.items():
        indices = [idx for idx in indices if int(idx) not in refused]
        sizes = check_images([root / export_paths(split, int(idx))["rgb"] for idx in indices])
        for idx, size in zip(indices, sizes):
            record = _labeled_record(root, split, int(idx), size, scene_types[idx - 1], quarantine)
            if record is not None:
                records.append(record)
    if include_sync and (root / SYNC_DIR).is_dir():
        records += _sync_records(root, quarantine, warnings)
    return ReadResult(records, [], quarantine, warnings)


def load_splits(path: Path, n_images: int | None = None) -> dict[str, np.ndarray]:
    """{"train": trainNdxs, "test": testNdxs} as 1-based int64 vectors (MATLAB v5 file).

    Every problem is named in one `AnnotationError` (`SchemaErrors` when there are several): per
    split, the indices below 1, beyond ``n_images`` (when given: the samples of the mat) and
    repeated; then the indices both splits share. Indices are listed as runs (``796-1449``).
    """
    try:
        mat = scipy.io.loadmat(path)
    except (ValueError, NotImplementedError, OSError) as exc:
        raise ValueError(f"{path}: not a readable MATLAB v5 split file ({exc})") from None
    errors = FieldErrors(path)
    splits = {}
    for split, key in SPLIT_KEYS.items():
        if key not in mat:
            errors.add(key, f"no such variable (has {sorted(k for k in mat if not k.startswith('__'))})")
            continue
        values = np.asarray(mat[key]).ravel()
        if values.dtype.kind not in "iuf" or not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
            errors.add(key, f"must hold whole numbers, got {values.dtype} {values[:5].tolist()}...")
            continue
        splits[split] = indices = values.astype(np.int64)
        below = sorted(set(indices[indices < 1].tolist()))
        if below:
            errors.add(key, f"indices are 1-based; {len(below)} below 1: {index_runs(below)}")
        beyond = sorted(set(indices[indices > n_images].tolist())) if n_images is not None else []
        if beyond:
            errors.add(key, f"{len(beyond)} indices beyond the {n_images} images of {MAT_NAME}: {index_runs(beyond)}")
        repeated = sorted(int(v) for v, c in zip(*np.unique(indices, return_counts=True)) if c > 1)
        if repeated:
            errors.add(key, f"{len(repeated)} indices appear more than once: {index_runs(repeated)}")
    if len(splits) == len(SPLIT_KEYS):
        shared = sorted(set(splits["train"].tolist()) & set(splits["test"].tolist()))
        if shared:
            errors.add("trainNdxs/testNdxs", f"the splits overlap: {len(shared)} indices in both: {index_runs(shared)}")
    errors.raise_if_any()
    return splits


def index_runs(values: list[int], shown: int = MAX_LISTED) -> str:
    """Sorted integers as runs, ``"1-3, 7, 9-12"``: every index, compactly; past ``shown`` runs, a count."""
    runs: list[list[int]] = []
    for v in values:
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    text = [str(a) if a == b else f"{a}-{b}" for a, b in runs]
    more = sum(b - a + 1 for a, b in runs[shown:])
    return ", ".join(text[:shown]) + (f" and {more} more" if more else "")


def export_labeled(root: Path, splits: dict[str, np.ndarray]) -> tuple[list[str], dict[int, str], list[ReadWarning]]:
    """Write the PNG export of every split sample (missing files only).

    Returns the scene types; per refused 1-based index, why (a depth map with more than
    `MAX_INVALID_DEPTH_FRACTION` invalid pixels, `depth_problem`): a refused sample gets no files
    and no record; and a ``depth_masked`` warning per depth map whose invalid pixels (NaN,
    infinite, negative, above `MAX_DEPTH_M`) were exported as 0 = missing. The depth maps are
    checked on every read, also where their files exist, so the report is the same after a
    resumed export. Images: ``images[i]`` is (3, W, H) under h5py and ``.T`` gives (H, W, 3);
    depths likewise ``depths[i].T``. Depths are rounded to whole millimetres; 0 stays 0 = missing.
    """
    mat_path = root / MAT_NAME
    stamp = {"version": EXPORT_VERSION, "mat": _fingerprint(mat_path), "splits": _fingerprint(root / SPLITS_NAME)}
    stamp_path = root / EXPORT_DIR / EXPORT_STAMP
    keep_existing = stamp_path.exists() and json.loads(stamp_path.read_text()) == stamp
    if not keep_existing:  # another mat or split file (or none recorded): start from scratch
        for split in SPLIT_KEYS:
            shutil.rmtree(root / EXPORT_DIR / split, ignore_errors=True)
    with _open_mat(mat_path) as f:
        n = _check_mat(f, mat_path)
        scene_types = cell_strings(f, "sceneTypes")
        if len(scene_types) != n:
            raise ValueError(f"{mat_path}: {len(scene_types)} sceneTypes for {n} images")
        beyond = {split: int(indices.max()) for split, indices in splits.items() if len(indices) and indices.max() > n}
        if beyond:
            raise ValueError(f"{mat_path}: split indices beyond its {n} images ({beyond}): check them with "
                             "load_splits(path, n_images) first")
        # Stamp first: an interrupted export resumes (files appear atomically, so existing = complete).
        atomic_write_text(stamp_path, json.dumps(stamp))
        refused: dict[int, str] = {}
        masked: list[ReadWarning] = []
        for split, indices in splits.items():
            for idx in indices:
                try:
                    masked += _export_sample(f, root, split, int(idx), keep_existing)
                except AnnotationError as exc:
                    refused[int(idx)] = str(exc)
    return scene_types, refused, masked


MAX_DEPTH_M = 20.0  # beyond any Kinect reading; a larger value is corruption, not a far wall
#: A depth map with more invalid pixels than this fraction is refused (its sample quarantined);
#: with fewer, they are masked: exported as 0, the encoding of "no measurement" (as the raw Kinect holes).
MAX_INVALID_DEPTH_FRACTION = 0.5
_INVALID_DEPTH = f"NaN, infinite, negative or above {MAX_DEPTH_M:g} m"


def invalid_depth(depth_m: np.ndarray) -> np.ndarray:
    """The pixels of a depth map in metres that are no distance: NaN, infinite, negative or above
    `MAX_DEPTH_M` (0 is not among them: it is the encoding of "no measurement")."""
    depth_m = np.asarray(depth_m, np.float64)
    with np.errstate(invalid="ignore"):
        return ~np.isfinite(depth_m) | (depth_m < 0) | (depth_m > MAX_DEPTH_M)


def depth_problem(depth_m: np.ndarray) -> str | None:
    """Why a depth map in metres is unusable, or None: more than `MAX_INVALID_DEPTH_FRACTION` of its
    pixels are invalid (`invalid_depth`). Fewer are masked, not refused."""
    invalid = invalid_depth(depth_m)
    fraction = float(invalid.mean()) if invalid.size else 0.0
    if fraction <= MAX_INVALID_DEPTH_FRACTION:
        return None
    return (f"{fraction:.1%} of the pixels ({int(invalid.sum())} of {invalid.size}) are {_INVALID_DEPTH}, "
            f"more than the {MAX_INVALID_DEPTH_FRACTION:.0%} a depth map may have masked "
            f"(e.g. {float(np.asarray(depth_m)[invalid].flat[0])})")


def _check_mat(f: h5py.File, mat_path: Path) -> int:
    """The number of samples of the labeled mat, after checking its datasets and their shapes."""
    for key in ("images", "depths", "rawDepths", "sceneTypes"):
        if key not in f:
            raise ValueError(f"{mat_path}: no {key!r} dataset (is this the labeled NYU Depth v2 file?)")
    return _check_shapes(f, mat_path)


def _check_shapes(f: h5py.File, mat_path: Path) -> int:
    """The number of samples, after checking that images, depths and rawDepths agree."""
    images, depths, raw = f["images"].shape, f["depths"].shape, f["rawDepths"].shape
    if len(images) != 4 or images[1] != 3 or len(depths) != 3 or depths != raw:
        raise AnnotationError(mat_path, "images/depths/rawDepths",
                              f"expected (N, 3, W, H) and twice (N, W, H), got {images}, {depths}, {raw}")
    if images[0] != depths[0] or images[2:] != depths[1:]:
        raise AnnotationError(mat_path, "images/depths",
                              f"{images[0]} images of {images[2:]} but {depths[0]} depth maps of {depths[1:]}")
    return images[0]


def _open_mat(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{path}: not a readable MATLAB v7.3 (HDF5) file ({exc})") from None


def export_paths(split: str, idx: int) -> dict[str, str]:
    """Paths (relative to the root) of the exported files of 1-based sample ``idx``."""
    base = f"{EXPORT_DIR}/{split}"
    return {
        "rgb": f"{base}/rgb_{idx:05d}.png",
        "depth_raw": f"{base}/depth_raw_{idx:05d}.png",
        "depth": f"{base}/depth_{idx:05d}.png",
    }


def cell_strings(f: h5py.File, key: str) -> list[str]:
    """A MATLAB v7.3 cell array of strings: object references to uint16 char arrays."""
    out = []
    for item in np.asarray(f[key][()]).ravel():
        out.append(_matlab_string(f[item]) if isinstance(item, h5py.Reference) else str(item))
    return out


def metres_to_mm_png(depth_m: np.ndarray) -> np.ndarray:
    """float metres -> uint16 millimetres (rounded; NaN/negative -> 0, capped at 65.535 m)."""
    mm = np.rint(np.nan_to_num(depth_m, nan=0.0) * 1000.0)
    return np.clip(mm, 0, 65535).astype(np.uint16)


def _matlab_string(ds: h5py.Dataset) -> str:
    if ds.attrs.get("MATLAB_empty", 0):
        return ""
    data = np.asarray(ds[()])
    if data.dtype.kind in "ui":
        return "".join(chr(int(c)) for c in data.ravel())
    if data.dtype.kind == "S":
        return b"".join(data.ravel()).decode()
    return str(data)


def _export_sample(f: h5py.File, root: Path, split: str, idx: int, keep_existing: bool) -> list[ReadWarning]:
    """Write the three PNGs of 1-based sample ``idx`` (only the missing ones if ``keep_existing``).

    Invalid depth pixels are written as 0 and reported (one warning per masked map); a map with too
    many of them raises `AnnotationError` before any file of the sample is written.
    """
    i = idx - 1
    paths = export_paths(split, idx)
    missing = {kind: root / rel for kind, rel in paths.items() if not (keep_existing and (root / rel).exists())}
    depths = {"depth_raw": np.asarray(f["rawDepths"][i].T), "depth": np.asarray(f["depths"][i].T)}  # (W, H) -> (H, W)
    masked: list[ReadWarning] = []
    for kind, key in (("depth_raw", "rawDepths"), ("depth", "depths")):
        where = f"{key}[{i}] (sample {idx})"
        problem = depth_problem(depths[kind])
        if problem:
            raise AnnotationError(MAT_NAME, where, problem)
        invalid = invalid_depth(depths[kind])
        if invalid.any():
            depths[kind] = np.where(invalid, depths[kind].dtype.type(0), depths[kind])  # dtype kept: same rounding
            masked.append(ReadWarning(
                "depth_masked", MAT_NAME,
                f"{where}: {int(invalid.sum())} of {invalid.size} pixels ({invalid.mean():.1%}) are {_INVALID_DEPTH}; "
                f"written as 0 (no measurement) in {paths[kind]}"))
    for kind, path in missing.items():
        if kind == "rgb":
            rgb = np.ascontiguousarray(f["images"][i].T)  # (3, W, H) -> (H, W, 3)
            _write_png(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        else:
            _write_png(path, metres_to_mm_png(depths[kind]))
    return masked


def _write_png(path: Path, array: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", array)
    if not ok:
        raise ValueError(f"{path}: PNG encoding failed")
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data.tobytes()))


def _fingerprint(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _labeled_record(root, split, idx, size, scene_type, quarantine) -> ImageRecord | None:
    paths = export_paths(split, idx)
    if isinstance(size, str):
        quarantine.append(QuarantineEntry(paths["rgb"], size))
        return None
    return ImageRecord(
        dataset="nyuv2",
        image_id=f"{idx:05d}",
        split=split,
        image_path=paths["rgb"],
        width=size[0],
        height=size[1],
        depth_path=paths["depth_raw"],
        depth_format="png_uint16_mm",
        depth_dense_path=paths["depth"],
        label_name=scene_type,
    )


def scene_type_of(scene: str) -> str:
    """``"living_room_0047b"`` -> ``"living_room"``: a sync scene folder's scene type."""
    match = re.fullmatch(r"(.+?)_\d+[a-z]?", scene)
    return match.group(1) if match else scene


def _sync_records(root: Path, quarantine: list[QuarantineEntry], warnings: list[ReadWarning]) -> list[ImageRecord]:
    list_path = root / SYNC_LIST_NAME
    if not list_path.exists():
        raise DatasetLayoutError(f"{list_path}: missing BTS sync pair list (the sync/ folder is present)")
    pairs = [
        (f"{SYNC_DIR}/{rgb.lstrip('/')}", f"{SYNC_DIR}/{depth.lstrip('/')}")
        for rgb, depth in read_path_pairs(list_path, "<rgb> <depth> [focal]")
    ]
    records = []
    image_paths = [root / rgb_rel for rgb_rel, _ in pairs]
    sizes = check_images(image_paths)
    warnings += sixteen_bit_warnings(root, image_paths, sizes)
    for (rgb_rel, depth_rel), size in zip(pairs, sizes):
        if isinstance(size, str):
            quarantine.append(QuarantineEntry(rgb_rel, size))
            continue
        if not (root / depth_rel).exists():
            quarantine.append(QuarantineEntry(depth_rel, "depth file listed but not found"))
            continue
        try:
            depth_size = header_size(root / depth_rel)
        except ImageRefused as exc:
            quarantine.append(QuarantineEntry(depth_rel, exc.reason))
            continue
        if depth_size != size:
            reason = f"depth is {depth_size[0]}x{depth_size[1]} but {rgb_rel} is {size[0]}x{size[1]}"
            quarantine.append(QuarantineEntry(depth_rel, reason))
            continue
        scene = Path(rgb_rel).parent.name
        records.append(
            ImageRecord(
                dataset="nyuv2",
                image_id=f"{scene}/{Path(rgb_rel).stem.removeprefix('rgb_')}",
                split="train_sync",
                image_path=rgb_rel,
                width=size[0],
                height=size[1],
                depth_path=depth_rel,
                depth_format="png_uint16_mm",
                label_name=scene_type_of(scene),
            )
        )
    return records
