"""How outputs are generated (:class:`SamplerConfig`) and what is asked (:class:`Request`).

Plain data, no torch: the Dagster definitions and run configs read it without loading a model.
Steps, guidance scales, scheduler and resolution are configuration, so the paper recipe (100
Euler-ancestral steps, s_T 7.5, s_I 1.5, 256²), the guidance sweep of Fig. 3 and the fast settings
are configurations of the same sampler (`instructcv_core.inference.sampler`). Three named presets
(:data:`SAMPLER_PRESETS`) fill the knobs that define a sampling procedure:

* ``paper``: 100 Euler-ancestral steps, s_T 7.5, s_I 1.5, the model's own timestep spacing (the
  official recipe; 300 UNet evaluations per query);
* ``few``: DDIM with trailing spacing (the first step at t = T, as the model was trained), 4 steps by
  default (2..10 allowed), the paper's guidance;
* ``one``: one deterministic DDIM step at t = 999 whose result is the model's own x0 estimate, without
  guidance: one UNet evaluation per query (guidance may be switched on: 3 evaluations).

A preset is applied when a config is resolved, below the knobs set explicitly
(``instructcv_core.presets.resolve``, or :meth:`SamplerConfig.from_preset` in library code); the
fields are then what runs, and :attr:`SamplerConfig.label` names the procedure from the field
values, never from the preset's name, so a label cannot claim a preset whose values were changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

#: Scheduler names of the config -> diffusers class names.
SCHEDULERS = {
    "euler_ancestral": "EulerAncestralDiscreteScheduler",  # the official sampler (k-diffusion euler_ancestral)
    "euler": "EulerDiscreteScheduler",
    "ddim": "DDIMScheduler",
    "dpmsolver++": "DPMSolverMultistepScheduler",
}
#: Timestep spacings of diffusers' schedulers (``timestep_spacing``); "" keeps the model's scheduler config.
TIMESTEP_SPACINGS = ("", "leading", "trailing", "linspace")
#: Model precisions of the config (the sampler maps them to torch dtypes).
DTYPE_NAMES = ("float32", "float16", "bfloat16")
#: The official guidance scales (s_T, s_I).
PAPER_GUIDANCE = (7.5, 1.5)
#: Steps the ``few`` preset allows, and its default.
FEW_STEPS = range(2, 11)
FEW_DEFAULT_STEPS = 4

#: Named sampler presets: the knobs that define each sampling procedure. Resolution, batch size,
#: precision and device are not part of a preset (the profile or the run config sets them).
SAMPLER_PRESETS: dict[str, dict[str, Any]] = {
    # The official recipe: the model's own timestep spacing (SD v1.5: leading), 3-way guidance.
    "paper": {"scheduler": "euler_ancestral", "steps": 100, "timestep_spacing": "",
              "text_guidance": PAPER_GUIDANCE[0], "image_guidance": PAPER_GUIDANCE[1]},
    # A few deterministic DDIM steps whose first runs at t = 999 (trailing spacing; leading spacing
    # would start at a timestep far below the pure noise it is given).
    "few": {"scheduler": "ddim", "steps": FEW_DEFAULT_STEPS, "timestep_spacing": "trailing",
            "text_guidance": PAPER_GUIDANCE[0], "image_guidance": PAPER_GUIDANCE[1]},
    # One deterministic step at t = 999: the output is the x0 the model predicts from pure noise.
    # Unguided (s_T 1): one UNet evaluation per query.
    "one": {"scheduler": "ddim", "steps": 1, "timestep_spacing": "trailing", "text_guidance": 1.0, "image_guidance": 1.0},
}


@dataclass(frozen=True)
class SamplerConfig:
    """How outputs are generated. The defaults are the official evaluation recipe (the ``paper`` preset)."""

    #: The named presets :func:`instructcv_core.presets.resolve` lays between the profile and the run config.
    NAMED_PRESETS: ClassVar[Mapping[str, Mapping[str, Any]]] = SAMPLER_PRESETS

    preset: str = field(default="", metadata={
        "help": "Named sampling procedure: paper (100 Euler-ancestral steps, s_T 7.5, s_I 1.5), few (DDIM, trailing "
                "spacing, 4 steps (2..10), the paper's guidance), one (one deterministic DDIM step at t = 999, the "
                "model's x0 estimate, no guidance: 1 UNet evaluation per query). Knobs set beside it win (e.g. "
                "preset few with steps 8; preset one with text_guidance 7.5 and image_guidance 1.5); empty: no "
                "preset, the knobs as given. Results are labelled from the knobs' values (label)."})
    steps: int = field(default=100, metadata={"help": "Denoising steps (official: 100)."})
    text_guidance: float = field(default=7.5, metadata={"help": "Text guidance scale s_T (official 7.5)."})
    image_guidance: float = field(default=1.5, metadata={"help": "Image guidance scale s_I (official 1.5)."})
    scheduler: str = field(default="euler_ancestral", metadata={
        "help": "euler_ancestral (official) | euler | ddim | dpmsolver++."})
    timestep_spacing: str = field(default="", metadata={
        "help": "Which training timesteps the steps visit: leading | trailing | linspace (diffusers' "
                "`timestep_spacing`); empty: as the model's scheduler config (SD v1.5: leading). With few steps, "
                "trailing starts at the last training timestep (pure noise), as the model was trained."})
    resolution: int = field(default=256, metadata={
        "help": "Square generation resolution, a multiple of 8 (aspect ratio ignored, as the official Resize)."})
    batch_size: int = field(default=16, metadata={
        "help": "Outputs per UNet call (the call itself evaluates 3 guidance branches of each)."})
    dtype: str = field(default="float32", metadata={"help": "float32 | float16 | bfloat16 (official: float16 autocast)."})
    device: str = field(default="auto", metadata={"help": "auto (cuda when available, else cpu), cpu, cuda, cuda:1, ..."})

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler {self.scheduler!r} unknown; choose one of {sorted(SCHEDULERS)}")
        if self.timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"timestep_spacing {self.timestep_spacing!r} unknown; choose one of {TIMESTEP_SPACINGS[1:]} "
                             "(or empty: the model's own)")
        if self.dtype not in DTYPE_NAMES:
            raise ValueError(f"dtype {self.dtype!r} unknown; choose one of {sorted(DTYPE_NAMES)}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1 (got {self.steps}, {self.batch_size})")
        if self.resolution % 8:
            raise ValueError(f"resolution must be a multiple of 8, got {self.resolution}")
        if self.preset and self.preset not in SAMPLER_PRESETS:
            raise ValueError(f"preset {self.preset!r} unknown; choose one of {sorted(SAMPLER_PRESETS)} (or empty: none)")
        if self.preset == "few" and self.steps not in FEW_STEPS:
            raise ValueError(f"preset few takes {FEW_STEPS.start}..{FEW_STEPS.stop - 1} steps, got steps {self.steps}")

    @classmethod
    def from_preset(cls, name: str, **knobs: Any) -> SamplerConfig:
        """The config of preset ``name`` with ``knobs`` set over it (library code; the pipeline
        resolves presets through ``instructcv_core.presets.resolve``)."""
        if name not in SAMPLER_PRESETS:
            raise ValueError(f"preset {name!r} unknown; choose one of {sorted(SAMPLER_PRESETS)}")
        return cls(**{**SAMPLER_PRESETS[name], "preset": name, **knobs})

    def to_dict(self) -> dict:
        return asdict(self)

    def unet_evaluations(self, items: int) -> int:
        """UNet evaluations (one per item, branch and step) to generate ``items`` outputs."""
        return items * self.unet_evals_per_query

    @property
    def unet_evals_per_query(self) -> int:
        """UNet evaluations per output: one per step and guidance branch (3 when guided)."""
        return self.steps * (3 if self.guided else 1)

    @property
    def label(self) -> str:
        """The sampling procedure, named from the field values (never from ``preset``):

        ``paper``; ``few-<steps>`` (DDIM, trailing, 2..10 steps, the paper's guidance); ``one`` (one
        unguided DDIM step, trailing); ``one+cfg(<s_T>/<s_I>)`` (the same step guided); anything else
        ``custom(<scheduler>[ <spacing>], <steps> step(s), <guidance>)``. Resolution, batch size,
        precision and device are not part of it.
        """
        guidance = (self.text_guidance, self.image_guidance)
        ddim_trailing = self.scheduler == "ddim" and self.timestep_spacing == "trailing"
        if (self.scheduler == "euler_ancestral" and self.steps == 100 and not self.timestep_spacing
                and guidance == PAPER_GUIDANCE):
            return "paper"
        if ddim_trailing and self.steps in FEW_STEPS and guidance == PAPER_GUIDANCE:
            return f"few-{self.steps}"
        if ddim_trailing and self.steps == 1:
            return f"one+cfg({self.text_guidance:g}/{self.image_guidance:g})" if self.guided else "one"
        spacing = f" {self.timestep_spacing}" if self.timestep_spacing else ""
        cfg = f"cfg {self.text_guidance:g}/{self.image_guidance:g}" if self.guided else "no guidance"
        return f"custom({self.scheduler}{spacing}, {self.steps} step{'s' if self.steps > 1 else ''}, {cfg})"

    @property
    def guided(self) -> bool:
        # As the stock pipeline: guidance runs when s_T > 1 and s_I >= 1.
        return self.text_guidance > 1.0 and self.image_guidance >= 1.0


@dataclass(frozen=True)
class Request:
    """One output to generate: an image (by key), an instruction and the seed of its noise."""

    image_key: str
    instruction: str
    seed: int


__all__ = ["DTYPE_NAMES", "FEW_STEPS", "PAPER_GUIDANCE", "SAMPLER_PRESETS", "SCHEDULERS", "TIMESTEP_SPACINGS", "Request",
           "SamplerConfig"]
