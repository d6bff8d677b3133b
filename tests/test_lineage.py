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


def test_tables_read_the_results_folder_their_upstream_recorded_and_the_raw_status(tmp_path):
    from assets.evaluate import asset_key, raw_statuses, upstream_results_dir

    instance = dg.DagsterInstance.ephemeral()
    assert upstream_results_dir(instance, "nyuv2", "fp") is None
    for folder in ("old", "new"):
        instance.report_runless_asset_event(dg.AssetMaterialization(
            asset_key=asset_key("nyuv2", "fp"), metadata={"results_dir": dg.MetadataValue.path(str(tmp_path / folder))}))
    assert upstream_results_dir(instance, "nyuv2", "fp") == tmp_path / "new"
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=asset_key("coco", "rp"), metadata={"images": 3}))
    with pytest.raises(ValueError, match="eval_coco_rp.*no results_dir"):
        upstream_results_dir(instance, "coco", "rp")
    status = "INCOMPLETE: sync.zip unavailable (HTTP 404): depth training falls from about 24,000 frames to 795"
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=dg.AssetKey("raw_nyuv2"), metadata={"status": status}))
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=dg.AssetKey("raw_coco"), metadata={"status": "complete"}))
    assert raw_statuses(instance) == {"raw_nyuv2": status, "raw_coco": "complete"}
