"""One config per stage: profile presets, run-config classes generated from the dataclasses, resolution."""

import dataclasses
import math

import dagster as dg
import pytest

from instructcv_core.model.config import BaseModelConfig, TinyModelConfig
from instructcv_core.presets import PRESETS, preset, resolve
from instructcv_core.training.config import TrainConfig
from pipelines.config import run_config_class, run_config_overrides

FIXED = {"base_model": "b", "manifest": "m.parquet", "image_store": "i", "output_dir": "o"}
#: The mini recipe (docs/benchmarks.md, "The mini recipe": each value's measured effect).
MINI_TRAIN = {"max_steps": 1080, "train_batch_size": 32, "learning_rate": 1e-3, "lr_scheduler": "cosine",
              "train_timesteps": (999, 1000),
              "checkpointing_steps": 12, "mixed_precision": "no", "gradient_checkpointing": False, "cache_latents": True}
MINI_BASE = {"text_encoder": "minilm", "prediction_type": "v_prediction", "zero_terminal_snr": True, "fit_steps": 600,
             "fit_images": 4000}


def _resolved_in_a_run(config_cls, run_config: dict, core_cls=TrainConfig, stage="train", profile="mini", **fixed):
    """Materialise an asset taking ``config_cls`` with ``run_config``; return what it resolves."""
    seen = {}

    @dg.asset
    def probe(config: config_cls):
        seen["overrides"] = run_config_overrides(config)
        seen["config"] = resolve(core_cls, profile, stage, seen["overrides"], **fixed)

    dg.materialize([probe], run_config={"ops": {"probe": {"config": run_config}}})
    return seen


# ------------------------------------------------------------------------------------------------
# Presets and resolution


def test_presets_hold_the_profile_defaults():
    assert preset("mini", "train") == MINI_TRAIN
    assert preset("paper", "train") == {"num_train_epochs": 20, "max_steps": None, "effective_batch_size": 4096,
                                        "train_batch_size": 128, "learning_rate": 1e-4, "lr_scheduler": "constant",
                                        "lr_warmup_steps": 0, "adam_weight_decay": 1e-2, "checkpointing_steps": 1000,
                                        "mixed_precision": "no", "gradient_checkpointing": True, "use_ema": True,
                                        "ema_decay": 0.9999, "cache_latents": True}
    assert preset("mini", "base_model") == MINI_BASE
    preset("mini", "train")["max_steps"] = 1  # a copy: the table is not changed through it
    assert PRESETS["mini"]["train"]["max_steps"] == MINI_TRAIN["max_steps"]
    # fixed step counts only: no wall-clock knob in any preset
    assert not any("seconds" in key for stages in PRESETS.values() for values in stages.values() for key in values)


def test_every_preset_resolves_to_a_valid_config():
    stages = {"train": (TrainConfig, FIXED), "base_model": (BaseModelConfig, {})}
    for profile in PRESETS:
        for stage, (cls, fixed) in stages.items():
            assert isinstance(resolve(cls, profile, stage, **fixed), cls)


def test_unknown_profile_or_stage_is_named():
    with pytest.raises(ValueError, match="unknown profile 'mni'.*mini, paper"):
        preset("mni", "train")
    with pytest.raises(ValueError, match="no preset for stage 'trian'"):
        preset("mini", "trian")


def test_resolve_layers_defaults_preset_overrides_fixed():
    config = resolve(TrainConfig, "mini", "train", {"learning_rate": 1e-3, "ema_decay": 0.99}, **FIXED, seed=5)
    assert config.learning_rate == 1e-3 and config.ema_decay == 0.99  # overrides
    assert config.train_batch_size == MINI_TRAIN["train_batch_size"] and config.max_steps == MINI_TRAIN["max_steps"]  # preset
    assert config.adam_weight_decay == 1e-2 and config.conditioning_dropout == (0.05, 0.05, 0.05)  # defaults
    assert config.seed == 5 and config.base_model == "b"  # fixed
    # fixed wins over an override of the same field
    assert resolve(TrainConfig, "mini", "train", {"seed": 1}, **{**FIXED, "seed": 2}).seed == 2


def test_resolve_refuses_unknown_keys_by_name_and_validates_where_declared():
    with pytest.raises(ValueError, match=r"TrainConfig has no field\(s\) learning_rat \(from the overrides\)"):
        resolve(TrainConfig, "mini", "train", {"learning_rat": 1e-3}, **FIXED)
    with pytest.raises(ValueError, match="ema_decay must be in"):
        resolve(TrainConfig, "mini", "train", {"ema_decay": 1.5}, **FIXED)
    with pytest.raises(ValueError, match="fit_images must be >= 1"):
        resolve(BaseModelConfig, "mini", "base_model", {"fit_images": 0})


def test_explicit_none_values_are_normalised():
    config = TrainConfig(**FIXED, max_grad_norm=math.inf, checkpoints_total_limit=0)
    assert config.max_grad_norm is None and config.checkpoints_total_limit is None


def test_base_model_stamp_of_the_mini_defaults():
    config = resolve(BaseModelConfig, "mini", "base_model", image_size=64, seed=0)
    assert config.tiny() == TinyModelConfig(zero_terminal_snr=True)
    tiny = {"image_size": 64, "vae_block_out_channels": [8, 16, 32], "vae_layers_per_block": 1, "latent_channels": 4,
            "unet_block_out_channels": [32, 64], "layers_per_block": 1, "attention_head_dim": 2,
            "text_encoder": "minilm", "prediction_type": "v_prediction", "zero_terminal_snr": True, "seed": 0}
    assert config.pretrained and not config.rebuild
    assert config.stamp("d") == {"tiny": tiny, "pretrained": "d", "rebuild": False}
    scratch = resolve(BaseModelConfig, "mini", "base_model", {"pretrained": False}, image_size=64, seed=0)
    assert scratch.stamp("d") == {"tiny": tiny, "fit_steps": MINI_BASE["fit_steps"], "fit_images": 4000, "manifest_digests": "d"}
    with pytest.raises(ValueError, match="rebuild: true pretrains the mini base; it needs pretrained: true"):
        resolve(BaseModelConfig, "mini", "base_model", {"pretrained": False, "rebuild": True}, image_size=64, seed=0)


# ------------------------------------------------------------------------------------------------
# Generated run-config classes


def test_generated_class_has_every_knob_optional_with_its_help():
    from assets.train import FIXED_FIELDS, TrainAssetConfig

    knobs = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in FIXED_FIELDS]
    deployment = ["num_processes", "num_machines", "machine_rank", "main_process_ip"]
    assert sorted(TrainAssetConfig.model_fields) == sorted(knobs + deployment)
    for name in ("conditioning_dropout", "adam_weight_decay", "lr_scheduler", "lr_warmup_steps", "random_flip",
                 "use_ema", "ema_decay", "max_grad_norm", "prediction_type", "learning_rate"):
        field = TrainAssetConfig.model_fields[name]
        help_text = dict((f.name, f.metadata["help"]) for f in dataclasses.fields(TrainConfig))[name]
        assert field.default is None and field.description.startswith(help_text), name


def test_generated_class_refuses_a_field_without_help():
    @dataclasses.dataclass
    class Bare:
        x: int = 1

    with pytest.raises(ValueError, match=r"Bare\.x has no metadata\['help'\]"):
        run_config_class(Bare, "BareConfig")


def test_a_run_config_overrides_the_preset_and_null_means_the_preset():
    from assets.train import TrainAssetConfig

    seen = _resolved_in_a_run(TrainAssetConfig, {"learning_rate": 2e-3, "conditioning_dropout": [0.1, 0.0, 0.1],
                                                 "lr_scheduler": "cosine", "random_flip": False, "max_steps": None,
                                                 "max_grad_norm": math.inf, "num_processes": 2}, **FIXED)
    assert seen["overrides"] == {"learning_rate": 2e-3, "conditioning_dropout": [0.1, 0.0, 0.1], "lr_scheduler": "cosine",
                                 "random_flip": False, "max_grad_norm": math.inf}
    config = seen["config"]
    assert config.learning_rate == 2e-3 and config.conditioning_dropout == (0.1, 0.0, 0.1)
    assert config.lr_scheduler == "cosine" and config.random_flip is False and config.max_grad_norm is None
    assert config.max_steps == MINI_TRAIN["max_steps"]  # null: the mini preset


def test_a_bad_run_config_value_fails_naming_the_field():
    from assets.train import TrainAssetConfig

    with pytest.raises(dg.DagsterInvalidConfigError, match=r"mixed_precision.*fp8"):
        _resolved_in_a_run(TrainAssetConfig, {"mixed_precision": "fp8"}, **FIXED)
    with pytest.raises(dg.DagsterInvalidConfigError, match="learning_rat"):
        _resolved_in_a_run(TrainAssetConfig, {"learning_rat": 1e-3}, **FIXED)
    with pytest.raises(ValueError, match="conditioning_dropout must be 3 probabilities"):
        _resolved_in_a_run(TrainAssetConfig, {"conditioning_dropout": [0.5, 0.5, 0.5]}, **FIXED)


def test_base_model_run_config_sets_the_tiny_model_and_the_fit():
    from assets.model import BaseModelAssetConfig

    assert "image_size" not in BaseModelAssetConfig.model_fields and "seed" not in BaseModelAssetConfig.model_fields
    seen = _resolved_in_a_run(BaseModelAssetConfig, {"fit_steps": 30, "text_encoder": "clip",
                                                     "unet_block_out_channels": [32, 64]},
                              core_cls=BaseModelConfig, stage="base_model", image_size=64, seed=0)
    assert seen["config"].fit_steps == 30 and seen["config"].text_encoder == "clip"
    assert seen["config"].tiny().unet_block_out_channels == (32, 64) and seen["config"].fit_images == 4000


def test_definitions_load_and_accept_recipe_knobs():
    from pipelines.definitions import defs
    from pipelines.jobs import load_run_config
    from pipelines.project import CONFIG_DIR

    job = defs.resolve_job_def("full_reproduction")
    config = load_run_config(CONFIG_DIR / "mini.yaml")
    config["ops"]["instructcv_fp_checkpoint"] = {"config": {
        "conditioning_dropout": [0.1, 0.0, 0.1], "adam_weight_decay": 0.0, "lr_scheduler": "constant_with_warmup",
        "lr_warmup_steps": 10, "random_flip": False, "use_ema": False, "max_steps": 50, "num_processes": 1}}
    config["ops"]["base_model"] = {"config": {"fit_steps": 30, "prediction_type": "epsilon"}}
    assert dg.validate_run_config(job, config) is not None
    config["ops"]["instructcv_fp_checkpoint"]["config"]["lr_scheduler"] = "piecewise_constant"
    with pytest.raises(dg.DagsterInvalidConfigError, match="lr_scheduler"):
        dg.validate_run_config(job, config)
