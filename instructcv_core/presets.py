"""The profile presets of every stage's config, and how a stage's config is resolved from them.

Each stage has one config dataclass (``TrainConfig``, ``BaseModelConfig``, ...) whose fields are its
knobs: the default, a help text (``metadata["help"]``, see :func:`knob`) and the validation
(``__post_init__``) live where the knob is declared. What differs between the ``mini`` and the
``paper`` profile lives here, in :data:`PRESETS`, and nowhere else. A stage's config is resolved in
layers, later ones winning (:func:`resolve`)::

    dataclass defaults  <  PRESETS[profile][stage]  <  the named preset  <  overrides (a run config)  <  fixed

(fixed: settings, upstream paths). The named preset exists for configs that declare
``NAMED_PRESETS`` and a ``preset`` field (``SamplerConfig``: ``paper``, ``few``, ``one``): the
``preset`` value that wins over the other layers picks it, so a profile can say ``preset: one`` and
a run config ``preset: few`` with ``steps: 8``.

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
        # The tiny SD-shaped base (its shape: `TinyModelConfig`'s defaults) and a fixed number of
        # optimiser steps fitting its autoencoder on mini-benchmark images.
        "base_model": {"text_encoder": "minilm", "prediction_type": "v_prediction", "zero_terminal_snr": True, "fit_steps": 600, "fit_images": 4000},
        # A fixed step count (never wall clock): the same config and seed give the same checkpoint.
        # Fine-tuning the pretrained mini base at its pretraining peak rate (not above it). 1,080 steps:
        # samples, not updates, move the category swaps (docs/benchmarks.md, "Levers measured after the
        # pretrained base"); on the 2-head base they cost about 4.5 minutes on 2 cores (docs/benchmarks.md,
        # "Time split of the mini job").
        "train": {"max_steps": 1080, "train_batch_size": 32, "learning_rate": 1e-3, "lr_scheduler": "cosine",
                  # the mini sampler takes one step from pure noise at t = 999; on the zero-terminal-SNR
                  # schedule that step regresses the target from the image and the instruction alone,
                  # and the fine-tune trains exactly that step
                  "train_timesteps": (999, 1000),
                  # every 12 steps: a kill loses little mini training (docs/recovery.md)
                  "checkpointing_steps": 12, "mixed_precision": "no", "gradient_checkpointing": False,
                  "cache_latents": True},
        # The FP/RP checkpoint fine-tuned for the one-step sampler (objective onestep, Garcia et al.): 30
        # steps of the latent x0 loss at lr 1e-4, measured against pixel L1/L2, other step counts and
        # rates (docs/benchmarks.md, "One-step fine-tuning": ADE20K-mini mIoU 15.2 -> 20.2, NYUv2 RMSE
        # 1.46 -> 1.29 m with the `one` sampler). No conditioning dropout and no EMA: the one-step model
        # is sampled unguided (one UNet call per query) and 30 steps are too few for an EMA to follow.
        "train_onestep": {"objective": "onestep", "onestep_loss": "latent", "max_steps": 30, "train_batch_size": 32,
                          "learning_rate": 1e-4, "lr_scheduler": "constant", "conditioning_dropout": (0.0, 0.0, 0.0),
                          "use_ema": False, "checkpointing_steps": 12, "mixed_precision": "no",
                          "gradient_checkpointing": False, "cache_latents": True},

        # Box outlines 12 px wide at the original resolution (~170 px mini images): ~4.5 px at 64 px,
        # where the official 4 px (1.5 px) do not survive the tiny autoencoder (round-trip outline IoU 0).
        # The binary cat/dog questions of FP with seeded random colours, as RP's: the official fixed
        # colour triples each occur with one species only, so their answer can be read from the
        # instruction without the image. FP and RP then differ only in their phrasing. (Measured: Pets
        # swaps 10 -> 16 of 20 at 1,080 steps, binary accuracy still at chance; docs/benchmarks.md.)
        "build": {"box_width": 12, "fp_binary_colours": "random"},
        # The `one` sampler preset: one deterministic, unguided denoising step from pure noise (DDIM,
        # trailing spacing: t = 999), i.e.
        # the model's own estimate of the target: evaluating every query of every benchmark (~13,500 for
        # FP, RP and the untrained base) costs minutes on a CPU, where 8 guided Euler-ancestral steps
        # cost 24 UNet passes per query (docs/benchmarks.md, "The mini recipe").
        "sampler": {"preset": "one", "batch_size": 64, "dtype": "float32"},
        # Every test image (at least 50 per benchmark in the mini test splits, so a metric and its
        # 95 % interval mean something) and 50 ADE20K images for Table 3's held-out phrasings.
        "eval": {"max_images": None, "heldout_images": 50},
        # The speed-quality curve on 4 images per in-domain benchmark: the `paper` preset (300 UNet
        # evaluations per query, ~1.7 s per query on 2 cores) for FP only, on the first image of NYUv2
        # alone (one query; on one image of each in-domain benchmark it was 32 queries, 58 s of a 97 s
        # asset, where the asset's goal is <= 90 s); every checkpoint with `one`; the guidance sweep with
        # the one-step sampler (3 UNet evaluations per query).
        "speed_quality": {"grid": ("fp:paper", "fp:few:4", "fp:one", "rp:one", "fp_onestep:one", "rp_onestep:one"),
                          "guidance": ("3.0/1.5", "7.5/1.5"), "guidance_sampler": "one", "guidance_checkpoints": ("fp",),
                          "images": 4, "paper_images": 1, "paper_benchmarks": ("nyuv2",)},
    },
    # Paper: the official recipe (AlaaLab/InstructCV configs/train_rp_model.yaml, scripts/slurm_train).
    "paper": {
        # SD v1.5 is loaded, not built: no knob of the tiny base applies (settings.base_model names it).
        "base_model": {},
        # As the official run: 4,096 samples per optimizer step (128 per GPU x 8 GPUs x 4 accumulated
        # there; here the accumulation follows from the world size, training/recipe.py), AdamW lr 1e-4
        # constant and not rescaled, weight decay 0.01, 20 epochs, fp32, gradient checkpointing, EMA
        # 0.9999, dropout 5/5/5 %, flip. Deviations, each named:
        # - cache_latents: the frozen VAE's posterior (mean, std) is computed once per image and a
        #   latent drawn from it every step: the same distribution as encoding every step, less compute.
        # - the EMA is updated per optimizer step (diffusers), not per micro-batch (Lightning): with 4
        #   micro-batches per step the official horizon is 0.9999**4 per optimizer step.
        # - a checkpoint every 1,000 steps and at the end (official: also every epoch); no validation
        #   pass every 4 epochs; every manifest row is trained on (the official split keeps 10 % out).
        # - an epoch's last, incomplete accumulation is an optimizer step, its loss scaled by 1/accumulation.
        # Option: mixed_precision: bf16 (faster on GPUs with bf16 tensor cores; not the official arithmetic).
        "train": {"num_train_epochs": 20, "max_steps": None, "effective_batch_size": 4096, "train_batch_size": 128,
                  "learning_rate": 1e-4, "lr_scheduler": "constant", "lr_warmup_steps": 0, "adam_weight_decay": 1e-2,
                  "checkpointing_steps": 1000, "mixed_precision": "no", "gradient_checkpointing": True,
                  "use_ema": True, "ema_decay": 0.9999, "cache_latents": True},
        # One-step fine-tuning as Garcia et al. (WACV 2025; diffusion-e2e-ft training/train.py): AdamW lr 3e-5,
        # weight decay 1e-2, gradient norm clipped to 1.0, 100 warm-up steps then exponential decay to 1 % over
        # 20k steps, 32 samples per optimizer step, a loss in pixel space through the frozen decoder, no EMA.
        # Deviations, each named: the loss is a plain L1 on the decoded image for every task (theirs: task
        # losses for depth and normals); the instruction is the prompt (theirs: the empty prompt); no
        # conditioning dropout (the one-step model is sampled unguided); 8 samples per micro-batch at 256 px
        # (theirs: 2 at 768 px), gradient checkpointing for the decoder's backward pass.
        "train_onestep": {"objective": "onestep", "onestep_loss": "pixel_l1", "max_steps": 20000,
                          "num_train_epochs": None, "effective_batch_size": 32, "train_batch_size": 8,
                          "learning_rate": 3e-5, "adam_weight_decay": 1e-2, "max_grad_norm": 1.0,
                          "lr_scheduler": "exponential", "lr_warmup_steps": 100, "conditioning_dropout": (0.0, 0.0, 0.0),
                          "use_ema": False, "checkpointing_steps": 1000, "mixed_precision": "no",
                          "gradient_checkpointing": True, "cache_latents": True},

        "build": {},
        # The official evaluation recipe (100 Euler-ancestral steps, float16 as the official autocast)
        # on every test image, and the paper's 200 ADE20K images for Table 3.
        "sampler": {"preset": "paper", "batch_size": 64, "dtype": "float16"},
        "eval": {"max_images": None, "heldout_images": 200},
        # Every checkpoint under every preset and the guidance sweep of Fig. 3 (paper sampler, FP), on 50
        # images per in-domain benchmark (`SpeedQualityConfig`'s defaults).
        "speed_quality": {},
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
    """``config_cls`` built from its defaults < the profile's preset < the named preset < ``overrides`` < ``fixed``.

    ``overrides`` are the knobs a user set (e.g. ``pipelines.config.run_config_overrides``); ``fixed``
    are values that come from elsewhere (paths, seed, resolution from the settings). The named preset
    (:func:`named_preset`) applies to a ``config_cls`` with ``NAMED_PRESETS``. A key that is not a field
    of ``config_cls`` raises a ValueError naming the key and where it came from; invalid values raise
    from the dataclass's own validation (``__post_init__``), which names the field.
    """
    known = {f.name for f in dataclasses.fields(config_cls)}
    profile_layer, overrides = preset(profile, stage), dict(overrides or {})
    name, named = named_preset(config_cls, {**profile_layer, **overrides, **fixed})
    layers = (("preset " + f"{profile}/{stage}", profile_layer), (f"named preset {name}", named), ("overrides", overrides),
              ("fixed values", fixed))
    values: dict[str, Any] = {}
    for origin, layer in layers:
        unknown = sorted(set(layer) - known)
        if unknown:
            raise ValueError(f"{config_cls.__name__} has no field(s) {', '.join(unknown)} (from the {origin}); "
                             f"known fields: {', '.join(sorted(known))}")
        values.update(layer)
    config = config_cls(**values)
    refuse_nan(config)
    return config


def named_preset(config_cls: type, values: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(name, knobs) of the named preset ``values["preset"]`` picks from ``config_cls.NAMED_PRESETS``;
    ("", {}) when the class has none or no preset is named. An unknown name raises a ValueError naming
    the known ones."""
    presets = getattr(config_cls, "NAMED_PRESETS", None)
    name = values.get("preset") or ""
    if presets is None or not name:
        return "", {}
    if name not in presets:
        raise ValueError(f"{config_cls.__name__}: preset {name!r} unknown; choose one of {', '.join(sorted(presets))} "
                         "(or empty: none)")
    return name, dict(presets[name])


def refuse_nan(config: Any) -> None:
    """Raise a ValueError naming every float knob of ``config`` (nested configs included) that is NaN.

    No knob means anything by NaN, and NaN passes every range check (``nan <= 0`` is False), so a
    NaN learning rate or guidance scale would otherwise reach the training or sampling code.
    """
    bad = _nan_fields(config, "")
    if bad:
        raise ValueError(f"{type(config).__name__}: NaN is not a valid value for {', '.join(bad)}")


def _nan_fields(config: Any, prefix: str) -> list[str]:
    import math

    bad = []
    for f in dataclasses.fields(config):
        value, name = getattr(config, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            bad += _nan_fields(value, f"{name}.")
        elif any(isinstance(v, float) and math.isnan(v) for v in (value if isinstance(value, (list, tuple)) else (value,))):
            bad.append(name)
    return bad
