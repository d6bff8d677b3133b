"""The raw-dataset stage as a plain function: acquire a source dataset, read it, write its records.

Acquisition, in order of preference:
1. ``extracted_dir``: the user's already-extracted dataset root (nothing is downloaded or copied);
2. ``archive_dir``: the user's already-downloaded archives, verified against the published checksums;
3. download from the published URLs and mirrors (the `mini` profile downloads its archives from the
   mini-benchmark mirror, built locally unless a mirror URL is given), verified, then extracted safely.

Everything lands under ``<data_root>/<profile>/raw/<dataset>/``:
``downloads/`` (verified archives), ``extracted/`` (the dataset root's parent), ``records.parquet``,
``categories.json``, ``quarantine.json``, ``warnings.json``, ``sample_grid.png`` and ``summary.json``.

``quarantine.json`` lists what a reader could not use (a file or image, or one annotation of a file:
then its ``annotation`` names it); ``warnings.json`` what it changed to keep usable input (clipped
boxes, masked depth pixels, 16-bit photographs read as 8-bit RGB), counted per kind in the summary
and logged. Both are written before the stage can fail for want of usable images, and that error
lists the quarantined files with their reasons.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from instructcv_core.data.datasets import dataset_module
from instructcv_core.data.datasets.base import DatasetLayoutError, DatasetSpec, RemoteFile
from instructcv_core.data.download import content_problem, fetch, verification_level, verify_checksum
from instructcv_core.data.structure import structure_problem
from instructcv_core.data.extract import read_marker, safe_extract
from instructcv_core.data.records import QuarantineEntry, ReadWarning, atomic_write_text, report_entry, write_records
from instructcv_core.data.schema import MAX_LISTED

log = logging.getLogger(__name__)

Logger = Callable[[str], None]


class SourceUnavailableError(RuntimeError):
    """A dataset cannot be obtained as configured; the message says what to provide."""


@dataclass
class RawDatasetResult:
    """What the stage produced for one dataset (all paths absolute)."""

    name: str
    root: Path
    records_path: Path
    categories_path: Path
    quarantine_path: Path
    summary_path: Path
    n_records: int
    split_counts: dict[str, int]
    category_counts: dict[str, int]
    n_quarantined: int  # lines of quarantine.json: files and images, and single annotations
    files: list[dict] = field(default_factory=list)  # filename, url, sha256, checksum, bytes, reused
    origin: str = "download"
    input_identity: dict | None = None  # what the records were read from (see _input_identity)
    reused_records: bool = False
    missing_optional: list[dict] = field(default_factory=list)  # filename, reason, effect
    n_quarantined_annotations: int = 0  # of n_quarantined: single annotations (their image was kept)
    warning_counts: dict[str, int] = field(default_factory=dict)  # ReadWarning kind -> count
    warnings_path: Path | None = None  # warnings.json: every ReadWarning

    @property
    def status(self) -> str:
        """``complete``, or a loud ``INCOMPLETE: ...`` line naming each missing optional file and its effect."""
        return optional_status(self.missing_optional)


def optional_status(missing: list[dict]) -> str:
    """``complete`` or ``INCOMPLETE: <file> unavailable (<reason>): <effect>; ...``."""
    if not missing:
        return "complete"
    parts = [f"{m['filename']} unavailable ({m['reason']})" + (f": {m['effect']}" if m.get("effect") else "")
             for m in missing]
    return "INCOMPLETE: " + "; ".join(parts)


def for_profile(spec: DatasetSpec, profile: str) -> DatasetSpec:
    """``spec`` with the optional files that ``profile`` requires (``RemoteFile.required_in``) made required."""
    files = tuple(replace(f, required=True) if profile in f.required_in else f for f in spec.files)
    return replace(spec, files=files)


def dataset_dir(data_root: Path, profile: str, name: str) -> Path:
    return Path(data_root) / profile / "raw" / name


def mini_spec(spec: DatasetSpec, mirror_url: str, archives: list[dict]) -> DatasetSpec:
    """The real spec with its files replaced by the mini-benchmark archives of the same names."""
    by_name = {f.filename: f for f in spec.files}
    files = []
    for a in archives:
        real = by_name.get(a["filename"])
        files.append(
            RemoteFile(
                filename=a["filename"],
                urls=(mirror_url.rstrip("/") + "/" + a["filename"],),
                checksum="sha256:" + a["sha256"],
                size=a["size"],
                extract=real.extract if real else True,
            )
        )
    return replace(spec, files=tuple(files), registration_only=False)


def acquire(
    spec: DatasetSpec,
    target: Path,
    *,
    archive_dir: Path | None = None,
    extracted_dir: Path | None = None,
    allow_download: bool = True,
    retries: int = 5,
    info: Logger = log.info,
    show_bar: bool = True,
    warn: Logger = log.warning,
) -> tuple[Path, list[dict], str, list[dict]]:
    """Make ``spec``'s dataset available; returns (dataset root, file records, origin, missing optional files).

    A required file that cannot be obtained stops the stage (with its ``missing_effect`` in the
    message); an optional one is listed in the fourth value (filename, reason, effect) and logged
    as a warning, so the asset's status can say what is missing.
    """
    if extracted_dir is not None:
        root = _find_root(Path(extracted_dir), spec)
        info(f"{spec.name}: using the extracted dataset at {root} (nothing downloaded)")
        return root, [], "extracted_dir", []

    if spec.registration_only:
        raise SourceUnavailableError(
            f"{spec.title} cannot be downloaded automatically: it needs registration at {spec.homepage}. "
            f"Download {', '.join(f.filename for f in spec.files)} there, prepare the dataset folder "
            f"(layout: {spec.root_subdir}/{spec.marker} must exist) and set `extracted_dir` in this "
            "dataset's run config (ops.raw_<dataset>.config), or set `public_alternative: true` where "
            "the dataset has a public alternative."
        )

    info(f"{spec.title}: licence terms — {spec.licence}")
    downloads = target / "downloads"
    extracted = target / "extracted"
    files: list[dict] = []
    missing: list[dict] = []

    def skip(remote: RemoteFile, reason: str) -> None:
        missing.append({"filename": remote.filename, "reason": reason, "effect": remote.missing_effect})
        warn(f"{spec.name}: optional file {remote.filename} unavailable ({reason}); continuing without it"
             + (f": {remote.missing_effect}" if remote.missing_effect else ""))

    def effect(remote: RemoteFile) -> str:
        return f"; without it {remote.missing_effect}" if remote.missing_effect else ""

    for remote in spec.files:
        if archive_dir is not None:
            path = Path(archive_dir) / remote.filename
            if not path.exists():
                if not remote.required:
                    skip(remote, f"not in archive_dir {archive_dir}")
                    continue
                raise SourceUnavailableError(f"{path}: missing (archive_dir given for {spec.name}){effect(remote)}")
            level = _verify_local(path, remote)
            files.append({"filename": remote.filename, "url": None, "path": str(path), "checksum": remote.checksum,
                          "bytes": path.stat().st_size, "reused": True, "verification": level})
        else:
            if not remote.urls:
                if not remote.required:
                    skip(remote, "no download URL")
                    continue
                raise SourceUnavailableError(f"{spec.name}: {remote.filename} has no download URL{effect(remote)}")
            if not allow_download:
                raise SourceUnavailableError(
                    f"{spec.name}: {remote.filename} is not present and downloads are disabled "
                    f"(allow_download: false); set archive_dir or extracted_dir, or allow downloads"
                )
            try:
                result = fetch(remote, downloads, retries=retries, progress=_progress_logger(remote.filename, info),
                               show_bar=show_bar)
            except Exception as exc:
                if remote.required and remote.missing_effect:
                    raise SourceUnavailableError(
                        f"{spec.name}: {remote.filename} could not be downloaded ({type(exc).__name__}: {exc}); it is "
                        f"required in this profile{effect(remote)}. Provide it with archive_dir or extracted_dir"
                    ) from exc
                if remote.required:
                    raise
                skip(remote, f"{type(exc).__name__}: {exc}")
                continue
            path = result.path
            if result.reused:
                info(f"{remote.filename}: verified earlier, not downloaded again")
            files.append({"filename": remote.filename, "url": result.url, "path": str(path), "sha256": result.sha256,
                          "checksum": remote.checksum, "bytes": result.bytes, "reused": result.reused,
                          "verification": result.verification})
        _unpack(path, remote, extracted, info, show_bar)
    root = _find_root(extracted, spec)
    return root, files, "archive_dir" if archive_dir is not None else "download", missing


def _verify_local(path: Path, remote: RemoteFile) -> str:
    """Check a user's copy against the spec as `fetch` checks a download; return the level reached."""
    problem = content_problem(path, remote.filename)
    if problem is not None:
        raise SourceUnavailableError(f"{path}: unusable copy of {remote.filename}: {problem}")
    if remote.size is not None and path.stat().st_size != remote.size:
        raise SourceUnavailableError(
            f"{path}: {path.stat().st_size} bytes, but {remote.filename} is published with {remote.size}"
        )
    if remote.structure:
        problem = structure_problem(path, remote.structure)
        if problem is not None:
            raise SourceUnavailableError(f"{path}: unusable copy of {remote.filename}: not its published structure: {problem}")
    if remote.checksum:
        verify_checksum(path, remote.checksum)
    level = verification_level(remote)
    if level == "content":
        log.warning("%s: no checksum or size is published; only its content type was checked", path)
    return level


def build_raw_dataset(
    name: str,
    spec: DatasetSpec,
    target: Path,
    *,
    archive_dir: Path | None = None,
    extracted_dir: Path | None = None,
    allow_download: bool = True,
    retries: int = 5,
    reader_options: dict | None = None,
    info: Logger = log.info,
    show_bar: bool = True,
    origin_override: str | None = None,
    warn: Logger | None = None,
) -> RawDatasetResult:
    """Acquire, read and record one source dataset.

    Idempotent: a re-run never downloads or extracts again, and when neither the archives, the
    reader options nor the reader's code changed it reuses the records instead of re-reading
    (re-checking every image of COCO takes minutes). A user's ``extracted_dir`` is always re-read.

    The quarantine and warning reports are written first; a read that leaves no usable image
    then stops with an error listing the quarantined files and why (records and summary of an
    earlier run are left as they were).
    """
    target = Path(target)
    root, files, origin, missing = acquire(
        spec, target, archive_dir=archive_dir, extracted_dir=extracted_dir,
        allow_download=allow_download, retries=retries, info=info, show_bar=show_bar, warn=warn or info,
    )
    identity = None if extracted_dir is not None else _input_identity(name, root, target, reader_options)
    previous = _load_summary(target / "summary.json")
    if identity is not None and previous is not None and previous.input_identity == identity:
        info(f"{name}: archives, reader and options unchanged: reusing {previous.records_path}")
        previous.files, previous.reused_records, previous.missing_optional = files, True, missing
        return previous
    info(f"{name}: reading {root}")
    started = time.monotonic()
    result = dataset_module(name).read(root, **(reader_options or {}))
    info(f"{name}: {len(result.records)} records, {len(result.quarantine)} quarantined "
         f"in {time.monotonic() - started:.1f} s")
    quarantine_path = target / "quarantine.json"
    atomic_write_text(quarantine_path, json.dumps([report_entry(q) for q in result.quarantine], indent=1))
    warnings_path = target / "warnings.json"
    atomic_write_text(warnings_path, json.dumps([report_entry(w) for w in result.warnings], indent=1))
    warning_counts = dict(sorted(Counter(w.kind for w in result.warnings).items()))
    for line in warning_lines(name, result.warnings, warnings_path):
        (warn or info)(line)
    if not result.records:
        raise DatasetLayoutError(no_usable_images(name, root, result.quarantine, quarantine_path))

    records_path = write_records(result.records, target / "records.parquet", root, result.categories)
    categories_path = target / "categories.json"
    atomic_write_text(categories_path, json.dumps([asdict(c) for c in result.categories], indent=1))

    split_counts = dict(sorted(Counter(r.split for r in result.records).items()))
    category_counts = Counter(c for r in result.records for c in r.categories)
    summary = RawDatasetResult(
        name=name, root=root, records_path=records_path, categories_path=categories_path,
        quarantine_path=quarantine_path, summary_path=target / "summary.json",
        n_records=len(result.records), split_counts=split_counts,
        category_counts=dict(sorted(category_counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        n_quarantined=len(result.quarantine), files=files, origin=origin_override or origin,
        input_identity=identity, missing_optional=missing,
        n_quarantined_annotations=sum(q.annotation is not None for q in result.quarantine),
        warning_counts=warning_counts, warnings_path=warnings_path,
    )
    atomic_write_text(summary.summary_path, json.dumps(_jsonable(asdict(summary)), indent=1))
    return summary


def no_usable_images(name: str, root: Path, quarantine: list[QuarantineEntry], report: Path) -> str:
    """The error of a read without a single usable image: what was quarantined and why.

    Lists the first `MAX_LISTED` entries (whole files and images before single annotations) and
    how many more there are; the full list is in ``report``.
    """
    if not quarantine:
        return f"{root}: no usable images found for {name}: the reader found no image at all (nothing quarantined)"
    ordered = sorted(quarantine, key=lambda q: q.annotation is not None)
    lines = [f"  {q.path}" + (f" [{q.annotation}]" if q.annotation else "") + f": {q.reason}"
             for q in ordered[:MAX_LISTED]]
    if len(ordered) > MAX_LISTED:
        lines.append(f"  and {len(ordered) - MAX_LISTED} more")
    return (f"{root}: no usable images found for {name}: {len(quarantine)} quarantined "
            f"(all of them in {report}):\n" + "\n".join(lines))


def warning_lines(name: str, warnings: list[ReadWarning], report: Path, examples: int = 3) -> list[str]:
    """One log line per warning kind: its count, the report that lists them all, and a few examples."""
    lines = []
    for kind, count in sorted(Counter(w.kind for w in warnings).items()):
        shown = [w for w in warnings if w.kind == kind][:examples]
        listed = "; ".join(f"{w.path}" + (f" [{w.annotation}]" if w.annotation else "") + f": {w.detail}"
                           for w in shown)
        lines.append(f"{name}: {count} {kind} warning{'s' if count != 1 else ''} (all in {report}); e.g. {listed}")
    return lines


def _input_identity(name: str, root: Path, target: Path, reader_options: dict | None) -> dict:
    """What a records table depends on: the unpacked archives, the reader options and reader code."""
    from instructcv_core.data import images, labels, schema, voc_xml
    from instructcv_core.data import records as records_module
    from instructcv_core.data.datasets import base as base_module

    markers = target / "extracted" / ".instructcv-unpacked"
    code = hashlib.sha256()
    for module in (dataset_module(name), base_module, records_module, images, labels, schema, voc_xml):
        code.update(Path(module.__file__).read_bytes())
    return {
        "root": str(root),
        "archives": [json.loads(m.read_text()) for m in sorted(markers.glob("*.json"))],
        "reader_options": _jsonable(reader_options or {}),
        "reader_code_sha256": code.hexdigest(),
    }


def _load_summary(path: Path) -> RawDatasetResult | None:
    """The summary a previous run wrote, if it and the files it names are intact."""
    try:
        data = json.loads(path.read_text())
        summary = RawDatasetResult(**data)
    except (OSError, ValueError, TypeError):
        return None
    for key in ("root", "records_path", "categories_path", "quarantine_path", "summary_path", "warnings_path"):
        if getattr(summary, key) is not None:
            setattr(summary, key, Path(getattr(summary, key)))
    if not summary.records_path.exists():
        return None
    return summary


def _find_root(base: Path, spec: DatasetSpec) -> Path:
    """The dataset root under ``base``: ``base`` itself or ``base/root_subdir``, proven by the marker."""
    for candidate in (base / spec.root_subdir, base):
        if (candidate / spec.marker).exists():
            return candidate.resolve()
    raise DatasetLayoutError(
        f"{base}: not a {spec.title} folder (expected {Path(spec.root_subdir) / spec.marker} inside it)"
    )


def _unpack(path: Path, remote: RemoteFile, extracted: Path, info: Logger, show_bar: bool) -> None:
    """Extract (or place) one verified file into the shared ``extracted`` folder, once.

    Archives of one dataset unpack side by side into one folder (COCO's three zips give
    ``annotations/``, ``train2017/``, ``val2017/``). Each archive is extracted safely into a
    temporary folder first and then moved in; a marker per archive (its sha256) makes this idempotent.
    """
    markers = extracted / ".instructcv-unpacked"
    marker = markers / f"{remote.filename}.json"
    # The verified file's size and mtime identify it (download.fetch only replaces it after a new
    # verification), so re-runs never re-hash multi-GB archives.
    stat = path.stat()
    identity = {"filename": remote.filename, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if marker.exists() and json.loads(marker.read_text()) == identity:
        return
    extracted.mkdir(parents=True, exist_ok=True)
    if not remote.extract:
        tmp = extracted / f".{remote.filename}.tmp"
        shutil.copyfile(path, tmp)
        tmp.replace(extracted / remote.filename)
    else:
        info(f"extracting {remote.filename}")
        with tempfile.TemporaryDirectory(prefix=".unpack-", dir=extracted) as tmp:
            unpacked = safe_extract(path, Path(tmp) / "contents", progress=_progress_logger(remote.filename, info, "members"),
                                    show_bar=show_bar)
            for change in read_marker(unpacked)["normalised_modes"]:
                info(f"{remote.filename}: member {change['member']} has mode {change['archive_mode']}; "
                     f"written as {change['written_mode']}")
            _merge_tree(unpacked, extracted)
    markers.mkdir(exist_ok=True)
    atomic_write_text(marker, json.dumps(identity))


def _merge_tree(src: Path, dst: Path) -> None:
    """Move everything under ``src`` into ``dst``, replacing files and merging folders."""
    for entry in src.iterdir():
        if entry.name == ".extracted.json":
            continue
        target = dst / entry.name
        if entry.is_dir() and target.is_dir():
            _merge_tree(entry, target)
        else:
            if target.is_dir():
                shutil.rmtree(target)
            entry.replace(target)


def _progress_logger(label: str, info: Logger, unit: str = "bytes", every_s: float = 5.0):
    """Turn (done, total) callbacks into a log line every few seconds and at the end."""
    last = [0.0]

    def report(done: int, total: int | None) -> None:
        now = time.monotonic()
        finished = total is not None and done >= total
        if not finished and now - last[0] < every_s:
            return
        last[0] = now
        if unit == "bytes":
            size = f"{done / 2**20:,.1f} MiB" + (f" of {total / 2**20:,.1f} MiB" if total else "")
        else:
            size = f"{done:,} {unit}" + (f" of {total:,}" if total else "")
        pct = f" ({100 * done / total:.0f}%)" if total else ""
        info(f"{label}: {size}{pct}")

    return report


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def resolve_spec(
    name: str,
    profile: str,
    *,
    mirror_dir: Path,
    seed: int = 0,
    mini_sizes: dict[str, int] | None = None,
    mirror_url: str | None = None,
    public_alternative: bool = False,
    info: Logger = log.info,
) -> DatasetSpec:
    """The spec to acquire ``name`` from under ``profile``.

    `paper`: the published files. `mini`: the mini-benchmark archives of the same names, built
    into ``mirror_dir`` (and fetched from it through the same download code) unless ``mirror_url``
    points at a mirror that already hosts them (its ``index.json`` lists their checksums).
    ``public_alternative`` selects Imagenette instead of registration-only ImageNet.
    """
    module = dataset_module(name)
    spec = module.SPEC
    if name == "imagenet_sub" and (public_alternative or profile == "mini"):
        spec = module.IMAGENETTE_SPEC
    if profile == "paper":
        return for_profile(spec, profile)
    if mirror_url is None:
        from instructcv_core.data.mini.build import build_dataset

        info(f"{name}: mini-benchmark archives in {mirror_dir} (built once per seed and sizes)")
        archives = [a.__dict__ for a in build_dataset(name, mirror_dir, seed, mini_sizes)]
        return mini_spec(spec, Path(mirror_dir).resolve().as_uri(), archives)
    with tempfile.TemporaryDirectory() as tmp:
        index = fetch(RemoteFile("index.json", (mirror_url.rstrip("/") + "/index.json",)), Path(tmp), show_bar=False)
        files = json.loads(index.path.read_text())["files"]
    if name not in files:
        raise SourceUnavailableError(f"{mirror_url}/index.json lists no archives for {name}")
    return mini_spec(spec, mirror_url, files[name])
