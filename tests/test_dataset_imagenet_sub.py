"""ImageNet subset: registration-only ImageNet SPEC, the Imagenette alternative, the mini archive."""

from __future__ import annotations

import shutil
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instructcv_core.data.datasets import imagenet_sub
from instructcv_core.data.datasets.base import DatasetLayoutError
from instructcv_core.data.mini import imagenet_sub as mini
from instructcv_core.data.records import Category

SEED = 3
SIZES = {"train_per_class": 4, "val_per_class": 2}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("nette_archives")
    paths = mini.write_archives(out, SEED, SIZES)
    dest = tmp_path_factory.mktemp("nette_extracted")
    with tarfile.open(paths[0], "r:gz") as tar:
        tar.extractall(dest, filter="data")
    return paths, dest / imagenet_sub.IMAGENETTE_SPEC.root_subdir


@pytest.fixture(scope="module")
def result(built):
    return imagenet_sub.read(built[1])


def test_specs():
    spec = imagenet_sub.SPEC
    assert spec.registration_only and all(f.urls == () for f in spec.files)
    assert [f.checksum for f in spec.files] == [
        "md5:1d675b47d978889d74fa0da5fadfb00e", "md5:29b22e2961454d5413ddabcf34fc5622",
        "md5:fa75699e90414af021442c21a62c3abf",
    ]
    assert "image-net.org" in spec.licence and "registration" in spec.licence
    nette = imagenet_sub.IMAGENETTE_SPEC
    assert not nette.registration_only and nette.root_subdir == "imagenette2-160"
    (f,) = nette.files
    assert f.filename == "imagenette2-160.tgz" == mini.ARCHIVES[0]
    assert f.urls == ("https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz",)
    assert f.checksum == "md5:e793b78cc4c9e9a4ccc0c1155377a412"
    assert imagenet_sub.IMAGENETTE_320_SPEC.files[0].checksum == "md5:3df6f0d01a2c9592104656642f5e78a3"
    assert imagenet_sub.IMAGENETTE_FULL_SPEC.files[0].filename == "imagenette2.tgz"
    assert set(mini.CLASSES) <= set(imagenet_sub.WNID_NAMES)  # the mini uses real Imagenette wnids


def test_archive_is_gzip_tar_with_root_folder(built):
    paths, root = built
    assert paths[0].read_bytes()[:2] == b"\x1f\x8b"
    with tarfile.open(paths[0], "r:gz") as tar:
        assert {n.split("/")[0] for n in tar.getnames()} == {"imagenette2-160"}
    assert (root / imagenet_sub.IMAGENETTE_SPEC.marker).exists()
    header = (root / "noisy_imagenette.csv").read_text().splitlines()[0]
    assert header == "path,noisy_labels_0,noisy_labels_1,noisy_labels_5,noisy_labels_25,noisy_labels_50,is_valid"


def test_category_table_and_labels(result):
    assert result.categories == [
        Category(0, "tench", "n01440764"), Category(1, "church", "n03028079"),
        Category(2, "French horn", "n03394916"), Category(3, "golf ball", "n03445777"),
        Category(4, "parachute", "n03888257"),
    ]
    assert result.quarantine == []
    assert Counter(r.split for r in result.records) == {"train": 20, "val": 10}
    assert Counter((r.split, r.label) for r in result.records) == {
        (s, i): (4 if s == "train" else 2) for s in ("train", "val") for i in range(5)
    }
    for r in result.records:
        wnid = r.image_path.split("/")[1]
        assert r.image_path.startswith(f"{r.split}/{wnid}/") and r.image_path.endswith(".JPEG")
        assert r.label == sorted(mini.CLASSES).index(wnid)
        assert r.label_name == imagenet_sub.WNID_NAMES[wnid] and r.categories == [r.label_name]
        assert min(r.width, r.height) == 160  # imagenette2-160: shortest side 160
    val = [r for r in result.records if r.split == "val"]
    assert all(Path(r.image_path).name.startswith("ILSVRC2012_val_") for r in val)


def test_records_match_plan(result, built):
    root = built[1]
    planned = {item.path: item for item in mini.plan(SEED, SIZES)}
    assert {r.image_path for r in result.records} == set(planned)
    r = result.records[0]
    item = planned[r.image_path]
    assert (r.width, r.height) == (item.width, item.height)
    scene = mini.render_image(SEED, item)
    decoded = np.asarray(Image.open(root / r.image_path).convert("RGB")).astype(int)
    assert np.abs(decoded - scene.image).mean() < 8  # the rendered object, through JPEG
    obj = scene.objects[0].mask
    colour = np.array(mini.CLASSES[item.wnid][0].color)
    assert np.abs(decoded[obj].mean(axis=0) - colour).max() < 40


def test_names_from_mapping_file_and_duplicates(built, tmp_path):
    root = shutil.copytree(built[1], tmp_path / "root")
    for wnid in ("n02012849", "n03126707", "n09999999"):  # crane (bird), crane (machine), unknown
        (root / "train" / wnid).mkdir()
        shutil.copy(next((root / "train/n01440764").iterdir()), root / "train" / wnid / f"{wnid}_1.JPEG")
    (root / "LOC_synset_mapping.txt").write_text(
        "n02012849 crane\nn03126707 crane\nn01440764 tench, Tinca tinca\n"
    )
    res = imagenet_sub.read(root)
    names = {c.supercategory: c.name for c in res.categories}
    assert names["n02012849"] == "crane (n02012849)" and names["n03126707"] == "crane (n03126707)"
    assert names["n09999999"] == "n09999999"  # no name anywhere: the wnid itself
    assert names["n03888257"] == "parachute"
    assert [c.id for c in res.categories] == list(range(8))
    assert [c.supercategory for c in res.categories] == sorted(names)


def test_corrupt_image_is_quarantined(built, tmp_path):
    root = shutil.copytree(built[1], tmp_path / "root")
    victim = sorted((root / "val/n03445777").iterdir())[0]
    victim.write_bytes(b"\xff\xd8\xff garbage")
    res = imagenet_sub.read(root)
    assert len(res.records) == 29
    assert [q.path for q in res.quarantine] == [victim.relative_to(root).as_posix()]


def test_missing_layout_raises(tmp_path):
    with pytest.raises(DatasetLayoutError, match="train/ and val/"):
        imagenet_sub.read(tmp_path)


def test_deterministic(built, tmp_path):
    paths, _ = built
    again = mini.write_archives(tmp_path / "a", SEED, SIZES)
    assert again[0].read_bytes() == paths[0].read_bytes()
    other = mini.write_archives(tmp_path / "b", SEED + 1, SIZES)
    assert other[0].read_bytes() != paths[0].read_bytes()
