"""How outputs are generated (:class:`SamplerConfig`) and what is asked (:class:`Request`).

Plain data, no torch: the Dagster definitions and run configs read it without loading a model.
Steps, guidance scales, scheduler and resolution are configuration, so the paper recipe (100
Euler-ancestral steps, s_T 7.5, s_I 1.5, 256²), the guidance sweep of Fig. 3 and a fast few-step
setting are configurations of the same sampler (`instructcv_core.inference.sampler`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

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


@dataclass(frozen=True)
class SamplerConfig:
    """How outputs are generated. The defaults are the official evaluation recipe."""

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

    def to_dict(self) -> dict:
        return asdict(self)

    def unet_evaluations(self, items: int) -> int:
        """UNet evaluations (one per item, branch and step) to generate ``items`` outputs."""
        return items * self.steps * (3 if self.guided else 1)

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


__all__ = ["DTYPE_NAMES", "SCHEDULERS", "TIMESTEP_SPACINGS", "Request", "SamplerConfig"]
