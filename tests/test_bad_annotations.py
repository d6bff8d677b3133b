"""Each annotation format's schema: bad input is an error naming file and field, or a quarantine entry.

Built from tiny hand-written dataset folders, one class of bad input per test.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
from PIL import Image

from instructcv_core.data.datasets import ade20k, coco, fss1000, nyuv2, pets, sunrgbd, voc
from instructcv_core.data.images import read_rgb
from instructcv_core.data.labels import decode_depth_png_mm
from instructcv_core.data.records import QuarantineEntry, ReadWarning
from instructcv_core.data.schema import MAX_LISTED, AnnotationError, SchemaErrors
from instructcv_core.data.voc_xml import UnsafeXmlError


def jpg(path: Path, size=(40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 120, 150)).save(path)
    return path


def png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


# --- COCO ------------------------------------------------------------------------------------------

SQUARE = [[5.0, 5.0, 15.0, 5.0, 15.0, 15.0, 5.0, 15.0]]
COCO_VALID = {
    "images": [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30},
               {"id": 2, "file_name": "b.jpg", "width": 40, "height": 30}],
    "annotations": [{"id": 10, "image_id": 1, "category_id": 3, "bbox": [5.0, 5.0, 10.0, 10.0],
                     "iscrowd": 0, "segmentation": SQUARE, "area": 100.0}],
    "categories": [{"id": 3, "name": "car", "supercategory": "vehicle"}],
}


def coco_root(tmp_path: Path, data: dict) -> Path:
    for name in ("a.jpg", "b.jpg"):
        jpg(tmp_path / "val2017" / name)
    (tmp_path / "annotations").mkdir(exist_ok=True)
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    return tmp_path


def coco_variant(change) -> dict:
    data = copy.deepcopy(COCO_VALID)
    change(data)
    return data


def test_coco_valid_file_reads(tmp_path):
    result = coco.read(coco_root(tmp_path, COCO_VALID), splits=("val",))
    assert [(r.image_id, r.categories) for r in result.records] == [("1", ["car"]), ("2", [])]
    assert result.quarantine == []


@pytest.mark.parametrize(
    "change, field, problem",
    [
        (lambda d: d["images"][0].update(id="1"), "images[0].id", "must be an integer, got a string '1'"),
        (lambda d: d["images"][1].update(id=1), "images[1].id", "duplicate image id 1"),
        (lambda d: d.update(categories=[]), "categories", "must not be empty"),
        (lambda d: d["categories"].append({"id": 3, "name": "bus"}), "categories[1].id", "duplicate category id 3"),
        (lambda d: d["images"][0].update(width=0), "images[id=1].width", "must be in 1..inf, got 0"),
        (lambda d: d["images"][0].update(file_name="../x.jpg"), "images[id=1].file_name", "must be a plain file name, got '../x.jpg'"),
        (lambda d: d["annotations"][0].update(category_id=99), "annotations[id=10].category_id", "unknown category id 99"),
    ],
)
def test_coco_structural_errors_name_file_and_field(tmp_path, change, field, problem):
    with pytest.raises(AnnotationError) as info:
        coco.read(coco_root(tmp_path, coco_variant(change)), splits=("val",))
    assert str(info.value) == f"annotations/instances_val2017.json: {field}: {problem}"


def test_coco_schema_errors_list_every_bad_field_of_the_file(tmp_path):
    def change(d):
        d["images"][0].update(width=0, height="30")
        d["images"][1].update(file_name="")
        d["annotations"].append({**d["annotations"][0], "id": 11, "category_id": 99})
    with pytest.raises(SchemaErrors) as info:
        coco.read(coco_root(tmp_path, coco_variant(change)), splits=("val",))
    assert str(info.value) == (
        "annotations/instances_val2017.json: 4 schema errors:\n"
        "  images[id=1].width: must be in 1..inf, got 0\n"
        "  images[id=1].height: must be an integer, got a string '30'\n"
        "  images[id=2].file_name: must not be empty\n"
        "  annotations[id=11].category_id: unknown category id 99"
    )


def test_coco_schema_errors_beyond_the_listed_ones_are_counted(tmp_path):
    def change(d):
        d["annotations"] = [{**d["annotations"][0], "id": 100 + k, "category_id": 50 + k} for k in range(MAX_LISTED + 5)]
    with pytest.raises(SchemaErrors) as info:
        coco.read(coco_root(tmp_path, coco_variant(change)), splits=("val",))
    lines = str(info.value).splitlines()
    assert lines[0] == f"annotations/instances_val2017.json: {MAX_LISTED + 5} schema errors:"
    assert lines[1] == "  annotations[id=100].category_id: unknown category id 50"
    assert lines[-1] == "  and 5 more" and len(lines) == MAX_LISTED + 2
    assert len(info.value.errors) == MAX_LISTED + 5


GOOD_SECOND = {"id": 11, "image_id": 1, "category_id": 3, "bbox": [20.0, 10.0, 10.0, 10.0], "iscrowd": 0,
               "segmentation": [[20.0, 10.0, 30.0, 10.0, 30.0, 20.0, 20.0, 20.0]], "area": 100.0}


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"bbox": [5.0, 5.0, -3.0, 10.0]}, "annotations[id=10].bbox[2]: must be > 0, got -3.0"),
        ({"bbox": [5.0, 5.0, 0, 10.0]}, "annotations[id=10].bbox[2]: must be > 0, got 0.0"),
        ({"bbox": [45.0, 5.0, 10.0, 10.0]}, "annotations[id=10].bbox: box [45.0, 5.0, 10.0, 10.0] lies outside the 40x30 image"),
        ({"segmentation": [[1.0, 2.0, 3.0]]},
         "annotations[id=10].segmentation[0]: a polygon needs an even number (>= 6) of coordinates, got 3"),
        ({"iscrowd": 2}, "annotations[id=10].iscrowd: must be in 0..1, got 2"),
        ({"bbox": [5.0, 5.0, 10.0, -1.0], "iscrowd": 2},
         "annotations[id=10].bbox[3]: must be > 0, got -1.0; annotations[id=10].iscrowd: must be in 0..1, got 2"),
    ],
)
def test_coco_bad_annotation_is_quarantined_by_id_and_its_image_kept(tmp_path, change, problem):
    data = coco_variant(lambda d: (d["annotations"][0].update(change), d["annotations"].append(dict(GOOD_SECOND))))
    result = coco.read(coco_root(tmp_path, data), splits=("val",))
    assert [r.image_id for r in result.records] == ["1", "2"]
    kept = result.records[0]
    assert [(b.x, b.y, b.w, b.h) for b in kept.boxes] == [(20.0, 10.0, 10.0, 10.0)]  # annotation 11 only
    assert kept.categories == ["car"]
    assert result.quarantine == [
        QuarantineEntry("annotations/instances_val2017.json", f"{problem} (image id 1, a.jpg)", annotation="10")
    ]


def test_coco_masks_leave_out_a_quarantined_annotation(tmp_path):
    data = coco_variant(lambda d: (d["annotations"][0].update(bbox=[5.0, 5.0, 0, 10.0]),
                                   d["annotations"].append(dict(GOOD_SECOND))))
    root = coco_root(tmp_path, data)
    record = coco.read(root, splits=("val",)).records[0]
    masks, void = coco.class_masks(record, root)
    assert set(masks) == {"car"} and not void.any()
    rows, cols = np.nonzero(masks["car"])
    assert (rows.min(), cols.min()) == (10, 20)  # annotation 11's square; 10's square (5..15) is absent


def test_coco_box_partly_outside_is_clipped_and_reported(tmp_path):
    data = coco_variant(lambda d: d["annotations"][0].update(bbox=[35.0, -4.0, 10.0, 10.0]))
    result = coco.read(coco_root(tmp_path, data), splits=("val",))
    assert result.quarantine == []
    box = result.records[0].boxes[0]
    assert (box.x, box.y, box.w, box.h) == (35.0, 0.0, 5.0, 6.0)
    assert result.warnings == [ReadWarning(
        "box_clipped", "annotations/instances_val2017.json",
        "annotations[id=10].bbox: box [35.0, -4.0, 10.0, 10.0] reaches outside the 40x30 image (image id 1, a.jpg); "
        "clipped to [35.0, 0.0, 5.0, 6.0]", annotation="10")]


def test_coco_box_within_the_tolerance_is_kept_as_stored(tmp_path):
    data = coco_variant(lambda d: d["annotations"][0].update(bbox=[-0.5, 5.0, 40.5, 10.0]))
    result = coco.read(coco_root(tmp_path, data), splits=("val",))
    box = result.records[0].boxes[0]
    assert (box.x, box.w) == (-0.5, 40.5) and result.warnings == [] and result.quarantine == []


def test_coco_annotation_of_a_missing_image_is_reported(tmp_path):
    data = coco_variant(lambda d: d["annotations"].append({**d["annotations"][0], "id": 11, "image_id": 7}))
    result = coco.read(coco_root(tmp_path, data), splits=("val",))
    assert len(result.records) == 2
    assert result.quarantine == [QuarantineEntry(
        "annotations/instances_val2017.json", "annotations[id=11]: image_id 7 names no image in images[]", annotation="11"
    )]


def test_sixteen_bit_photograph_is_read_and_reported(tmp_path):
    data = coco_variant(lambda d: d["images"][1].update(file_name="b.png"))
    root = coco_root(tmp_path, data)
    Image.fromarray(np.full((30, 40), 65535, np.uint16)).save(root / "val2017" / "b.png")
    result = coco.read(root, splits=("val",))
    assert [r.image_path for r in result.records] == ["val2017/a.jpg", "val2017/b.png"]
    [warning] = result.warnings
    assert (warning.kind, warning.path) == ("sixteen_bit_to_rgb", "val2017/b.png")
    assert warning.detail.startswith("16-bit grey photograph (mode I")
    assert read_rgb(root / "val2017" / "b.png").max() == 255  # scaled, as the warning says


# --- VOC XML (VOC 2012 and Pets head boxes) ---------------------------------------------------------

def voc_xml(objects: str, size: str = "<size><width>40</width><height>30</height></size>") -> str:
    return f"<annotation>{size}{objects}</annotation>"


def voc_object(xmin=5, ymin=5, xmax=20, ymax=25, name="cat") -> str:
    return (f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
            f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")


def voc_root(tmp_path: Path, xml: str) -> Path:
    root = tmp_path / "VOC2012"
    jpg(root / "JPEGImages" / "2007_000001.jpg")
    for folder in ("Main", "Segmentation"):
        (root / "ImageSets" / folder).mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Main" / "val.txt").write_text("2007_000001\n")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("")
    (root / "Annotations").mkdir(exist_ok=True)
    (root / "Annotations" / "2007_000001.xml").write_text(xml)
    return root


def test_voc_valid_box(tmp_path):
    result = voc.read(voc_root(tmp_path, voc_xml(voc_object())), splits=("val",))
    box = result.records[0].boxes[0]
    assert (box.x, box.y, box.w, box.h) == (4.0, 4.0, 16.0, 21.0)


@pytest.mark.parametrize(
    "bad_object, problem",
    [
        (voc_object(xmin=30, xmax=10, name="dog"), "object[1].bndbox: inverted box: xmin 30.0 > xmax 10.0"),
        ("<object><name>dog</name></object>", "object[1].bndbox: missing"),
        (voc_object(xmax=45, name="dog"), "object[1].bndbox: xmin..xmax = 5.0..45.0 outside 1..40"),
        (voc_object(xmin=30, xmax=10, ymin="a", name="dog"),
         "object[1].bndbox.ymin: must be a number, got 'a'; object[1].bndbox: inverted box: xmin 30.0 > xmax 10.0"),
    ],
)
def test_voc_bad_object_is_quarantined_and_the_image_keeps_the_others(tmp_path, bad_object, problem):
    result = voc.read(voc_root(tmp_path, voc_xml(voc_object() + bad_object)), splits=("val",))
    [record] = result.records
    assert [(b.category, b.x, b.y, b.w, b.h) for b in record.boxes] == [("cat", 4.0, 4.0, 16.0, 21.0)]
    assert record.categories == ["cat"]
    assert result.quarantine == [QuarantineEntry("Annotations/2007_000001.xml", problem, annotation="object1:dog")]


def test_voc_object_of_an_unknown_class_is_quarantined_alone(tmp_path):
    result = voc.read(voc_root(tmp_path, voc_xml(voc_object(name="unicorn") + voc_object())), splits=("val",))
    assert [b.category for b in result.records[0].boxes] == ["cat"]
    assert result.quarantine == [QuarantineEntry(
        "Annotations/2007_000001.xml", "object[0].name: unknown class 'unicorn'", annotation="object0:unicorn")]


def test_voc_bad_size_quarantines_the_image_naming_every_bad_field(tmp_path):
    xml = voc_xml(voc_object(), "<size><width>0</width><height>x</height></size>")
    result = voc.read(voc_root(tmp_path, xml), splits=("val",))
    assert result.records == []
    [entry] = result.quarantine
    assert entry.path == "Annotations/2007_000001.xml" and entry.annotation is None
    assert entry.reason == (
        "unusable annotation (SchemaErrors: Annotations/2007_000001.xml: 2 schema errors:\n"
        "  size.width: must be in 1..inf, got 0\n  size.height: must be a number, got 'x')"
    )


def test_voc_entity_declaration_is_rejected_not_quarantined(tmp_path):
    xml = '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxx">]>' + voc_xml(voc_object(name="&x;"))
    with pytest.raises(UnsafeXmlError, match="declares a DTD or entities; refused without parsing"):
        voc.read(voc_root(tmp_path, xml), splits=("val",))


# --- Oxford-IIIT Pet ----------------------------------------------------------------------------------

def pets_root(tmp_path: Path, trimap: np.ndarray | None = None, split_line: str = "Abyssinian_1 1 1 1") -> Path:
    ann = tmp_path / "annotations"
    ann.mkdir(parents=True)
    (ann / "list.txt").write_text("#\n#\n#\n#\n#\n#\nAbyssinian_1 1 1 1\n")
    (ann / "trainval.txt").write_text(split_line + "\n")
    (ann / "test.txt").write_text("")
    jpg(tmp_path / "images" / "Abyssinian_1.jpg")
    if trimap is not None:
        png(ann / "trimaps" / "Abyssinian_1.png", trimap)
    return tmp_path


def test_pets_malformed_list_line_names_it(tmp_path):
    root = pets_root(tmp_path, np.full((30, 40), 2, np.uint8), "Abyssinian_1 1 1 1 extra")
    with pytest.raises(ValueError, match=r"trainval.txt:1: expected `Image CLASS-ID SPECIES BREED-ID`"):
        pets.read(root)


def test_pets_list_errors_name_every_bad_line(tmp_path):
    root = pets_root(tmp_path, np.full((30, 40), 2, np.uint8), "Abyssinian_1 1 1\nAbyssinian_2 1 3 1\nAbyssinian_3 0 1 1")
    path = root / "annotations" / "trainval.txt"
    with pytest.raises(ValueError) as info:
        pets.read(root)
    assert str(info.value) == (
        f"{path}: 3 problems:\n"
        f"  {path}:1: expected `Image CLASS-ID SPECIES BREED-ID`, got 'Abyssinian_1 1 1'\n"
        f"  {path}:2: SPECIES must be 1 (cat) or 2 (dog), got 3\n"
        f"  {path}:3: CLASS-ID and BREED-ID are 1-based, got 0 and 1"
    )


def test_pets_split_line_contradicting_list_txt_is_an_error(tmp_path):
    root = pets_root(tmp_path, np.full((30, 40), 2, np.uint8), "Abyssinian_1 1 2 1")
    with pytest.raises(ValueError, match="has CLASS-ID 1 and SPECIES 2, but list.txt gives CLASS-ID 1 to breed 'Abyssinian' of SPECIES 1"):
        pets.read(root)


def test_pets_missing_trimap_is_quarantined(tmp_path):
    result = pets.read(pets_root(tmp_path, None))
    assert result.records == []
    assert [(q.path, q.reason) for q in result.quarantine] == [
        ("annotations/trimaps/Abyssinian_1.png", "unusable trimap of images/Abyssinian_1.jpg: file not found")
    ]


def test_pets_inverted_head_box_is_quarantined_and_the_record_kept(tmp_path):
    root = pets_root(tmp_path, np.full((30, 40), 2, np.uint8))
    (root / "annotations" / "xmls").mkdir()
    (root / "annotations" / "xmls" / "Abyssinian_1.xml").write_text(voc_xml(voc_object(xmin=30, xmax=10, name="cat")))
    result = pets.read(root)
    assert [(r.image_id, r.boxes) for r in result.records] == [("Abyssinian_1", [])]
    assert result.quarantine == [QuarantineEntry(
        "annotations/xmls/Abyssinian_1.xml", "unusable head box: object[0].bndbox: inverted box: xmin 30.0 > xmax 10.0",
        annotation="object0:cat")]


def test_pets_trimap_value_outside_1_2_3_is_quarantined(tmp_path):
    trimap = np.full((30, 40), 2, np.uint8)
    trimap[0, 0], trimap[0, 1] = 0, 7
    result = pets.read(pets_root(tmp_path, trimap))
    assert result.records == []
    assert result.quarantine[0].reason.endswith("trimap values [0, 7] are none of 1 (pet), 2 (background), 3 (boundary)")


# --- ADE20K -------------------------------------------------------------------------------------------

def ade_root(tmp_path: Path, label: np.ndarray) -> Path:
    root = tmp_path / "ADEChallengeData2016"
    lines = ["Idx\tRatio\tTrain\tVal\tName"] + [f"{i}\t0.1\t1\t1\tclass{i}, other" for i in range(1, 151)]
    root.mkdir()
    (root / "objectInfo150.txt").write_text("\n".join(lines) + "\n")
    jpg(root / "images" / "validation" / "ADE_val_00000001.jpg")
    png(root / "annotations" / "validation" / "ADE_val_00000001.png", label)
    png(root / "annotations" / "validation" / "ADE_val_00000002.png", np.zeros((30, 40), np.uint8))
    return root


def test_ade_labels_above_150_are_all_named_and_orphan_annotations_reported(tmp_path):
    label = np.zeros((30, 40), np.uint8)
    label[0, :3] = [151, 200, 151]
    result = ade20k.read(ade_root(tmp_path, label), splits=("val",))
    assert result.records == []
    assert [(q.path, q.reason) for q in result.quarantine] == [
        ("annotations/validation/ADE_val_00000002.png", "annotation without an image (no images/validation/ADE_val_00000002.jpg)"),
        ("annotations/validation/ADE_val_00000001.png",
         f"unusable annotation (AnnotationError: {tmp_path}/ADEChallengeData2016/annotations/validation/ADE_val_00000001.png: "
         "label values [151, 200] outside 0..150 (3 pixels))"),
    ]


# --- FSS-1000 -----------------------------------------------------------------------------------------

def test_fss_stray_folders_are_not_categories(tmp_path):
    for name in ("abacus", "zebra"):
        jpg(tmp_path / name / "1.jpg")
        png(tmp_path / name / "1.png", np.full((30, 40), 255, np.uint8))
    jpg(tmp_path / "__MACOSX" / "abacus" / "._1.jpg")
    (tmp_path / "empty_class").mkdir()
    result = fss1000.read(tmp_path)
    assert [(c.id, c.name) for c in result.categories] == [(1, "abacus"), (2, "zebra")]
    assert [(q.path, q.reason) for q in result.quarantine] == [
        ("__MACOSX/", "not a class folder (archiver metadata or hidden)"),
        ("empty_class/", "class folder without .jpg images"),
    ]


# --- SUN RGB-D ----------------------------------------------------------------------------------------

def sun_root(tmp_path: Path, depth_png: np.ndarray) -> Path:
    scene = tmp_path / "SUNRGBD" / "kv2" / "kinect2data" / "000001"
    jpg(scene / "image" / "0000001.jpg")
    png(scene / "depth" / "0000001.png", depth_png)
    return tmp_path / "SUNRGBD"


def rotated_mm(mm: np.ndarray) -> np.ndarray:
    return ((mm << 3) | (mm >> 13)).astype(np.uint16)


def test_sun_depth_stored_without_rotation_is_quarantined(tmp_path):
    mm = np.full((30, 40), 2500, np.uint16)
    assert len(sunrgbd.read(sun_root(tmp_path / "ok", rotated_mm(mm))).records) == 1
    result = sunrgbd.read(sun_root(tmp_path / "bad", mm))  # 2500 read as rotated decodes to ~20 m, capped
    assert result.records == []
    assert result.quarantine[0].path == "kv2/kinect2data/000001/depth/0000001.png"
    assert result.quarantine[0].reason.startswith("100% of the measured pixels are at the 8 m cap")


def test_sun_depth_of_another_size_is_quarantined(tmp_path):
    result = sunrgbd.read(sun_root(tmp_path, rotated_mm(np.full((10, 10), 2500, np.uint16))))
    assert result.quarantine[0].reason == "depth is 10x10 but the image is 40x30"


# --- NYU Depth v2 and BTS sync --------------------------------------------------------------------------

def test_nyu_split_errors_list_every_index_of_both_splits(tmp_path):
    path = tmp_path / "splits.mat"
    scipy.io.savemat(path, {"trainNdxs": np.array([[0], [-2], [1], [2], [3], [9]]),
                            "testNdxs": np.array([[3], [2], [4], [4], [8], [7]])})
    with pytest.raises(SchemaErrors) as info:
        nyuv2.load_splits(path, n_images=6)
    assert str(info.value) == (
        f"{path}: 5 schema errors:\n"
        "  trainNdxs: indices are 1-based; 2 below 1: -2, 0\n"
        "  trainNdxs: 1 indices beyond the 6 images of nyu_depth_v2_labeled.mat: 9\n"
        "  testNdxs: 2 indices beyond the 6 images of nyu_depth_v2_labeled.mat: 7-8\n"
        "  testNdxs: 1 indices appear more than once: 4\n"
        "  trainNdxs/testNdxs: the splits overlap: 2 indices in both: 2-3"
    )


def test_nyu_index_runs_list_every_index_compactly():
    assert nyuv2.index_runs([1, 2, 3, 7, 9, 10]) == "1-3, 7, 9-10"
    assert nyuv2.index_runs(list(range(796, 1450))) == "796-1449"
    assert nyuv2.index_runs([1, 3, 5, 7, 8], shown=2) == "1, 3 and 3 more"


def nyu_mat(path: Path, n_images: int, n_depths: int, depth_value: float = 2.0) -> Path:
    with h5py.File(path, "w") as f:
        f["images"] = np.zeros((n_images, 3, 8, 6), np.uint8)
        f["depths"] = np.full((n_depths, 8, 6), depth_value, np.float32)
        f["rawDepths"] = np.full((n_depths, 8, 6), depth_value, np.float32)
    return path


def nyu_root(root: Path, raw_depths: np.ndarray, train=(1,), test=(2,)) -> Path:
    """A labeled mat of ``len(raw_depths)`` 6x8 samples (depths 2 m) with the given rawDepths (N, W=8, H=6)."""
    nyu_mat(root / nyuv2.MAT_NAME, len(raw_depths), len(raw_depths))
    with h5py.File(root / nyuv2.MAT_NAME, "a") as f:
        f["rawDepths"][...] = raw_depths
        refs = [f.create_dataset(f"#refs#/s{i}", data=np.array([[ord("k")]], np.uint16)).ref for i in range(len(raw_depths))]
        f.create_dataset("sceneTypes", data=np.array([refs]), dtype=h5py.ref_dtype)
    scipy.io.savemat(root / nyuv2.SPLITS_NAME, {"trainNdxs": np.array([[i] for i in train]),
                                                "testNdxs": np.array([[i] for i in test])})
    return root


def test_nyu_image_and_depth_counts_must_agree(tmp_path):
    with h5py.File(nyu_mat(tmp_path / "m.mat", 3, 2), "r") as f, pytest.raises(AnnotationError, match=r"3 images .* but 2 depth maps"):
        nyuv2._check_shapes(f, tmp_path / "m.mat")


def test_nyu_invalid_depth_is_masked_below_the_threshold_and_refused_above():
    depth = np.array([[1.0, np.nan], [np.inf, 2.0], [-1.0, 25.0], [0.0, 3.0]])
    assert nyuv2.invalid_depth(depth).tolist() == [[False, True], [True, False], [True, True], [False, False]]
    assert nyuv2.depth_problem(depth) is None  # 4 of 8 = exactly the threshold: masked, kept
    depth[3, 1] = np.inf
    assert nyuv2.MAX_INVALID_DEPTH_FRACTION == 0.5
    assert nyuv2.depth_problem(depth) == (
        "62.5% of the pixels (5 of 8) are NaN, infinite, negative or above 20 m, "
        "more than the 50% a depth map may have masked (e.g. nan)")


def test_nyu_sample_with_some_invalid_depth_is_kept_masked_and_reported(tmp_path):
    raw = np.full((3, 8, 6), 2.0, np.float32)
    raw[0, 0, :3] = [np.inf, np.nan, -0.5]  # sample 1: 3 of 48 pixels invalid
    raw[1, :6, :] = np.inf  # sample 2: 36 of 48 invalid
    root = nyu_root(tmp_path, raw, train=(1, 3), test=(2,))
    result = nyuv2.read(root)
    assert sorted((r.split, r.image_id) for r in result.records) == [("train", "00001"), ("train", "00003")]
    exported = decode_depth_png_mm(root / "export/train/depth_raw_00001.png")  # (H=6, W=8): mat (W, H) transposed
    assert exported[:3, 0].tolist() == [0.0, 0.0, 0.0] and exported[3:, 0].tolist() == [2.0, 2.0, 2.0]
    assert result.warnings == [ReadWarning(
        "depth_masked", nyuv2.MAT_NAME,
        "rawDepths[0] (sample 1): 3 of 48 pixels (6.2%) are NaN, infinite, negative or above 20 m; "
        "written as 0 (no measurement) in export/train/depth_raw_00001.png")]
    [entry] = result.quarantine
    assert entry.path == nyuv2.MAT_NAME
    assert entry.reason.startswith("nyu_depth_v2_labeled.mat: rawDepths[1] (sample 2): 75.0% of the pixels (36 of 48) are "
                                   "NaN, infinite, negative or above 20 m, more than the 50%")
    assert not (root / "export/test/rgb_00002.png").exists()  # refused before any file of it was written
    again = nyuv2.read(root)  # a resumed export reports the same
    assert again.warnings == result.warnings and again.quarantine == result.quarantine


def test_nyu_split_index_beyond_the_mat_is_named(tmp_path):
    root = nyu_root(tmp_path, np.full((2, 8, 6), 2.0, np.float32), train=(1, 4), test=(2, 5, 6))
    with pytest.raises(SchemaErrors, match=r"(?s)trainNdxs: 1 indices beyond the 2 images of nyu_depth_v2_labeled.mat: 4\n"
                                          r"  testNdxs: 2 indices beyond the 2 images of nyu_depth_v2_labeled.mat: 5-6"):
        nyuv2.read(root)
    assert not (root / "export" / "train").exists()  # nothing exported before the split was checked


def test_bts_depth_of_another_size_is_quarantined_naming_it(tmp_path):
    jpg(tmp_path / "sync" / "kitchen_0001" / "rgb_00001.jpg", (40, 30))
    png(tmp_path / "sync" / "kitchen_0001" / "sync_depth_00001.png", np.zeros((20, 20), np.uint16))
    (tmp_path / nyuv2.SYNC_LIST_NAME).write_text("/kitchen_0001/rgb_00001.jpg /kitchen_0001/sync_depth_00001.png 518.8\n")
    quarantine, warnings = [], []
    assert nyuv2._sync_records(tmp_path, quarantine, warnings) == []
    assert [(q.path, q.reason) for q in quarantine] == [
        ("sync/kitchen_0001/sync_depth_00001.png", "depth is 20x20 but sync/kitchen_0001/rgb_00001.jpg is 40x30")
    ]
    assert warnings == []


def test_ade_class_list_names_every_bad_line_and_every_repeated_name(tmp_path):
    lines = ["Idx\tRatio\tTrain\tVal\tName"] + [f"{i}\t0.1\t1\t1\tclass{i}, other" for i in range(1, 151)]
    lines[3] = "3 0.1 1 1 class3"  # spaces, not tabs
    lines[40] = "x\t0.1\t1\t1\tclass40"
    path = tmp_path / "objectInfo150.txt"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ade20k.DatasetLayoutError) as error:
        ade20k.read_object_info(path)
    message = str(error.value)
    assert message.startswith(f"{path}: 2 problems:")
    assert "line 4: expected 'Idx" in message and "line 41: expected 'Idx" in message

    lines = ["Idx\tRatio\tTrain\tVal\tName"] + [f"{i}\t0.1\t1\t1\tclass{i % 148}" for i in range(1, 151)]  # 149, 150 repeat 1, 2
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ade20k.DatasetLayoutError, match=r"first synonyms are not unique: class1, class2$"):
        ade20k.read_object_info(path)
