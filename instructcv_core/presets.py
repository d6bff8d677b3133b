"""The profile presets of every stage's config, and how a stage's config is resolved from them.

Each stage has one config dataclass (``TrainConfig``, ``BaseModelConfig``, ...) whose fields are its
knobs: the default, a help text (``metadata["help"]``, see :func:`knob`) and the validation
(``__post_init__``) live where the knob is declared. What differs between the ``mini`` and the
``paper`` profile lives here, in :data:`PRESETS`, and nowhere else. A stage's config is resolved in
four layers, later ones winning (:func:`resolve`)::

    dataclass defaults  <  PRESETS[profile][stage]  <  overrides (a run config)  <  fixed (settings, upstream paths)

Unknown keys are refused by name at every layer, so a misspelt preset or override cannot be
silently ignored. No Dagster here: the Dagster run-config classes are generated from the same
dataclasses (``pipelines.config``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

#: Per profile, per stage: the values that make the profile what it is.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # Mini: runs end to end in minutes on 2 CPU cores.
    "mini": {
        # The tiny SD-shaped base (its shape: `TinyModelConfig`'s defaults) and the wall-clock
        # budget of fitting its autoencoder on mini-benchmark images.
        "base_model": {"text_encoder": "minilm", "prediction_type": "v_prediction", "fit_seconds": 150.0,
                       "fit_images": 4000},
        # Time-bounded (max_seconds): the step count is a ceiling rarely reached on a CPU.
        "train": {"max_steps": 100_000, "max_seconds": 180.0, "train_batch_size": 32, "learning_rate": 5e-4,
                  # every 12 steps: a kill loses at most ~30 s of mini training (2.3 s/step on 2 cores; docs/recovery.md)
                  "checkpointing_steps": 12, "mixed_precision": "no", "gradient_checkpointing": False,
                  "cache_latents": True},

        # Targets are made the same way in both profiles (`BuildConfig`'s defaults).
        "build": {},
        # Few denoising steps, so evaluating a checkpoint on every benchmark stays within minutes on a CPU.
        "sampler": {"steps": 8, "batch_size": 32, "dtype": "float32"},
        # Every test image (at least 50 per benchmark in the mini test splits, so a metric and its
        # 95 % interval mean something) and 50 ADE20K images for Table 3's held-out phrasings.
        "eval": {"max_images": None, "heldout_images": 50},
    },
    # Paper: the official recipe (lr 1e-4 constant, batch 128 per device, EMA 0.9999; the rest of the
    # recipe is `TrainConfig`'s defaults), bf16 and gradient checkpointing on GPU.
    "paper": {
        # SD v1.5 is loaded, not built: no knob of the tiny base applies (settings.base_model names it).
        "base_model": {},
        "train": {"max_steps": 20_000, "max_seconds": None, "train_batch_size": 128, "learning_rate": 1e-4,
                  "checkpointing_steps": 1000, "mixed_precision": "bf16", "gradient_checkpointing": True,
                  "cache_latents": True},

        "build": {},
        # The official evaluation recipe (100 Euler-ancestral steps, float16 as the official autocast)
        # on every test image, and the paper's 200 ADE20K images for Table 3.
        "sampler": {"steps": 100, "batch_size": 64, "dtype": "float16"},
        "eval": {"max_images": None, "heldout_images": 200},
    },
}

Config = TypeVar("Config")


def knob(default: Any = dataclasses.MISSING, help: str = "", **kwargs) -> Any:  # noqa: A002 (the argparse word)
    """A dataclass field with a help text (``metadata["help"]``), the one description of a knob.

    The help text is what the Dagster run config shows for the knob; ``kwargs`` go to
    :func:`dataclasses.field` (e.g. ``default_factory``).
    """
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def preset(profile: str, stage: str) -> dict[str, Any]:
    """A copy of the preset of ``stage`` under ``profile``; a ValueError names an unknown one."""
    if profile not in PRESETS:
        raise ValueError(f"unknown profile {profile!r}; known profiles: {', '.join(PRESETS)}")
    if stage not in PRESETS[profile]:
        raise ValueError(f"profile {profile!r} has no preset for stage {stage!r}; known stages: {', '.join(PRESETS[profile])}")
    return dict(PRESETS[profile][stage])


def resolve(config_cls: type[Config], profile: str, stage: str, overrides: Mapping[str, Any] | None = None,
            **fixed: Any) -> Config:
    """``config_cls`` built from its defaults < the profile's preset < ``overrides`` < ``fixed``.

    ``overrides`` are the knobs a user set (e.g. ``pipelines.config.run_config_overrides``); ``fixed``
    are values that come from elsewhere (paths, seed, resolution from the settings). A key that is
    not a field of ``config_cls`` raises a ValueError naming the key and where it came from; invalid
    values raise from the dataclass's own validation (``__post_init__``), which names the field.
    """
    known = {f.name for f in dataclasses.fields(config_cls)}
    layers = (("preset " + f"{profile}/{stage}", preset(profile, stage)), ("overrides", dict(overrides or {})),
              ("fixed values", fixed))
    values: dict[str, Any] = {}
    for origin, layer in layers:
        unknown = sorted(set(layer) - known)
        if unknown:
            raise ValueError(f"{config_cls.__name__} has no field(s) {', '.join(unknown)} (from the {origin}); "
                             f"known fields: {', '.join(sorted(known))}")
        values.update(layer)
    return config_cls(**values)
