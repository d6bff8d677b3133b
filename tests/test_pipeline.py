"""The Dagster job end to end on a small mini-benchmark served from a loopback mirror."""

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from instructcv_core.mini.build import build_mirror
from instructcv_core.mirror_server import serve_directory
from pipelines.definitions import defs
from pipelines.project import PROJECT_ROOT

SMALL = {
    "coco": {"train": 6, "val": 3},
    "ade20k": {"training": 6, "validation": 3},
    "pets": {"trainval": 6, "test": 3},
    "nyuv2": {"train": 4, "test": 3, "sync": 4},
    "voc": {"train": 2, "val": 4},
    "sunrgbd": {"test": 4, "nyu": 2},
    "fss1000": {"classes": 2, "per_class": 3},
    "imagenet_sub": {"train_per_class": 2, "val_per_class": 2},
}
EXPECTED_SPLITS = {
    "coco": {"train": 6, "val": 3},
    "ade20k": {"train": 6, "val": 3},
    "pets": {"trainval": 6, "test": 3},
    "nyuv2": {"train": 4, "test": 3, "train_sync": 4},
    "voc": {"train": 2, "val": 4},
    "sunrgbd": {"test": 4},  # the NYUv2 part of SUN RGB-D is excluded by default
    "fss1000": {"test": 6},
    "imagenet_sub": {"train": 10, "val": 10},  # 5 classes
}


@pytest.fixture(scope="module")
def mirror_url(tmp_path_factory):
    root = tmp_path_factory.mktemp("mini_mirror")
    build_mirror(root, seed=0, sizes=SMALL)
    with serve_directory(root) as server:
        yield server.url


# Model and training budgets small enough for a test; the learning itself is tested in test_learning.py.
TINY_TRAINING = {
    "base_model": {"config": {"fit_seconds": 2.0, "fit_images": 64}},
    **{f"instructcv_{v}_checkpoint": {"config": {"max_steps": 3, "max_seconds": 60.0, "train_batch_size": 4,
                                                 "checkpointing_steps": 2}} for v in ("fp", "rp")},
}


def _run_config(data_root, mirror_url=None):
    settings = {"data_root": str(data_root), "mini_sizes": SMALL, "progress_bars": False}
    if mirror_url:
        settings["mini_mirror_url"] = mirror_url
    return {"resources": {"settings": {"config": settings}}, "ops": TINY_TRAINING,
            "execution": {"config": {"in_process": {}}}}


def test_full_reproduction_materialises_the_raw_stage_and_logs_to_mlflow(tmp_path, mirror_url):
    job = defs.resolve_job_def("full_reproduction")
    result = job.execute_in_process(run_config=_run_config(tmp_path / "data", mirror_url))
    assert result.success

    for name, splits in EXPECTED_SPLITS.items():
        (mat,) = result.asset_materializations_for_node(f"raw_{name}")
        meta = mat.metadata
        assert meta["records"].value == sum(splits.values()), name
        assert meta["quarantined"].value == 0
        assert meta["origin"].value == "mini"
        assert meta["sample_grid"].value.startswith("![")
        assert Path(meta["records_path"].value).exists()
        assert all(f["url"].startswith(mirror_url) for f in meta["files"].value)
        summary = json.loads((tmp_path / "data" / "mini" / "raw" / name / "summary.json").read_text())
        assert summary["split_counts"] == splits, name

    checks = result.get_asset_check_evaluations()
    failed = [(c.asset_key.to_user_string(), c.check_name) for c in checks if not c.passed]
    assert failed == []
    assert len(checks) == len(EXPECTED_SPLITS) + 1 + 2 * 4 + 1  # raw, bank variety, fp/rp checks, rp diversity

    (catalog,) = result.asset_materializations_for_node("raw_catalog")
    run_id = catalog.metadata["mlflow_run_id"].value
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'data' / 'mlruns' / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert run.data.tags["dagster_run_id"] == result.run_id
    assert run.data.metrics["raw/coco/records"] == 9
    assert run.data.metrics["raw/nyuv2/records"] == 11
    assert sorted(d.dataset.name for d in run.inputs.dataset_inputs) == sorted(f"raw_{n}" for n in EXPECTED_SPLITS)
    assert catalog.metadata["mlflow_run"].value.endswith(f"/runs/{run_id}")

    # dataset construction: FP/RP manifests with the same pairs, test manifests for every benchmark
    datasets = tmp_path / "data" / "mini" / "datasets"
    fp = pd.read_parquet(datasets / "fp_manifest.parquet")
    rp = pd.read_parquet(datasets / "rp_manifest.parquet")
    assert fp["pair_id"].tolist() == rp["pair_id"].tolist()
    assert set(fp["task"]) == {"segmentation", "detection", "depth", "classification"}
    assert set(fp["prompt_source"]) == {"fp"} and set(rp["prompt_source"]) == {"bundled"}
    assert (fp["instruction"] != rp["instruction"]).mean() > 0.9
    assert len(fp[fp["task"] == "depth"]) == 4 + 4  # NYUv2 train + BTS sync
    assert len(fp[fp["task"] == "classification"]) == 6 * 4  # binary cat/dog + breed positive/negative
    for benchmark in ("nyuv2", "ade20k", "coco", "pets", "sunrgbd", "voc_seg", "voc_det", "imagenet_sub", "fss1000"):
        test = pd.read_parquet(datasets / "test" / f"{benchmark}.parquet")
        assert len(test) > 0 and set(test["role"]) == {"test"}, benchmark
    # one shard re-materialised alone (as from the UI): only its file is rewritten, identically
    from assets.datasets import encoded_pairs
    from pipelines.resources import InstructCVSettings

    shards = {k: (datasets / "pairs" / f"shard-{k}.parquet") for k in ("00", "01", "02", "03")}
    before = {k: (p.stat().st_mtime_ns, p.read_bytes()) for k, p in shards.items()}
    settings = InstructCVSettings(data_root=str(tmp_path / "data"), mini_sizes=SMALL, mini_mirror_url=mirror_url)
    single = dg.materialize([encoded_pairs], partition_key="02", resources={"settings": settings})
    assert single.success
    after = {k: (p.stat().st_mtime_ns, p.read_bytes()) for k, p in shards.items()}
    assert [k for k in shards if after[k][0] != before[k][0]] == ["02"]
    assert after["02"][1] == before["02"][1]

    # both checkpoints: trained through Pipes, loadable by stock diffusers, registered in MLflow
    from diffusers import StableDiffusionInstructPix2PixPipeline

    for variant in ("fp", "rp"):
        (mat,) = result.asset_materializations_for_node(f"instructcv_{variant}_checkpoint")
        assert mat.metadata["steps"].value == 3
        pipeline = StableDiffusionInstructPix2PixPipeline.from_pretrained(mat.metadata["checkpoint_path"].value)
        assert pipeline.unet.config.in_channels == 8
        run = client.get_run(mat.metadata["mlflow_run"].value.rsplit("/", 1)[-1])
        assert run.data.tags["dagster_run_id"] == result.run_id
        assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3]
        model = client.get_logged_model(mat.metadata["mlflow_model_id"].value)
        assert model.tags["checkpoint_path"] == mat.metadata["checkpoint_path"].value

    for name in ("fp", "rp", "test"):
        (mat,) = result.asset_materializations_for_node(f"{name}_manifest" if name != "test" else "test_manifests")
        run = client.get_run(mat.metadata["mlflow_run_id"].value)
        assert run.data.tags["dagster_run_id"] == result.run_id
        assert [d.dataset.name for d in run.inputs.dataset_inputs] == [name]


def test_definitions_load_without_heavy_imports():
    code = "import sys, pipelines.definitions; print(sorted(m for m in ('torch', 'diffusers', 'mlflow', 'h5py', 'cv2') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_graph_shape():
    groups = {}
    for key in defs.resolve_asset_graph().get_all_asset_keys():
        node = defs.resolve_asset_graph().get(key)
        groups.setdefault(node.group_name, []).append(key.to_user_string())
    assert sorted(groups["raw"]) == sorted([f"raw_{n}" for n in EXPECTED_SPLITS] + ["raw_catalog"])
    assert sorted(groups["instructions"]) == ["heldout_instructions", "paraphrase_bank"]
    assert sorted(groups["datasets"]) == ["encoded_pairs", "fp_manifest", "rp_manifest", "test_manifests"]
    assert groups["model"] == ["base_model"]
    assert sorted(groups["train"]) == ["instructcv_fp_checkpoint", "instructcv_rp_checkpoint"]


@pytest.mark.slow
def test_readme_cli_command_runs_the_job(tmp_path):
    """`dagster job execute -m pipelines.definitions -j full_reproduction` from the project root."""
    config = tmp_path / "run.yaml"
    cfg = _run_config(tmp_path / "data")
    cfg["execution"] = {"config": {"multiprocess": {"max_concurrent": 2}}}
    config.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "DAGSTER_HOME": os.environ["DAGSTER_HOME"]}
    dagster = Path(sys.executable).parent / "dagster"
    proc = subprocess.run(
        [str(dagster), "job", "execute", "-m", "pipelines.definitions", "-j", "full_reproduction", "-c", str(config)],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RUN_SUCCESS" in proc.stderr + proc.stdout
    catalog = json.loads((tmp_path / "data" / "mini" / "raw" / "catalog.json").read_text())
    assert {name: c["split_counts"] for name, c in catalog.items()} == EXPECTED_SPLITS
    # the run is recorded in the instance the UI reads (DAGSTER_HOME), not in a temporary one
    instance = dg.DagsterInstance.get()
    assert [r.job_name for r in instance.get_runs()] == ["full_reproduction"]
