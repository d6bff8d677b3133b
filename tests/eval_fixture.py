"""A tiny NYUv2-shaped depth benchmark on disk (raw records, depth PNGs, test manifest, image store) and a
checkpoint pointer, laid out as the `mini` profile under a data root: what `load_benchmark` and the
evaluation assets read, without building the whole mini-benchmark."""

import json
from pathlib import Path

import numpy as np
from PIL import Image

from instructcv_core.data.imagestore import ImageStore
from instructcv_core.data.records import ImageRecord, write_records
from instructcv_core.tasks.depth import encode_depth


def write_depth_benchmark(profile_dir: Path, images: int = 10, size=(40, 32)) -> None:
    rng = np.random.default_rng(0)
    raw_root = profile_dir / "raw" / "nyuv2" / "files"
    raw_root.mkdir(parents=True)
    store = ImageStore(profile_dir / "datasets" / "images")
    records, rows = [], []
    for i in range(images):
        image_id = f"nyu{i:03d}"
        depth_mm = rng.integers(500, 9000, (size[1], size[0])).astype(np.uint16)
        Image.fromarray(depth_mm).save(raw_root / f"{image_id}.png")
        rgb = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        records.append(ImageRecord(dataset="nyuv2", image_id=image_id, split="test", image_path=f"{image_id}.jpg",
                                   width=size[0], height=size[1], depth_path=f"{image_id}.png", depth_format="png_uint16_mm"))
        rows.append({"image_id": image_id, "category": None, "input_original_digest": store.put(rgb),
                     "target_original_digest": store.put(encode_depth(depth_mm.astype(np.float32) / 1000))})
    write_records(records, profile_dir / "raw" / "nyuv2" / "records.parquet", raw_root, [])
    (profile_dir / "datasets" / "test").mkdir(parents=True, exist_ok=True)
    import pandas as pd

    pd.DataFrame(rows).to_parquet(profile_dir / "datasets" / "test" / "nyuv2.parquet")


def point_checkpoint(profile_dir: Path, variant: str, pipeline_dir: Path, instance=None) -> None:
    """What a finished training asset leaves: `train/<variant>/current.json` naming the pipeline and, in
    ``instance``, a materialisation of `instructcv_<variant>_checkpoint` whose metadata hands the
    checkpoint to evaluation (`checkpoint_path`, `train_result`)."""
    folder = profile_dir / "train" / variant
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train_result.json").write_text(json.dumps({"pipeline_dir": str(pipeline_dir), "config": {}}))
    (folder / "current.json").write_text(json.dumps({"pipeline_dir": str(pipeline_dir),
                                                     "train_result": str(folder / "train_result.json")}))
    if instance is not None:
        import dagster as dg

        from assets.evaluate import checkpoint_asset_key

        instance.report_runless_asset_event(dg.AssetMaterialization(
            asset_key=checkpoint_asset_key(variant),
            metadata={"checkpoint_path": dg.MetadataValue.path(str(pipeline_dir)),
                      "train_result": dg.MetadataValue.path(str(folder / "train_result.json"))}))
