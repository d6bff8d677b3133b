"""Sharded evaluation (`evaluation.shards`, `assets/evaluate_shards.py`): shards generated apart merge to the
unsharded evaluation bit for bit; Dagster runs two shards at once (multiprocess and Dask executors); the
Kubernetes executor configuration loads."""

import shutil
from pathlib import Path

import pandas as pd
import pytest

from instructcv_core.data.imagestore import ImageStore
from instructcv_core.evaluation.config import EvalConfig
from instructcv_core.evaluation.run import evaluate_benchmark
from instructcv_core.evaluation.shards import generate_shard, shard_journals, shard_range
from instructcv_core.inference.config import SamplerConfig
from eval_fixture import point_checkpoint, write_depth_benchmark

PROJECT_ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_shards_are_contiguous_whole_batches_covering_every_query():
    for queries, batch, shards in ((10, 4, 2), (10, 4, 3), (3, 4, 2), (64, 8, 8), (65, 8, 8)):
        ranges = [shard_range(queries, batch, shards, k) for k in range(shards)]
        assert [i for r in ranges for i in r] == list(range(queries))
        assert all(r.start % batch == 0 for r in ranges)
    with pytest.raises(ValueError, match="outside"):
        shard_range(10, 4, 2, 2)


def _sampler_factory(pipeline_dir, config):
    from instructcv_core.inference.sampler import InstructCVSampler

    calls = []

    def factory():
        calls.append(1)
        return InstructCVSampler.from_pretrained(pipeline_dir, config.sampler)

    return factory, calls


def test_sharded_evaluation_merges_to_the_unsharded_one_bit_for_bit(tiny_pipeline_dir, tmp_path):
    profile = tmp_path / "mini"
    write_depth_benchmark(profile)
    config = EvalConfig(sampler=SamplerConfig(steps=3, resolution=32, batch_size=3), max_images=None)
    datasets, raw = profile / "datasets", profile / "raw"

    def evaluate(out_dir: Path, store: ImageStore, factory):
        return evaluate_benchmark("nyuv2", factory, "ckpt", config, datasets, raw, out_dir, store, log=lambda _: None)

    factory, _ = _sampler_factory(tiny_pipeline_dir, config)
    whole = evaluate(tmp_path / "whole", ImageStore(tmp_path / "whole_outputs"), factory)

    store = ImageStore(tmp_path / "sharded_outputs")
    for k in range(2):  # each shard with its own sampler, as on two machines
        factory, _ = _sampler_factory(tiny_pipeline_dir, config)
        shard = generate_shard("nyuv2", factory, "ckpt", config, datasets, raw, tmp_path / "sharded", store, k, 2,
                               log=lambda _: None)
        assert shard.generated == shard.queries
    assert len(shard_journals(tmp_path / "sharded")) == 2
    factory, calls = _sampler_factory(tiny_pipeline_dir, config)
    merged = evaluate(tmp_path / "sharded", store, factory)
    assert calls == [] and merged.counts["unet_evaluations"] == 0  # the merge generated nothing

    a = pd.read_parquet(tmp_path / "whole" / "queries.parquet")
    b = pd.read_parquet(tmp_path / "sharded" / "queries.parquet")
    assert a["output_digest"].tolist() == b["output_digest"].tolist()  # the same PNG bytes
    assert pd.read_parquet(tmp_path / "whole" / "metrics.parquet").equals(pd.read_parquet(tmp_path / "sharded" / "metrics.parquet"))
    assert whole.metrics == merged.metrics


def _run_sharded(job_fn, executor_config: dict, data_root: Path, instance):
    import dagster as dg

    import sharded_job

    run_config = {"resources": {"settings": {"config": {"data_root": str(data_root), "progress_bars": False}}},
                  "ops": {"eval_shards_fp": {"ops": {"plan_2_shards": {"config": {
                      "steps": 12, "resolution": 32, "batch_size": 2, "max_images": 0}}}}},
                  "execution": {"config": executor_config}}
    result = dg.execute_job(dg.reconstructable(getattr(sharded_job, job_fn)), instance=instance, run_config=run_config,
                            tags={"dagster/partition": "nyuv2"})
    assert result.success
    windows = {}
    for event in instance.all_logs(result.run_id):
        step = event.step_key or ""
        if "generate_shard_fp" in step and event.dagster_event is not None:
            kind = event.dagster_event.event_type_value
            if kind in ("STEP_START", "STEP_SUCCESS"):
                windows.setdefault(step, {})[kind] = event.timestamp
    return result, windows


@pytest.mark.slow  # two executors, each starting step processes that import torch and load a model
@pytest.mark.parametrize("job_fn,executor_config", [
    ("multiprocess_job", {"max_concurrent": 2}),
    ("dask_job", {"cluster": {"local": {"n_workers": 2, "threads_per_worker": 1, "processes": True}}}),
])
def test_dagster_runs_two_shards_at_once_and_merges_them_exactly(job_fn, executor_config, tiny_pipeline_dir, tmp_path,
                                                                  monkeypatch):
    import dagster as dg

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    monkeypatch.setenv("PYTHONPATH", f"{PROJECT_ROOT}:{Path(__file__).parent}")
    # the step processes compute with one thread as this one does (one_torch_thread): the same float sums
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    data_root = tmp_path / "data"
    profile = data_root / "mini"
    write_depth_benchmark(profile)
    with dg.DagsterInstance.get() as instance:  # the test's own DAGSTER_HOME (conftest), the project's dagster.yaml
        point_checkpoint(profile, "fp", tiny_pipeline_dir, instance)
        _, windows = _run_sharded(job_fn, executor_config, data_root, instance)
    assert len(windows) == 2, windows
    (a, b) = windows.values()
    assert a["STEP_START"] < b["STEP_SUCCESS"] and b["STEP_START"] < a["STEP_SUCCESS"], windows  # overlapping
    assert len(shard_journals(profile / "eval" / "fp" / "nyuv2")) == 2

    # the unsharded evaluation of the same checkpoint and config: the same outputs and metrics, bit for bit
    from instructcv_core.inference.sampler import InstructCVSampler

    from assets.evaluate import eval_config
    from assets.evaluate_shards import ShardedEvalConfig
    from pipelines.resources import InstructCVSettings

    config = eval_config(ShardedEvalConfig(steps=12, resolution=32, batch_size=2, max_images=0),
                         InstructCVSettings(data_root=str(data_root)))  # as the shard steps resolved it
    sharded_dir = profile / "eval" / "fp" / "nyuv2"
    identity = __import__("json").loads((sharded_dir / "identity.json").read_text())["checkpoint"]
    evaluate_benchmark("nyuv2", lambda: InstructCVSampler.from_pretrained(tiny_pipeline_dir, config.sampler), identity,
                       config, profile / "datasets", profile / "raw", tmp_path / "whole",
                       ImageStore(tmp_path / "whole_outputs"), log=lambda _: None)
    a = pd.read_parquet(tmp_path / "whole" / "queries.parquet")
    b = pd.read_parquet(sharded_dir / "queries.parquet")
    assert a["output_digest"].tolist() == b["output_digest"].tolist()
    assert pd.read_parquet(tmp_path / "whole" / "metrics.parquet").equals(pd.read_parquet(sharded_dir / "metrics.parquet"))


def test_the_kubernetes_configuration_loads_and_asks_one_gpu_per_shard_step():
    import dagster as dg
    import yaml
    from dagster_k8s.job import get_user_defined_k8s_config

    from assets.evaluate_shards import EVAL_SHARDS
    from pipelines.definitions import defs

    assert EVAL_SHARDS == 8  # the default the configuration is written for
    job = defs.resolve_job_def("sharded_evaluation_k8s")
    assert job.executor_def.name == "k8s"
    run_config = yaml.safe_load((PROJECT_ROOT / "configs" / "k8s.yaml").read_text())
    validated = dg.validate_run_config(job, run_config)  # Dagster's own schema check of the whole run config
    execution = validated["execution"]["k8s"]
    assert execution["max_concurrent"] == 8 and execution["job_image"].endswith("instructcv:latest")
    assert {v["mountPath"] for v in execution["volume_mounts"]} == {"/data"}
    generate_steps = [op for graph in job.graph.node_defs for op in graph.node_defs if op.name.startswith("generate_shard_")]
    assert len(generate_steps) == 2  # one op per variant, aliased once per shard
    for op in generate_steps:
        limits = get_user_defined_k8s_config(op.tags).container_config["resources"]["limits"]
        assert limits == {"nvidia.com/gpu": "1"}
