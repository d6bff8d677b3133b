"""NaN never passes a config: it would slip through every range check (`nan <= 0` is False)."""

import pytest

from instructcv_core.evaluation.config import EvalConfig
from instructcv_core.inference.config import SamplerConfig
from instructcv_core.presets import refuse_nan, resolve
from instructcv_core.training.config import TrainConfig, load_config

FIXED = {"base_model": "b", "manifest": "m.parquet", "image_store": "i", "output_dir": "o"}


def test_nan_learning_rate_passes_the_dataclass_range_check_but_not_resolve():
    TrainConfig(**FIXED, learning_rate=float("nan"))  # the trap: `nan <= 0` is False
    with pytest.raises(ValueError, match="TrainConfig: NaN is not a valid value for learning_rate$"):
        resolve(TrainConfig, "mini", "train", {"learning_rate": float("nan")}, **FIXED)


def test_every_nan_field_is_named_nested_and_in_sequences():
    sampler = SamplerConfig(text_guidance=float("nan"))
    config = EvalConfig(sampler=sampler, standard_threshold=float("nan"))
    with pytest.raises(ValueError, match=r"EvalConfig: NaN is not a valid value for sampler\.text_guidance, standard_threshold$"):
        refuse_nan(config)
    with pytest.raises(ValueError, match="NaN is not a valid value for conditioning_dropout"):
        refuse_nan(TrainConfig(**FIXED, conditioning_dropout=(0.05, float("nan"), 0.05)))
    refuse_nan(TrainConfig(**FIXED))  # finite values (and None) pass


def test_training_process_config_file_with_nan_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("".join(f"{k}: {v}\n" for k, v in FIXED.items()) + "learning_rate: .nan\n")
    with pytest.raises(ValueError, match=rf"{path}: TrainConfig: NaN is not a valid value for learning_rate"):
        load_config(path)
