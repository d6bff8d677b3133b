"""The raw stage end to end on mini archives: mirror -> verified download -> safe extraction -> records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from instructcv_core.data.download import ChecksumMismatch
from instructcv_core.data.mini.build import build_mirror
from instructcv_core.data.mirror_server import MirrorRequestHandler, serve_directory
from instructcv_core.data.raw_stage import SourceUnavailableError, build_raw_dataset, resolve_spec
from instructcv_core.data.records import read_records

SIZES = {"coco": {"train": 6, "val": 3}, "voc": {"train": 2, "val": 4}, "fss1000": {"classes": 2, "per_class": 3}}


class CountingHandler(MirrorRequestHandler):
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server naming)
        CountingHandler.requests.append(self.path)
        super().do_GET()


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    root = tmp_path_factory.mktemp("mirror")
    build_mirror(root, seed=7, sizes=SIZES, datasets=list(SIZES))
    with serve_directory(root, handler_class=CountingHandler) as server:
        yield root, server.url


def _build(name, mirror_url, target, **kwargs):
    spec = resolve_spec(name, "mini", mirror_dir=target / "unused", mirror_url=mirror_url, mini_sizes=SIZES[name])
    return build_raw_dataset(name, spec, target, show_bar=False, **kwargs)


def test_coco_from_a_loopback_mirror_merges_its_three_archives(mirror, tmp_path):
    _, url = mirror
    CountingHandler.requests.clear()
    result = _build("coco", url, tmp_path / "coco")

    assert result.split_counts == {"train": 6, "val": 3}
    assert result.n_quarantined == 0
    assert sorted(f["filename"] for f in result.files) == ["annotations_trainval2017.zip", "train2017.zip", "val2017.zip"]
    assert all(f["url"].startswith(url) for f in result.files)
    assert sorted(p.name for p in result.root.iterdir() if not p.name.startswith(".")) == ["annotations", "train2017", "val2017"]
    records, root, categories = read_records(result.records_path)
    assert root == result.root and len(records) == 9
    assert {c.id for c in categories} <= {1, 3, 6, 16, 17, 18, 44, 62, 72}  # real, non-contiguous COCO ids
    # the archives went through HTTP (index + 3 files), and nothing half-written is left behind
    assert sorted(CountingHandler.requests) == sorted(["/index.json", "/train2017.zip", "/val2017.zip", "/annotations_trainval2017.zip"])
    assert not list((tmp_path / "coco" / "downloads").glob("*.part"))


def test_rerun_downloads_and_extracts_nothing(mirror, tmp_path):
    _, url = mirror
    first = _build("voc", url, tmp_path / "voc")
    marker_times = {p: p.stat().st_mtime_ns for p in (tmp_path / "voc" / "extracted" / ".instructcv-unpacked").iterdir()}
    CountingHandler.requests.clear()
    second = _build("voc", url, tmp_path / "voc")
    assert CountingHandler.requests == ["/index.json"]  # only the checksum list is re-read
    assert all(f["reused"] for f in second.files)
    assert {p: p.stat().st_mtime_ns for p in marker_times} == marker_times
    assert second.split_counts == first.split_counts == {"train": 2, "val": 4}


def test_checksum_mismatch_fails_and_leaves_nothing(mirror, tmp_path):
    root, _ = mirror
    bad = tmp_path / "bad_mirror"
    shutil.copytree(root, bad)
    index = json.loads((bad / "index.json").read_text())
    index["files"]["fss1000"][0]["sha256"] = "0" * 64
    (bad / "index.json").write_text(json.dumps(index))
    with serve_directory(bad) as server:
        with pytest.raises(ChecksumMismatch, match="fewshot_data.zip"):
            _build("fss1000", server.url, tmp_path / "fss")
    downloads = tmp_path / "fss" / "downloads"
    assert not downloads.exists() or not any(downloads.iterdir())
    assert not (tmp_path / "fss" / "extracted").exists()
    assert not (tmp_path / "fss" / "records.parquet").exists()


def test_archive_dir_is_verified_in_place(mirror, tmp_path):
    root, url = mirror
    result = _build("fss1000", url, tmp_path / "fss", archive_dir=root)
    assert result.origin == "archive_dir"
    assert result.files[0]["path"] == str(root / "fewshot_data.zip")
    assert not (tmp_path / "fss" / "downloads").exists()
    assert result.split_counts == {"test": 6}


def test_corrupt_image_is_quarantined_not_fatal(mirror, tmp_path):
    _, url = mirror
    first = _build("coco", url, tmp_path / "coco")
    victim = sorted((first.root / "val2017").glob("*.jpg"))[0]
    victim.write_bytes(b"\xff\xd8 not really a jpeg")
    result = build_raw_dataset("coco", resolve_spec("coco", "paper", mirror_dir=tmp_path),
                               tmp_path / "coco_again", extracted_dir=first.root, show_bar=False)
    assert result.origin == "extracted_dir"
    assert result.split_counts == {"train": 6, "val": 2}
    quarantine = json.loads(result.quarantine_path.read_text())
    assert [q["path"] for q in quarantine] == [f"val2017/{victim.name}"]
    assert "undecodable" in quarantine[0]["reason"] or "cannot" in quarantine[0]["reason"].lower()


def test_downloads_disabled_names_the_missing_file(tmp_path):
    spec = resolve_spec("voc", "paper", mirror_dir=tmp_path)
    with pytest.raises(SourceUnavailableError, match="VOCtrainval_11-May-2012.tar.*allow_download"):
        build_raw_dataset("voc", spec, tmp_path / "voc", allow_download=False, show_bar=False)


def test_extracted_dir_that_is_not_the_dataset_is_refused(tmp_path):
    (tmp_path / "somewhere").mkdir()
    spec = resolve_spec("voc", "paper", mirror_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"not a PASCAL VOC.*ImageSets/Segmentation/val.txt"):
        build_raw_dataset("voc", spec, tmp_path / "voc", extracted_dir=tmp_path / "somewhere", show_bar=False)


def test_paper_spec_carries_published_urls_and_checksums(tmp_path):
    spec = resolve_spec("coco", "paper", mirror_dir=tmp_path)
    by_name = {f.filename: f for f in spec.files}
    assert by_name["val2017.zip"].urls[0] == "http://images.cocodataset.org/zips/val2017.zip"
    assert by_name["val2017.zip"].checksum == "md5:442b8da7639aecaf257c1dceb8ba8c80"
    assert "CC BY 4.0" in spec.licence  # shown before a download starts


def test_unchanged_inputs_reuse_the_records_and_a_new_option_rereads(mirror, tmp_path):
    _, url = mirror
    first = _build("coco", url, tmp_path / "coco")
    assert not first.reused_records
    records_mtime = first.records_path.stat().st_mtime_ns
    second = _build("coco", url, tmp_path / "coco")
    assert second.reused_records and second.records_path.stat().st_mtime_ns == records_mtime
    assert second.split_counts == first.split_counts
    third = _build("coco", url, tmp_path / "coco", reader_options={"splits": ["val"]})
    assert not third.reused_records
    assert third.split_counts == {"val": 3}


def test_registration_only_dataset_says_what_to_provide(tmp_path):
    spec = resolve_spec("imagenet_sub", "paper", mirror_dir=tmp_path)
    with pytest.raises(SourceUnavailableError, match=r"registration.*extracted_dir.*public_alternative"):
        build_raw_dataset("imagenet_sub", spec, tmp_path / "imagenet", show_bar=False)
    assert not (tmp_path / "imagenet").exists()  # failed before touching anything
    public = resolve_spec("imagenet_sub", "paper", mirror_dir=tmp_path, public_alternative=True)
    assert public.files[0].urls == ("https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz",)


def _with_sync_like_file(spec, url: str, **kwargs):
    """``spec`` plus an optional file the mirror does not have (like NYUv2's BTS sync.zip)."""
    import dataclasses

    from instructcv_core.data.datasets.base import RemoteFile

    extra = RemoteFile("sync.zip", (url.rstrip("/") + "/sync.zip",), required=False, **kwargs)
    return dataclasses.replace(spec, files=(*spec.files, extra))


def test_missing_optional_file_is_a_loud_status_not_an_info_line(mirror, tmp_path):
    _, url = mirror
    spec = resolve_spec("voc", "mini", mirror_dir=tmp_path / "unused", mirror_url=url, mini_sizes=SIZES["voc"])
    spec = _with_sync_like_file(spec, url, missing_effect="depth training falls to 795 images")
    warnings: list[str] = []
    result = build_raw_dataset("voc", spec, tmp_path / "voc", show_bar=False, retries=1, warn=warnings.append)
    assert [m["filename"] for m in result.missing_optional] == ["sync.zip"]
    assert result.status.startswith("INCOMPLETE: sync.zip unavailable (")
    assert result.status.endswith("): depth training falls to 795 images")
    assert len(warnings) == 1 and "sync.zip" in warnings[0] and "795" in warnings[0]
    complete = build_raw_dataset("voc", resolve_spec("voc", "mini", mirror_dir=tmp_path / "unused", mirror_url=url,
                                                     mini_sizes=SIZES["voc"]), tmp_path / "voc2", show_bar=False)
    assert complete.status == "complete" and complete.missing_optional == []


def test_an_optional_file_the_profile_requires_stops_the_stage(mirror, tmp_path):
    from instructcv_core.data.datasets import nyuv2
    from instructcv_core.data.raw_stage import for_profile

    _, url = mirror
    spec = resolve_spec("voc", "mini", mirror_dir=tmp_path / "unused", mirror_url=url, mini_sizes=SIZES["voc"])
    spec = for_profile(_with_sync_like_file(spec, url, required_in=("paper",), missing_effect="depth training shrinks"),
                       "paper")
    with pytest.raises(SourceUnavailableError, match=r"(?s)sync.zip could not be downloaded.*required in this profile; "
                                                     r"without it depth training shrinks"):
        build_raw_dataset("voc", spec, tmp_path / "voc", show_bar=False, retries=1)
    # the paper profile requires NYUv2's BTS sync set (about 24k frames, the official training set)
    paper = {f.filename: f for f in resolve_spec("nyuv2", "paper", mirror_dir=tmp_path).files}
    assert paper["sync.zip"].required and paper[nyuv2.SYNC_LIST_NAME].required
    assert "795" in paper["sync.zip"].missing_effect
    assert not {f.filename: f for f in nyuv2.SPEC.files}["sync.zip"].required


def _coco_folder(root: Path, n_images: int, annotations: list[dict] | None = None) -> Path:
    """A COCO val folder of ``n_images`` 40x30 JPEGs (``<k>.jpg``, ids 1..n) and its instances json."""
    from PIL import Image

    (root / "val2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    for k in range(1, n_images + 1):
        Image.new("RGB", (40, 30), (90, 120, 150)).save(root / "val2017" / f"{k}.jpg")
    data = {"images": [{"id": k, "file_name": f"{k}.jpg", "width": 40, "height": 30} for k in range(1, n_images + 1)],
            "annotations": annotations or [], "categories": [{"id": 3, "name": "car"}]}
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    return root


def _build_local(root: Path, target: Path, **kwargs):
    spec = resolve_spec("coco", "paper", mirror_dir=target / "unused")
    return build_raw_dataset("coco", spec, target, extracted_dir=root, reader_options={"splits": ["val"]},
                             show_bar=False, **kwargs)


def test_no_usable_image_writes_the_report_then_stops_naming_the_files(tmp_path):
    from instructcv_core.data.datasets.base import DatasetLayoutError
    from instructcv_core.data.schema import MAX_LISTED

    root = _coco_folder(tmp_path / "coco", MAX_LISTED + 3)
    first = _build_local(root, tmp_path / "raw")  # a good run first: its records must survive the failed one
    records_bytes = first.records_path.read_bytes()
    for image in (root / "val2017").iterdir():
        image.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DatasetLayoutError) as info:
        _build_local(root, tmp_path / "raw")
    quarantine = json.loads((tmp_path / "raw" / "quarantine.json").read_text())
    assert len(quarantine) == MAX_LISTED + 3 and all("undecodable" in q["reason"] for q in quarantine)
    assert set(quarantine[0]) == {"path", "reason"}  # whole images: the report's format of before
    lines = str(info.value).splitlines()
    assert lines[0] == (f"{root.resolve()}: no usable images found for coco: {MAX_LISTED + 3} quarantined "
                        f"(all of them in {tmp_path / 'raw' / 'quarantine.json'}):")
    assert lines[1] == f"  {quarantine[0]['path']}: {quarantine[0]['reason']}"
    assert lines[-1] == "  and 3 more" and len(lines) == MAX_LISTED + 2
    assert first.records_path.read_bytes() == records_bytes


def test_read_warnings_are_counted_in_the_summary_reported_and_logged(tmp_path):
    import numpy as np
    from PIL import Image

    square = [[5.0, 5.0, 15.0, 5.0, 15.0, 15.0, 5.0, 15.0]]
    annotations = [
        {"id": 10, "image_id": 1, "category_id": 3, "bbox": [35.0, 5.0, 10.0, 10.0], "iscrowd": 0, "segmentation": square},
        {"id": 11, "image_id": 1, "category_id": 3, "bbox": [5.0, 5.0, 0, 10.0], "iscrowd": 0, "segmentation": square},
    ]
    root = _coco_folder(tmp_path / "coco", 2, annotations)
    Image.fromarray(np.full((30, 40), 40000, np.uint16)).save(root / "val2017" / "2.jpg", format="PNG")
    logged: list[str] = []
    result = _build_local(root, tmp_path / "raw", warn=logged.append)

    assert result.n_records == 2 and result.n_quarantined == 1 and result.n_quarantined_annotations == 1
    assert result.warning_counts == {"box_clipped": 1, "sixteen_bit_to_rgb": 1}
    summary = json.loads(result.summary_path.read_text())
    assert summary["warning_counts"] == result.warning_counts and summary["n_quarantined_annotations"] == 1
    warnings = json.loads(result.warnings_path.read_text())
    assert [(w["kind"], w["path"], w.get("annotation")) for w in warnings] == [
        ("box_clipped", "annotations/instances_val2017.json", "10"), ("sixteen_bit_to_rgb", "val2017/2.jpg", None)]
    quarantine = json.loads(result.quarantine_path.read_text())
    assert quarantine == [{"path": "annotations/instances_val2017.json", "annotation": "11",
                           "reason": "annotations[id=11].bbox[2]: must be > 0, got 0.0 (image id 1, 1.jpg)"}]
    assert [line.split(" warning")[0] for line in logged] == ["coco: 1 box_clipped", "coco: 1 sixteen_bit_to_rgb"]
    assert "clipped to [35.0, 5.0, 5.0, 10.0]" in logged[0] and str(result.warnings_path) in logged[0]
