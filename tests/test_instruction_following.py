"""Instruction following: the output-kind classifier, the probes, and a check that passes an oracle
and fails the untrained base (and a model that ignores the category)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from instructcv_core.benchmarks import manifest_benchmarks
from instructcv_core.construction.config import BuildConfig
from instructcv_core.construction.manifest import MANIFEST_SCHEMA, attach_fp, write_table
from instructcv_core.construction.pairs import build_units, plan_units
from instructcv_core.data.imagestore import ImageStore
from instructcv_core.data.raw_stage import build_raw_dataset, resolve_spec
from instructcv_core.data.records import read_records
from instructcv_core.evaluation.config import EvalConfig
from instructcv_core.evaluation.data import load_benchmark
from instructcv_core.evaluation.instruction_following import (
    check_instruction_following,
    output_kind,
    plan_probes,
    task_kinds,
)
from instructcv_core.inference.config import SamplerConfig
from instructcv_core.tasks.classification import encode_classification
from instructcv_core.tasks.depth import encode_depth
from instructcv_core.tasks.detection import encode_detection
from instructcv_core.tasks.segmentation import encode_segmentation

RES = 32


def _scene(seed=0, size=(48, 40)) -> np.ndarray:
    """A coloured, textured input image (width, height)."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = np.zeros((h, w, 3), np.float32)
    base[:] = rng.uniform(40, 200, 3)
    base[h // 4: h // 2, w // 4: w // 2] = rng.uniform(40, 200, 3)
    base += rng.normal(0, 25, base.shape)
    return np.clip(base, 0, 255).astype(np.uint8)


def test_output_kind_recognises_every_tasks_target():
    image = _scene()
    h, w = image.shape[:2]
    mask = np.zeros((h, w), bool)
    mask[5:20, 10:30] = True
    depth = np.tile(np.linspace(0.5, 8.0, w), (h, 1))
    assert output_kind(encode_segmentation(mask), image) == "mask"
    assert output_kind(encode_segmentation(np.zeros((h, w), bool)), image) == "mask"  # an empty answer is still a mask
    assert output_kind(encode_depth(depth), image) == "depth"
    assert output_kind(encode_detection(image, [(10, 5, 20, 15)]), image) == "boxes"
    for colour in ("red", "green", "blue", "beige", "maroon"):
        assert output_kind(encode_classification(colour, (w, h)), image) == "colour", colour
    # a white block is a full mask as far as pixels can tell (documented)
    assert output_kind(encode_classification("white", (w, h)), image) == "mask"
    noise = np.random.default_rng(1).integers(0, 256, (h, w, 3), dtype=np.uint8)
    assert output_kind(noise, image) == "other"
    assert output_kind(_scene(seed=5), image) == "other"  # an unrelated picture is not the input redrawn


def test_output_kind_compares_with_the_input_at_the_outputs_size():
    image = _scene(size=(80, 60))
    small = np.asarray(__import__("PIL.Image", fromlist=["Image"]).fromarray(image).resize((RES, RES)))
    assert output_kind(small, image) == "boxes"


# ---- a small real-format benchmark (mini data, built without Dagster) ------------------------------

SIZES = {"ade20k": {"training": 1, "validation": 8}, "coco": {"train": 1, "val": 8},
         "pets": {"trainval": 1, "test": 6}, "nyuv2": {"train": 1, "test": 3, "sync": 1}}


@pytest.fixture(scope="module")
def profile_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("following")
    sources = {}
    for name, sizes in SIZES.items():
        spec = resolve_spec(name, "mini", mirror_dir=root / "mirror", mini_sizes=sizes, info=lambda _: None)
        result = build_raw_dataset(name, spec, root / "raw" / name, show_bar=False, info=lambda _: None)
        records, data_root, categories = read_records(result.records_path)
        sources[name] = (records, data_root, [c.name for c in categories])
    units = [u for u in plan_units(sources) if u.role == "test"]
    built = build_units(units, BuildConfig(resolution=64, seed=0), root / "datasets" / "images", workers=1)
    test = attach_fp(pd.DataFrame(built.rows))
    for benchmark in manifest_benchmarks():
        rows = test[test["benchmark"] == benchmark.name]
        if len(rows):
            write_table(rows, root / "datasets" / "test" / f"{benchmark.name}.parquet", MANIFEST_SCHEMA)
    return root


def _bench(profile_dir, name):
    return load_benchmark(name, profile_dir / "datasets", profile_dir / "raw", None, 0)


CONFIG = EvalConfig(sampler=SamplerConfig(steps=2, batch_size=16, resolution=RES, dtype="float32"))


def test_probes_are_seeded_bounded_and_cover_both_kinds(profile_dir):
    bench = _bench(profile_dir, "ade20k")
    probes = plan_probes(bench, CONFIG)
    assert probes.equals(plan_probes(bench, CONFIG))
    swaps, switches = probes[probes["probe"] == "swap"], probes[probes["probe"] == "switch"]
    assert 0 < len(swaps) <= CONFIG.following_pairs and (swaps["category"] != swaps["other"]).all()
    held = bench.frame.groupby("image_id")["category"].apply(set).to_dict()
    assert all({r.category, r.other} <= held[r.image_id] for r in swaps.itertuples())
    assert len(switches) == 4 * min(CONFIG.following_images, len(bench.image_ids))
    fewer = plan_probes(bench, EvalConfig(sampler=CONFIG.sampler, following_pairs=1, following_images=0))
    assert list(fewer["probe"]) == ["swap"]
    assert task_kinds() == {"segmentation": "mask", "detection": "boxes", "depth": "depth", "classification": "colour"}
    assert set(switches["expected_kind"]) == set(task_kinds().values())
    pets = plan_probes(_bench(profile_dir, "pets"), CONFIG)
    assert set(pets[pets["probe"] == "swap"]["role"]) == {"asked", "other"}  # classification asks both classes
    depth = plan_probes(_bench(profile_dir, "nyuv2"), CONFIG)
    assert set(depth["probe"]) == {"switch"}


class OracleSampler:
    """Answers every probe with its ground truth (or, ``blind``, segments every category at once)."""

    def __init__(self, bench, config, blind=False):
        from instructcv_core.data.labels import load_class_masks

        self.bench, self.config, self.blind = bench, config, blind
        self.masks = {i: load_class_masks(bench.records[i], bench.root)[0] for i in bench.image_ids} \
            if bench.task == "segmentation" else {}
        self.probes = plan_probes(bench, config)

    def generate(self, requests, images, on_batch=None):
        from PIL import Image

        lookup = {(r.input_digest, r.instruction): r for r in self.probes.itertuples()}
        for index, request in enumerate(requests):
            probe = lookup[(request.image_key, request.instruction)]
            image = images[request.image_key]
            h, w = image.shape[:2]
            record = self.bench.records[probe.image_id]
            if probe.task == "segmentation":
                masks = self.masks.get(probe.image_id, {})
                mask = (np.any(list(masks.values()), axis=0) if self.blind and masks else
                        masks.get(probe.category, np.zeros((h, w), bool)))
                out = encode_segmentation(mask)
            elif probe.task == "detection":  # drawn at the output's resolution, as the model's training targets
                sx, sy = RES / w, RES / h
                boxes = [(b.x * sx, b.y * sy, b.w * sx, b.h * sy) for b in record.boxes if b.category == probe.category]
                small = np.asarray(Image.fromarray(image).resize((RES, RES), Image.Resampling.BILINEAR))
                yield index, encode_detection(small, boxes if self.bench.task == "detection" else [], width=1)
                continue
            elif probe.task == "depth":
                out = encode_depth(np.tile(np.linspace(1, 6, w), (h, 1)))
            else:
                present = probe.category == record.label_name if record.label_name else probe.role == "asked"
                out = encode_classification(self.config.positive_colour if present else self.config.negative_colour, (w, h))
            yield index, np.asarray(Image.fromarray(out).resize((RES, RES), Image.Resampling.BILINEAR))
        if on_batch:
            on_batch(len(requests))


@pytest.mark.parametrize("name", ["ade20k", "coco", "pets", "nyuv2"])
def test_an_oracle_follows_every_instruction(profile_dir, tmp_path, name):
    bench = _bench(profile_dir, name)
    store = ImageStore(tmp_path / "outputs")
    summary = check_instruction_following(bench, lambda: OracleSampler(bench, CONFIG), "oracle", CONFIG,
                                          ImageStore(profile_dir / "datasets" / "images"), store, tmp_path / name,
                                          log=lambda _: None)
    assert summary["passed"], summary["reason"]
    assert summary["switch_rate"] == 1.0
    assert (tmp_path / name / "instruction_following.parquet").exists()
    # a rerun with the same checkpoint reuses the probes: no sampler needed
    again = check_instruction_following(bench, lambda: pytest.fail("regenerated"), "oracle", CONFIG,
                                        ImageStore(profile_dir / "datasets" / "images"), store, tmp_path / name,
                                        log=lambda _: None)
    assert again["passed"] == summary["passed"] and again["pairs_followed"] == summary["pairs_followed"]


def test_a_model_that_ignores_the_category_fails(profile_dir, tmp_path):
    bench = _bench(profile_dir, "ade20k")
    summary = check_instruction_following(bench, lambda: OracleSampler(bench, CONFIG, blind=True), "blind", CONFIG,
                                          ImageStore(profile_dir / "datasets" / "images"), ImageStore(tmp_path / "o"),
                                          tmp_path / "ade20k", log=lambda _: None)
    assert not summary["passed"] and "category swaps" in summary["reason"]
    assert summary["switch_rate"] == 1.0  # it still draws the right kinds


@pytest.mark.parametrize("name", ["ade20k", "coco"])
def test_the_untrained_base_fails(profile_dir, tmp_path, tiny_pipeline_dir, one_torch_thread, name):
    from instructcv_core.inference.sampler import InstructCVSampler

    bench = _bench(profile_dir, name)
    summary = check_instruction_following(
        bench, lambda: InstructCVSampler.from_pretrained(str(tiny_pipeline_dir), CONFIG.sampler), "untrained", CONFIG,
        ImageStore(profile_dir / "datasets" / "images"), ImageStore(tmp_path / "o"), tmp_path / name, log=lambda _: None)
    assert not summary["passed"], summary
    assert summary["switch_rate"] < 0.9


def test_a_zero_step_checkpoint_does_not_beat_the_untrained_base(profile_dir, tmp_path, tiny_pipeline_dir, one_torch_thread):
    """The same weights evaluated as the checkpoint and as the base: per-image identical, the check fails."""
    import dagster as dg

    from assets.evaluate import beats_untrained_check
    from instructcv_core.evaluation.run import evaluate_benchmark
    from instructcv_core.inference.sampler import InstructCVSampler

    config = EvalConfig(sampler=CONFIG.sampler, protocols=("paper", "standard"))
    sampler = lambda: InstructCVSampler.from_pretrained(str(tiny_pipeline_dir), config.sampler)  # noqa: E731
    results = {}
    for variant in ("untrained", "fp"):
        results[variant] = evaluate_benchmark("ade20k", sampler, f"{variant}:same-weights", config, profile_dir / "datasets",
                                              profile_dir / "raw", tmp_path / variant / "ade20k",
                                              ImageStore(tmp_path / f"outputs-{variant}"), log=lambda _: None)
    assert results["fp"].details["standard"]["per_image"] == results["untrained"].details["standard"]["per_image"]
    check = beats_untrained_check(dg.AssetKey("eval_ade20k_fp"), "ade20k", results["fp"].details,
                                  tmp_path / "untrained" / "ade20k" / "details.json")
    assert not check.passed and "identical" in check.description


@pytest.mark.parametrize("name", ["ade20k", "coco", "pets", "nyuv2"])
def test_every_metric_carries_its_images_and_interval(profile_dir, tmp_path, tiny_pipeline_dir, one_torch_thread, name):
    from instructcv_core.evaluation.run import evaluate_benchmark
    from instructcv_core.evaluation.scoring import metric_ranges
    from instructcv_core.inference.sampler import InstructCVSampler

    # every category of the dataset asked: this tiny COCO split holds a box category that no test pair names
    config = EvalConfig(sampler=CONFIG.sampler, standard_classes="all")
    result = evaluate_benchmark(name, lambda: InstructCVSampler.from_pretrained(str(tiny_pipeline_dir), config.sampler),
                                "untrained", config, profile_dir / "datasets", profile_dir / "raw", tmp_path / name,
                                ImageStore(tmp_path / "outputs"), log=lambda _: None)
    frame = pd.read_parquet(result.paths["metrics"])
    expected = {(p, m) for p, metrics in metric_ranges(name).items() for m in metrics}
    assert set(zip(frame["protocol"], frame["metric"])) == expected
    images = len(_bench(profile_dir, name).image_ids)
    assert ((frame["n"] >= 1) & (frame["n"] <= images)).all(), frame
    finite = frame[np.isfinite(frame["value"])]
    assert finite[["ci_low", "ci_high"]].notna().all().all(), frame
    assert (finite["ci_low"] <= finite["ci_high"]).all()
