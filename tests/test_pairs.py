"""Pairs and manifests from real-format mini data: targets, counts, determinism, leakage, quarantine."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from instructcv_core.benchmarks import manifest_benchmarks
from instructcv_core.data.datasets import DATASETS
from instructcv_core.data.imagestore import ImageStore
from instructcv_core.data.labels import load_class_masks, load_depth_m
from instructcv_core.construction.manifest import MANIFEST_SCHEMA, PAIR_SCHEMA, attach_fp, attach_rp, leaked_sources, write_table
from instructcv_core.construction.config import BuildConfig
from instructcv_core.construction.pairs import (
    SourceImageError,
    WorkUnit,
    build_unit,
    build_units,
    expected_pairs,
    plan_units,
    resize,
)
from instructcv_core.data.raw_stage import build_raw_dataset, resolve_spec
from instructcv_core.data.records import read_records
from instructcv_core.tasks.colours import PALETTE, rgb
from instructcv_core.tasks.depth import decode_depth
from instructcv_core.tasks.detection import encode_detection
from instructcv_core.tasks.segmentation import decode_segmentation

SMALL = {
    "coco": {"train": 5, "val": 3},
    "ade20k": {"training": 4, "validation": 3},
    "pets": {"trainval": 4, "test": 3},
    "nyuv2": {"train": 3, "test": 2, "sync": 2},
    "voc": {"train": 2, "val": 3},
    "sunrgbd": {"test": 2, "nyu": 1},
    "fss1000": {"classes": 2, "per_class": 2},
    "imagenet_sub": {"train_per_class": 1, "val_per_class": 1},
}
CONFIG = BuildConfig(resolution=64, seed=3)


def _bundled_bank() -> pd.DataFrame:
    from instructcv_core.instructions.templates import load_bundled_bank

    return pd.DataFrame([{"task": e.task, "template_id": e.template_id, "paraphrase": e.text, "source": e.source,
                          "accepted": True} for e in load_bundled_bank()])


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    out = {}
    for name in DATASETS:
        spec = resolve_spec(name, "mini", mirror_dir=root / "mirror", mini_sizes=SMALL[name], info=lambda _: None)
        result = build_raw_dataset(name, spec, root / name, show_bar=False, info=lambda _: None)
        records, data_root, categories = read_records(result.records_path)
        out[name] = (records, data_root, [c.name for c in categories])
    return out


@pytest.fixture(scope="module")
def built(sources, tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    units = plan_units(sources)
    return units, build_units(units, CONFIG, store, workers=1), ImageStore(store)


def test_plan_covers_every_training_source_and_benchmark(sources):
    units = plan_units(sources)
    train = pd.Series([(u.task, u.record.dataset, u.record.split) for u in units if u.role == "train"]).value_counts().to_dict()
    coco_train_with_boxes = sum(1 for r in sources["coco"][0] if r.split == "train" and r.boxes)
    assert train == {
        ("segmentation", "ade20k", "train"): 4,
        ("detection", "coco", "train"): coco_train_with_boxes,
        ("depth", "nyuv2", "train"): 3,
        ("depth", "nyuv2", "train_sync"): 2,
        ("classification", "pets", "trainval"): 4,
    }
    assert 0 < coco_train_with_boxes <= 5
    assert {u.benchmark for u in units if u.role == "test"} == {b.name for b in manifest_benchmarks()}


def test_open_vocabulary_test_set_leaves_out_every_training_category(tmp_path):
    # FSS-1000 (Table 2) claims open vocabulary: a test class a training dataset names is left out,
    # whatever its spelling ("Dining_table" = ADE20K's... here COCO's "dining table")
    from instructcv_core.construction.pairs import class_key, training_class_names
    from instructcv_core.data.records import Box, ImageRecord

    ade = [ImageRecord("ade20k", "a1", "train", "a1.jpg", 8, 8, categories=["wall"])]
    coco = [ImageRecord("coco", "c1", "train", "c1.jpg", 8, 8, boxes=[Box("dining table", 67, 0, 0, 4, 4)],
                        categories=["dining table"])]
    pets = [ImageRecord("pets", "Bengal_1", "trainval", "Bengal_1.jpg", 8, 8, label_name="Bengal", species="cat")]
    nyu = [ImageRecord("nyuv2", "n1", "train", "n1.jpg", 8, 8, label_name="abacus")]  # a scene type: never asked
    fss = [ImageRecord("fss1000", f"{name}/1", "test", f"{name}/1.jpg", 8, 8, categories=[name], mask_path=f"{name}/1.png",
                       mask_format="binary_l")
           for name in ("Dining_table", "wall", "cat", "bengal", "abacus", "starfish")]
    sources = {"ade20k": (ade, tmp_path, ["wall", "sky"]), "coco": (coco, tmp_path, ["dining table"]),
               "pets": (pets, tmp_path, ["Bengal"]), "nyuv2": (nyu, tmp_path, []),
               "fss1000": (fss, tmp_path, [r.categories[0] for r in fss])}
    assert class_key("Dining_table") == class_key("dining-table") == "dining table"
    assert {"wall", "sky", "dining table", "bengal", "cat", "dog"} - training_class_names(sources) == {"dog"}
    tested = [u.record.image_id for u in plan_units(sources) if u.benchmark == "fss1000"]
    assert tested == ["abacus/1", "starfish/1"]


def test_every_unit_makes_exactly_the_expected_number_of_pairs(built):
    units, result, _ = built
    assert result.quarantine == []
    assert len(result.rows) == sum(expected_pairs(u, CONFIG) for u in units)
    assert len({r["pair_id"] for r in result.rows}) == len(result.rows)
    # each training manifest's own count: FP and RP take different binary Pets questions
    from instructcv_core.construction.manifest import fp_pairs, rp_pairs

    pairs = pd.DataFrame(result.rows)
    train = [u for u in units if u.role == "train"]
    assert any(u.record.species is not None for u in train)
    for name, select in (("fp", fp_pairs), ("rp", rp_pairs)):
        assert len(select(pairs[pairs["role"] == "train"])) == sum(expected_pairs(u, CONFIG, name) for u in train), name


def test_segmentation_target_is_the_category_mask(built, sources):
    _, result, store = built
    row = next(r for r in result.rows if r["benchmark"] == "ade20k")
    records, root, _ = sources["ade20k"]
    record = next(r for r in records if r.image_id == row["image_id"] and r.split == "val")
    masks, _ = load_class_masks(record, root)
    target = store.get(row["target_original_digest"])
    assert np.array_equal(decode_segmentation(target), masks[row["category"]])
    assert store.get(row["target_digest"]).shape == (64, 64, 3)
    assert np.array_equal(store.get(row["target_digest"]), resize(target, 64))


def test_detection_target_draws_every_box_of_the_category(built, sources):
    _, result, store = built
    row = next(r for r in result.rows if r["benchmark"] == "coco")
    records, root, _ = sources["coco"]
    record = next(r for r in records if r.image_id == row["image_id"] and r.split == "val")
    image = np.asarray(Image.open(root / record.image_path).convert("RGB"))
    boxes = [(b.x, b.y, b.w, b.h) for b in record.boxes if b.category == row["category"] and not b.iscrowd]
    assert [(b["x"], b["y"], b["w"], b["h"]) for b in row["boxes"]] == boxes
    assert np.array_equal(store.get(row["target_original_digest"]), encode_detection(image, boxes))


def test_depth_target_is_metric_depth_at_255_per_10m(built, sources):
    _, result, store = built
    row = next(r for r in result.rows if r["benchmark"] == "nyuv2")
    records, root, _ = sources["nyuv2"]
    record = next(r for r in records if r.image_id == row["image_id"] and r.split == "test")
    metres = np.clip(load_depth_m(record, root, dense=True), 0, 10)
    decoded = decode_depth(store.get(row["target_original_digest"]))
    assert np.abs(decoded - metres).max() <= 10 / 255 / 2 + 1e-6


def test_pets_classification_has_binary_and_breed_questions(built, sources):
    _, result, store = built
    records, _, _ = sources["pets"]
    record = next(r for r in records if r.split == "trainval")
    rows = [r for r in result.rows if r["dataset"] == "pets" and r["image_id"] == record.image_id and r["role"] == "train"]
    binary = {r["category"]: r["positive"] for r in rows if r["variant"] == "binary"}
    assert binary == {"cat": record.species == "cat", "dog": record.species == "dog"}
    breeds = [r for r in rows if r["variant"] == "breeds"]
    assert [r["positive"] for r in breeds] == [True, False]
    assert breeds[0]["category"] == record.label_name
    for r in rows:
        assert r["color"] != r["color2"]
        shown = rgb(r["color"] if r["positive"] else r["color2"])
        assert tuple(store.get(r["target_digest"])[0, 0]) == shown


def test_fp_binary_pets_questions_use_the_official_fixed_colours(built, sources):
    # format_dataset_fp.py, proc_oxford_pets_binary: a cat image gets (cat, purple|orange -> purple),
    # (cat, purple|black -> purple), (dog, purple|blue -> blue), (dog, purple|red -> red),
    # (dog, purple|green -> green); a dog image (dog, orange|black -> orange), (dog, green|black -> green),
    # (cat, orange|red -> red), (cat, orange|blue -> blue)
    official = {"cat": [("cat", "purple", "orange", (128, 0, 128)), ("cat", "purple", "black", (128, 0, 128)),
                        ("dog", "purple", "blue", (0, 0, 255)), ("dog", "purple", "red", (255, 0, 0)),
                        ("dog", "purple", "green", (0, 255, 0))],
                "dog": [("dog", "orange", "black", (255, 128, 0)), ("dog", "green", "black", (0, 255, 0)),
                        ("cat", "orange", "red", (255, 0, 0)), ("cat", "orange", "blue", (0, 0, 255))]}
    _, result, store = built
    records, _, _ = sources["pets"]
    frame = pd.DataFrame(result.rows)
    for record in (r for r in records if r.split == "trainval"):
        rows = frame[(frame["dataset"] == "pets") & (frame["image_id"] == record.image_id) & (frame["role"] == "train")]
        fixed = rows[rows["variant"] == "binary_fp"]
        got = [(r.category, r.color, r.color2, tuple(int(v) for v in store.get(r.target_digest)[0, 0]))
               for r in fixed.itertuples()]
        assert sorted(got) == sorted(official[record.species])
        fp, rp = attach_fp(rows), attach_rp(rows, _bundled_bank(), seed=3)
        assert set(fp["variant"]) == {"binary_fp", "breeds"} and set(rp["variant"]) == {"binary", "breeds"}
        assert "Show purple if the picture has cat, otherwise show orange." in set(fp["instruction"]) or record.species == "dog"


def test_fp_binary_pets_questions_with_random_colours_are_rps_questions(built, sources, tmp_path):
    # fp_binary_colours: random (the mini preset): no fixed-colour questions are built, FP takes the
    # seeded random-colour ones, and FP and RP hold the same pairs, phrased differently
    from instructcv_core.construction.manifest import fp_pairs, rp_pairs

    config = dataclasses.replace(CONFIG, fp_binary_colours="random")
    units = [u for u in plan_units(sources) if u.record.dataset == "pets"]
    result = build_units(units, config, tmp_path / "store", workers=1)
    frame = pd.DataFrame(result.rows)
    train_units = [u for u in units if u.role == "train"]
    train = frame[frame["role"] == "train"]
    assert len(frame) == sum(expected_pairs(u, config) for u in units)
    assert "binary_fp" not in set(frame["variant"])
    for name, select in (("fp", fp_pairs), ("rp", rp_pairs)):
        assert len(select(train)) == sum(expected_pairs(u, config, name) for u in train_units), name
    assert sorted(fp_pairs(train)["pair_id"]) == sorted(rp_pairs(train)["pair_id"])
    fp = attach_fp(train)
    assert set(fp["variant"]) == {"binary", "breeds"}
    # the random-colour questions are the same pairs the official build gives RP
    _, official, _ = built
    official_rp = pd.DataFrame(official.rows)
    official_rp = official_rp[(official_rp["dataset"] == "pets") & (official_rp["variant"] == "binary")]
    binary = train[train["variant"] == "binary"]
    official_rp = official_rp[official_rp["role"] == "train"]
    assert sorted(zip(binary["pair_id"], binary["color"], binary["color2"], binary["target_digest"])) == \
        sorted(zip(official_rp["pair_id"], official_rp["color"], official_rp["color2"], official_rp["target_digest"]))
    for row in fp[fp["variant"] == "binary"].itertuples():
        assert row.instruction == f"Show {row.color} if the picture has {row.category_text}, otherwise show {row.color2}."
    with pytest.raises(ValueError, match="fp_binary_colours must be 'official' or 'random'"):
        BuildConfig(fp_binary_colours="fixed")


def test_build_is_deterministic_across_worker_counts(built, tmp_path):
    units, result, _ = built
    again = build_units(units, CONFIG, tmp_path / "store", workers=2)
    assert again.rows == result.rows


def test_same_config_and_seed_give_byte_identical_manifests(built, tmp_path):
    units, result, store = built
    again = build_units(units, CONFIG, tmp_path / "store", workers=2)
    files = []
    for i, rows in enumerate((result.rows, again.rows)):
        frame = pd.DataFrame(rows)
        files.append(write_table(attach_fp(frame[frame["role"] == "train"]), tmp_path / f"fp{i}.parquet", MANIFEST_SCHEMA))
    assert files[0].read_bytes() == files[1].read_bytes()
    # and the images behind the digests are the same bytes
    digest = result.rows[0]["target_digest"]
    assert (tmp_path / "store" / digest[:2] / f"{digest}.png").read_bytes() == store.path(digest).read_bytes()
    other_seed = build_units(units[:5], dataclasses.replace(CONFIG, seed=4), tmp_path / "store4")
    assert [r["pair_id"] for r in other_seed.rows] == [r["pair_id"] for r in build_units(units[:5], CONFIG, tmp_path / "s").rows]


def test_manifests_are_byte_identical_for_the_same_config(built, tmp_path):
    _, result, _ = built
    pairs = pd.DataFrame(result.rows)
    train = pairs[pairs["role"] == "train"]
    paths = [write_table(attach_fp(train), tmp_path / f"fp{i}.parquet", MANIFEST_SCHEMA, {"seed": 3}) for i in range(2)]
    assert paths[0].read_bytes() == paths[1].read_bytes()
    rows = [write_table(result.rows, tmp_path / f"pairs{i}.parquet", PAIR_SCHEMA) for i in range(2)]
    assert rows[0].read_bytes() == rows[1].read_bytes()


def test_fp_and_rp_instructions(built):
    from instructcv_core.instructions.templates import FP_TEMPLATES, load_bundled_bank, render

    _, result, _ = built
    pairs = pd.DataFrame(result.rows)
    train = pairs[pairs["role"] == "train"]
    fp = attach_fp(train)
    row = fp[fp["task"] == "segmentation"].iloc[0]
    assert row["instruction"] == render(FP_TEMPLATES["segmentation"], category=row["category_text"])
    assert set(fp["prompt_source"]) == {"fp"}

    bank = pd.DataFrame([{"task": e.task, "template_id": e.template_id, "paraphrase": e.text, "source": e.source, "accepted": True}
                         for e in load_bundled_bank()])
    rp = attach_rp(train, bank, seed=3)
    assert rp["instruction"].tolist() == attach_rp(train, bank, seed=3)["instruction"].tolist()
    assert set(rp["prompt_source"]) == {"bundled"}
    assert not rp["instruction"].str.contains("%").any()
    assert rp["template_id"].nunique() > 1


def test_leakage_is_detected_by_pixel_digest():
    train = pd.DataFrame({"dataset": ["a", "a"], "split": ["train"] * 2, "image_id": ["1", "2"], "source_path": ["x", "y"],
                          "source_digest": ["d1", "d2"], "input_digest": ["i1", "i2"]})
    test = pd.DataFrame({"source_digest": ["d2", "d9"], "input_digest": ["i8", "i9"]})
    assert leaked_sources(train, test)["image_id"].tolist() == ["2"]
    assert leaked_sources(train, test.assign(source_digest=["z", "z"])).empty


def test_corrupt_source_image_is_quarantined_not_fatal(sources, tmp_path):
    records, root, classes = sources["pets"]
    copy_root = tmp_path / "pets"
    shutil.copytree(root, copy_root)
    good, bad = records[0], records[1]
    (copy_root / bad.image_path).write_bytes(b"not an image")
    units = [WorkUnit("classification", "train", None, r, str(copy_root), tuple(classes)) for r in (good, bad)]
    result = build_units(units, CONFIG, tmp_path / "store")
    assert [q.path for q in result.quarantine] == [f"pets/{bad.image_path}"]
    assert "unreadable image" in result.quarantine[0].reason
    assert {r["image_id"] for r in result.rows} == {good.image_id}


def test_missing_annotation_file_quarantines_its_item_naming_file_and_reason(sources, tmp_path):
    records, root, classes = sources["ade20k"]
    copy_root = tmp_path / "ade"
    shutil.copytree(root, copy_root)
    bad, good = records[0], records[1]
    (copy_root / bad.mask_path).unlink()
    units = [WorkUnit("segmentation", "train", None, r, str(copy_root), tuple(classes)) for r in (bad, good)]
    result = build_units(units, CONFIG, tmp_path / "store")
    assert [q.path for q in result.quarantine] == [f"ade20k/{bad.image_path}"]
    assert result.quarantine[0].reason == (
        f"segmentation ade20k/{bad.split}/{bad.image_id}: ImageRefused: {copy_root / bad.mask_path}: file not found"
    )
    assert {r["image_id"] for r in result.rows} == {good.image_id}


def test_build_config_rejects_unknown_values():
    with pytest.raises(ValueError, match="box_colour 'bleu'"):
        BuildConfig(box_colour="bleu")
    with pytest.raises(ValueError, match="pets_variants"):
        BuildConfig(pets_variants=("binary", "species"))
    assert dataclasses.replace(CONFIG, box_colour="red").box_colour == "red"


def test_source_image_error_is_an_oserror():
    assert issubclass(SourceImageError, OSError)


def test_single_unit_build(built, sources, tmp_path):
    units, _, _ = built
    unit = next(u for u in units if u.task == "depth")
    rows = build_unit(unit, CONFIG, ImageStore(tmp_path))
    assert len(rows) == 1 and rows[0]["category"] is None
