"""The `instructcv` command line (instructcv_core.cli): predict, reproduce, doctor, compare."""

from __future__ import annotations

import csv
import io
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from instructcv_core.cli import cli
from instructcv_core.cli.predict import infer_task
from instructcv_core.tasks.classification import palette_colours

RES = 32
PROJECT_ROOT = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pipeline_dir(tiny_pipeline_dir) -> Path:
    return tiny_pipeline_dir


def write_image(path: Path, height: int, width: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def run(*args: str):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def predict_args(pipeline_dir: Path, image: Path, out: Path, instruction: str, *extra: str) -> list:
    return ["predict", "--checkpoint", pipeline_dir, "--image", image, "--out", out, "--instruction", instruction,
            "--steps", "2", "--resolution", str(RES), "--device", "cpu", *extra]


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ----------------------------------------------------------------------------------------------
# predict


TASK_CASES = {
    "segmentation": ("Segment the cat.", ["cat.mask.png", "cat.output.png", "cat.overlay.png"]),
    "detection": ("Detect the cat.", ["cat.boxes.json", "cat.boxes.png", "cat.output.png"]),
    "depth": ("Estimate the depth of this image.", ["cat.depth.npy", "cat.depth.png", "cat.output.png"]),
    "classification": ("Show red if the picture has a cat, otherwise show green.", ["cat.class.json", "cat.output.png"]),
}


@pytest.mark.parametrize("task", list(TASK_CASES))
def test_predict_one_image_per_task(pipeline_dir, tmp_path, task):
    instruction, expected = TASK_CASES[task]
    image = write_image(tmp_path / "cat.png", 40, 56)
    out = tmp_path / "out"
    result = run(*predict_args(pipeline_dir, image, out, instruction, "--task", task))
    assert result.exit_code == 0, result.output
    assert files_in(out) == expected  # exactly these: no temporary files left behind
    assert result.stdout.startswith(f"cat.png: {task}, ")
    with Image.open(out / "cat.output.png") as raw:
        assert raw.size == (RES, RES)  # the raw output stays at generation resolution
    if task == "segmentation":
        for name in ("cat.mask.png", "cat.overlay.png"):
            with Image.open(out / name) as im:
                assert im.size == (56, 40)
        assert set(np.unique(np.asarray(Image.open(out / "cat.mask.png")))) <= {0, 255}
    elif task == "detection":
        boxes = json.loads((out / "cat.boxes.json").read_text())
        assert isinstance(boxes, list)
        assert all(set(b) == {"x", "y", "w", "h", "score"} for b in boxes)
        with Image.open(out / "cat.boxes.png") as im:
            assert im.size == (56, 40)
    elif task == "depth":
        depth = np.load(out / "cat.depth.npy")
        assert depth.shape == (40, 56) and depth.dtype == np.float32
        assert 0.0 <= depth.min() and depth.max() <= 10.0
        with Image.open(out / "cat.depth.png") as im:
            assert im.size == (56, 40) and im.mode == "RGB"
    else:
        decision = json.loads((out / "cat.class.json").read_text())
        assert decision["positive_colour"] == "red" and decision["negative_colour"] == "green"
        assert isinstance(decision["present"], bool) and decision["present"] == (decision["margin"] > 0)


def test_predict_folder_skips_a_corrupt_image(pipeline_dir, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    write_image(folder / "b.jpg", 48, 32, seed=1)
    write_image(folder / "a.png", 40, 56, seed=2)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    result = run(*predict_args(pipeline_dir, folder, out, "How far away is everything?", "--json", "--batch-size", "2"))
    assert result.exit_code == 1
    assert "warning" in result.stderr and "broken.png" in result.stderr
    assert "1 of 3 images could not be read" in result.stderr
    assert files_in(out) == ["a.depth.npy", "a.depth.png", "a.output.png", "b.depth.npy", "b.depth.png", "b.output.png"]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(line["image"]).name for line in lines] == ["a.png", "b.jpg"]  # sorted
    assert all(line["task"] == "depth" for line in lines)  # inferred from "far"
    assert np.load(out / "b.depth.npy").shape == (48, 32)


INSTRUCTIONS = [
    ("Segment the cat.", "segmentation"),
    ("Which image segments contain the dog?", "segmentation"),
    ("I need a mask for every person you can see here.", "segmentation"),
    ("Could you cut out the car from this photo for me?", "segmentation"),
    ("Please highlight the image segment containing the sofa.", "segmentation"),
    ("Detect the dog.", "detection"),
    ("Can you put a box around each bottle for me?", "detection"),
    ("Locate the bicycle.", "detection"),
    ("Find every chair.", "detection"),
    ("Estimate the depth of this image.", "depth"),
    ("How far away is everything in this picture?", "depth"),
    ("Can you show me what is close and what is far in this photo?", "depth"),
    ("I'd like to see the distance of each pixel from the camera.", "depth"),
    ("Show red if the picture has a cat, otherwise show green.", "classification"),
    ("Is there a dog here? Answer with rosy brown for yes and aqua for no.", "classification"),
    ("Paint the whole picture gold when it contains a bird, and indigo when it doesn't.", "classification"),
]


@pytest.mark.parametrize("instruction, task", INSTRUCTIONS)
def test_task_inference_rule(instruction, task):
    assert infer_task(instruction) == task


@pytest.mark.parametrize("instruction, message", [
    ("Paint it nicely.", "pass --task"),
    ("Find the distance to the wall.", "several tasks"),  # detection ('Find') and depth ('distance')
])
def test_task_inference_refuses_unclear_instructions(instruction, message):
    with pytest.raises(ValueError, match=message):
        infer_task(instruction)


def test_palette_colours_in_order():
    assert palette_colours("Answer with Rosy  Brown for yes and brown for no") == ["rosy brown", "brown"]
    assert palette_colours("Segment the cat") == []


def test_predict_errors_name_the_problem(pipeline_dir, tmp_path):
    image = write_image(tmp_path / "ok.png", 32, 32)
    out = tmp_path / "out"

    result = run(*predict_args(tmp_path / "no-such-ckpt", image, out, "Segment the cat"))
    assert result.exit_code == 2 and "no-such-ckpt" in result.output and "no such file" in result.output

    not_pipeline = tmp_path / "empty_dir"
    not_pipeline.mkdir()
    result = run(*predict_args(not_pipeline, image, out, "Segment the cat"))
    assert result.exit_code == 2 and "empty_dir" in result.output and "model_index.json" in result.output

    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff garbage")
    result = run(*predict_args(pipeline_dir, corrupt, out, "Segment the cat"))
    assert result.exit_code == 1 and "corrupt.jpg" in result.output and "unreadable image" in result.output

    result = run(*predict_args(pipeline_dir, image, out, "   "))
    assert result.exit_code == 2 and "instruction is empty" in result.output

    result = run(*predict_args(pipeline_dir, image, out, "Make it nice"))
    assert result.exit_code == 2 and "pass --task" in result.output

    result = run(*predict_args(pipeline_dir, image, out, "Segment the cat", "--task", "colourise"))
    assert result.exit_code == 2 and "colourise" in result.output

    result = run(*predict_args(pipeline_dir, image, out, "Show red if there is a cat", "--task", "classification"))
    assert result.exit_code == 2 and "two palette colours" in result.output

    empty = tmp_path / "no_images"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    result = run(*predict_args(pipeline_dir, empty, out, "Segment the cat"))
    assert result.exit_code == 2 and "no_images" in result.output and "no images" in result.output
    assert not out.exists()  # nothing written on errors


# ----------------------------------------------------------------------------------------------
# reproduce


def test_reproduce_dry_run_prints_the_command(tmp_path):
    base = [sys.executable, "-m", "dagster", "job", "execute", "-m", "pipelines.definitions", "-j", "full_reproduction"]
    result = run("reproduce", "--dry-run")
    assert result.exit_code == 0 and result.output == shlex.join(base) + "\n"
    result = run("reproduce", "--profile", "paper", "--dry-run")
    assert result.exit_code == 0 and result.output == shlex.join(base + ["-c", "configs/paper.yaml"]) + "\n"
    config = tmp_path / "my config.yaml"
    config.write_text("resources: {}\n")
    result = run("reproduce", "--profile", "paper", "--config", config, "--dry-run")
    assert result.output == shlex.join(base + ["-c", str(config.resolve())]) + "\n"


# ----------------------------------------------------------------------------------------------
# doctor

DATASETS = ("coco", "ade20k", "pets", "nyuv2", "voc", "sunrgbd", "fss1000", "imagenet_sub")


def rows(output: str) -> dict[str, tuple[str, str]]:
    """item -> (status, detail) of the doctor's plain table."""
    found = {}
    for line in output.splitlines():
        for status in ("ok", "missing", "info"):
            marker = f"  {status}"
            if marker in line and not line.startswith(("-", "item")):
                item, _, rest = line.partition(marker)
                if item.strip() and rest.startswith(" "):
                    found[item.strip()] = (status, rest.strip())
                    break
    return found


def test_doctor_with_nothing_present(tmp_path):
    config = tmp_path / "paper.yaml"
    config.write_text(f"resources:\n  settings:\n    config:\n      profile: paper\n"
                      f"      base_model: {tmp_path / 'no-base-here'}\n      require_gpu: false\n")
    result = run("doctor", "--config", config, "--data-root", tmp_path / "data")
    assert result.exit_code == 1, result.output
    table = rows(result.output)
    for name in DATASETS:
        assert table[f"dataset {name}"][0] == "missing", result.output
    assert table["dataset coco"][1].startswith("train2017.zip missing")
    assert table["base model"][0] == "missing" and "no-base-here" in table["base model"][1]
    assert table["GPU"][0] in ("ok", "info")  # require_gpu: false
    assert "http://images.cocodataset.org/zips/train2017.zip" in result.output  # what to do
    assert "- dataset imagenet_sub: " in result.output and "public_alternative: true" in result.output
    assert "- base model: `hf download" not in result.output  # a local path: no hub advice
    assert f"- base model: " in result.output


def test_doctor_with_everything_present(pipeline_dir, tmp_path):
    from instructcv_core.data.datasets import dataset_module

    data = tmp_path / "data"
    ops = {}
    for name in DATASETS:
        if name == "pets":
            continue
        spec = dataset_module(name).SPEC
        root = tmp_path / "extracted" / name
        marker = root / spec.root_subdir / spec.marker
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        ops[f"raw_{name}"] = {"config": {"extracted_dir": str(root)}}
    downloads = data / "paper" / "raw" / "pets" / "downloads"
    downloads.mkdir(parents=True)
    for remote in dataset_module("pets").SPEC.files:  # sparse files of the published sizes
        with open(downloads / remote.filename, "wb") as f:
            f.truncate(remote.size)
    ops["paraphrase_bank"] = {"config": {"allow_bundled": True}}
    config = tmp_path / "paper.yaml"
    config.write_text(json.dumps({"resources": {"settings": {"config": {
        "profile": "paper", "base_model": str(pipeline_dir), "require_gpu": False}}}, "ops": ops}))
    result = run("doctor", "--config", config, "--data-root", data, "--outputs-gb", "0")
    assert result.exit_code == 0, result.output
    table = rows(result.output)
    assert {k: v[0] for k, v in table.items()} == {
        **{f"dataset {n}": "ok" for n in DATASETS}, "base model": "ok", "paraphraser": table["paraphraser"][0],
        "GPU": table["GPU"][0], "disk space": "ok", "python packages": "ok", "dagster runs": "info",
        "dagster gpu pool": "ok"}  # a fresh instance with the project's dagster.yaml
    assert table["dataset pets"][1].startswith("images.tar.gz present (size ok); annotations.tar.gz present (size ok)")
    assert table["dataset coco"][1] == f"extracted copy at {tmp_path / 'extracted' / 'coco'}"
    assert "pets extraction 0.8 GB" in table["disk space"][1]
    assert "Everything the paper profile needs is here." in result.output

    # a truncated archive is named, with what to do
    with open(downloads / "images.tar.gz", "r+b") as f:
        f.truncate(1000)
    result = run("doctor", "--config", config, "--data-root", data, "--outputs-gb", "0")
    assert result.exit_code == 1
    assert rows(result.output)["dataset pets"] == (
        "missing", "images.tar.gz: 1,000 bytes, expected 791,918,971 (partial or wrong file)")


# ----------------------------------------------------------------------------------------------
# compare


@pytest.fixture
def mlflow_store(tmp_path) -> str:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("instructcv", artifact_location=(tmp_path / "artifacts").as_uri())
    values = {
        "eval-fp-mini": {"eval/ade20k/paper/miou": 0.5, "eval/ade20k/standard/miou": 0.25,
                         "eval/nyuv2/standard/rmse": 1.5, "eval/nyuv2/cost/images": 6.0},
        "eval-rp-mini": {"eval/ade20k/paper/miou": 0.625, "eval/ade20k/standard/miou": 0.125,
                         "eval/nyuv2/standard/rmse": 1.25, "eval/nyuv2/cost/images": 6.0},
    }
    for name, metrics in values.items():
        run = client.create_run(experiment, run_name=name)
        for key, value in metrics.items():
            client.log_metric(run.info.run_id, key, value)
        client.set_terminated(run.info.run_id)
    stale = client.create_run(experiment, run_name="eval-rp-mini")  # unfinished: ignored
    client.log_metric(stale.info.run_id, "eval/ade20k/paper/miou", 0.99)
    return uri


def test_compare_tables(mlflow_store, tmp_path):
    result = run("compare", "--tracking-uri", mlflow_store, "--profile", "mini", "--format", "md")
    assert result.exit_code == 0, result.output
    table = [line for line in result.output.splitlines() if line.startswith("|")]
    assert table == [
        "| benchmark | protocol | metric | FP | RP | RP-FP |",
        "|---|---|---|---:|---:|---:|",
        "| ade20k | paper | miou | 0.5000 | 0.6250 | +0.1250 |",
        "| ade20k | standard | miou | 0.2500 | 0.1250 | -0.1250 |",
        "| nyuv2 | standard | rmse | 1.5000 | 1.2500 | -0.2500 |",
    ]
    out = tmp_path / "results"
    result = run("compare", "--tracking-uri", mlflow_store, "--out", out)
    assert result.exit_code == 0, result.output
    assert files_in(out) == ["compare-mini.csv", "compare-mini.md"]
    assert list(csv.reader(io.StringIO((out / "compare-mini.csv").read_text()))) == [
        ["benchmark", "protocol", "metric", "FP", "RP", "RP-FP"],
        ["ade20k", "paper", "miou", "0.5", "0.625", "0.125"],
        ["ade20k", "standard", "miou", "0.25", "0.125", "-0.125"],
        ["nyuv2", "standard", "rmse", "1.5", "1.25", "-0.25"],
    ]
    assert (out / "compare-mini.md").read_text().splitlines()[2:] == table


def test_compare_shows_each_metrics_interval_not_as_rows():
    from instructcv_core.cli.compare import comparison_csv, comparison_markdown, comparison_rows

    key = "eval/ade20k/standard/miou"
    metrics = {"FP": {key: 50.0, f"{key}_n": 60.0, f"{key}_ci_low": 45.0, f"{key}_ci_high": 55.5},
               "RP": {key: 52.0, f"{key}_n": 60.0}}  # an interval without bounds (NaN is not logged)
    columns, rows = comparison_rows(metrics)
    assert [r["metric"] for r in rows] == ["miou"]
    assert rows[0]["FP interval"] == (60.0, 45.0, 55.5) and rows[0]["RP interval"] == (60.0, None, None)
    assert comparison_markdown(columns, rows).splitlines()[2] == (
        "| ade20k | standard | miou | 50.0000 [45.0000, 55.5000] (n=60) | 52.0000 (n=60) | +2.0000 |")
    assert list(csv.reader(io.StringIO(comparison_csv(columns, rows)))) == [
        ["benchmark", "protocol", "metric", "FP", "RP", "RP-FP", "FP n", "FP ci_low", "FP ci_high", "RP n", "RP ci_low",
         "RP ci_high"],
        ["ade20k", "standard", "miou", "50.0", "52.0", "2.0", "60.0", "45.0", "55.5", "60.0", "", ""]]


@pytest.mark.slow
def test_compare_over_http_against_a_real_mlflow_server(mlflow_server):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.create_experiment("instructcv-compare-http")
    for name, value in (("eval-fp-mini", 40.0), ("eval-rp-mini", 42.5), ("eval-untrained-mini", 3.0)):
        run_id = client.create_run(experiment, run_name=name).info.run_id
        client.log_metric(run_id, "eval/voc_seg/standard/miou", value)
        client.set_terminated(run_id)
    result = run("compare", "--tracking-uri", mlflow_server, "--experiment", "instructcv-compare-http", "--format", "md")
    assert result.exit_code == 0, result.output
    table = [line for line in result.output.splitlines() if line.startswith("|")]
    assert table[0] == "| benchmark | protocol | metric | FP | RP | untrained | RP-FP |"
    assert table[2] == "| voc_seg | standard | miou | 40.0000 | 42.5000 | 3.0000 | +2.5000 |"


def test_compare_names_a_missing_run(mlflow_store, tmp_path):
    result = run("compare", "--tracking-uri", mlflow_store, "--profile", "paper")
    assert result.exit_code == 1 and "eval-fp-paper" in result.output
    result = run("compare", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}")
    assert result.exit_code == 1 and "no MLflow store" in result.output and not (tmp_path / "none.db").exists()


# ----------------------------------------------------------------------------------------------
# entry points


def test_help_runs_as_a_module_and_console_script():
    result = subprocess.run([sys.executable, "-m", "instructcv_core.cli", "--help"], capture_output=True, text=True,
                            timeout=60, cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stderr
    for command in ("predict", "reproduce", "doctor", "compare"):
        assert command in result.stdout
    for command in ("predict", "reproduce", "doctor", "compare"):
        sub = run(command, "--help")
        assert sub.exit_code == 0 and "Examples:" in sub.output
    script = Path(sys.executable).parent / "instructcv"
    if script.exists():  # installed by `pip install -e .`
        result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60,
                                env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
        assert result.returncode == 0 and "Usage: instructcv" in result.stdout
