"""Evaluation takes its checkpoint from the checkpoint asset's materialisation, not from a pointer file."""

from __future__ import annotations

import json

import dagster as dg
import pytest

from assets.evaluate import checkpoint_asset_key, materialised_checkpoint


def _materialise(instance, variant, pipeline_dir, result):
    instance.report_runless_asset_event(dg.AssetMaterialization(
        asset_key=checkpoint_asset_key(variant),
        metadata={"checkpoint_path": dg.MetadataValue.path(str(pipeline_dir)),
                  "train_result": dg.MetadataValue.path(str(result))}))


def test_evaluation_reads_the_latest_checkpoint_materialisation(tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    with pytest.raises(FileNotFoundError, match="instructcv_fp_checkpoint has never been materialised"):
        materialised_checkpoint(instance, "fp")
    runs = []
    for name in ("first", "second"):
        pipeline = tmp_path / name / "pipeline"
        pipeline.mkdir(parents=True)
        result = tmp_path / name / "train_result.json"
        result.write_text(json.dumps({"pipeline_dir": str(pipeline), "steps": len(name)}))
        runs.append((pipeline, result))
        _materialise(instance, "fp", pipeline, result)
    # a stale pointer file next to the checkpoints changes nothing
    (tmp_path / "current.json").write_text(json.dumps({"pipeline_dir": str(runs[0][0])}))
    checkpoint = materialised_checkpoint(instance, "fp")
    assert checkpoint["pipeline_dir"] == str(runs[1][0])
    assert checkpoint["identity"].startswith(f"{runs[1][0]}@") and checkpoint["asset"] == "instructcv_fp_checkpoint"
    # the RP asset has its own materialisations
    with pytest.raises(FileNotFoundError, match="instructcv_rp_checkpoint"):
        materialised_checkpoint(instance, "rp")
    # a recorded checkpoint that has since been deleted is an error naming it, not a silent fallback
    runs[1][1].unlink()
    with pytest.raises(FileNotFoundError, match="train_result.json: recorded by the latest materialisation"):
        materialised_checkpoint(instance, "fp")


def test_a_materialisation_without_the_location_is_refused():
    instance = dg.DagsterInstance.ephemeral()
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=checkpoint_asset_key("rp"), metadata={"steps": 3}))
    with pytest.raises(ValueError, match="checkpoint_path, train_result"):
        materialised_checkpoint(instance, "rp")
