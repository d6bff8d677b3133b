"""What an evaluation asks and how it decodes the answers (:class:`EvalConfig`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from instructcv_core.inference.config import SamplerConfig

PROTOCOLS = ("paper", "standard")


@dataclass(frozen=True)
class EvalConfig:
    """What an evaluation asks and how it decodes the answers. Everything here is part of its identity."""

    sampler: SamplerConfig = field(default_factory=SamplerConfig, metadata={"help": "How outputs are generated."})
    protocols: tuple[str, ...] = field(default=PROTOCOLS, metadata={"help": "Protocols to score: paper and/or standard."})
    max_images: int | None = field(default=None, metadata={
        "help": "Images per benchmark (0 or None: the whole test split)."})
    heldout_images: int | None = field(default=200, metadata={
        "help": "ADE20K images of the held-out-phrasing evaluation (Table 3; the paper used 200; 0 or None: all)."})
    seed: int = field(default=0, metadata={"help": "Seed of the image subset and of every output's noise."})
    standard_subset: int | None = field(default=None, metadata={
        "help": "Subset mode: the standard protocol asks and scores only this many images of each benchmark, a "
                "seeded subset of the evaluated ones (the paper protocol keeps them all; 0 or None: every image)."})
    standard_classes: str = field(default="split", metadata={
        "help": "Categories the standard protocol asks: those of the test split (split) or the dataset's list (all)."})
    standard_threshold: float = field(default=127.0, metadata={
        "help": "Standard segmentation: channel mean > threshold at ground-truth size."})
    paper_threshold: float = field(default=10.0, metadata={
        "help": "Paper segmentation: blue channel > threshold at generation size (official 10)."})
    positive_colour: str = field(default="red", metadata={
        "help": "Classification questions: the colour meaning 'present' (Show red if ..., otherwise show green)."})
    negative_colour: str = field(default="green", metadata={"help": "Classification questions: the colour meaning 'absent'."})
    sample_rows: int = field(default=6, metadata={"help": "Rows of the sample grid (input | output | prediction | truth)."})
    instructions: str = field(default="as_paper", metadata={
        "help": "How the checkpoints are asked: as_paper (FP and the untrained base: the fixed templates; RP: the "
                "official --rephrase test pool where the task has one, as the paper's Table 1), fp (every checkpoint "
                "the fixed templates) or rp_pool (every checkpoint the pool). Recorded per result and table cell."})
    following_pairs: int = field(default=20, metadata={
        "help": "Instruction-following check: category-swap pairs per benchmark (seeded, on images with two or more categories)."})
    following_images: int = field(default=5, metadata={
        "help": "Instruction-following check: images per benchmark asked all four task words."})

    def __post_init__(self) -> None:
        from instructcv_core.tasks.colours import PALETTE  # the palette, not the tasks: no heavy imports here

        object.__setattr__(self, "protocols", tuple(self.protocols))
        unknown = set(self.protocols) - set(PROTOCOLS)
        if unknown or not self.protocols:
            raise ValueError(f"protocols must be a non-empty subset of {PROTOCOLS}, got {self.protocols}")
        if self.standard_classes not in ("split", "all"):
            raise ValueError(f"standard_classes must be 'split' or 'all', got {self.standard_classes!r}")
        for colour in (self.positive_colour, self.negative_colour):
            if colour not in PALETTE:
                raise ValueError(f"unknown colour {colour!r}; choose from {list(PALETTE)}")
        if self.positive_colour == self.negative_colour:
            raise ValueError("positive_colour and negative_colour must differ")
        if self.instructions not in ("as_paper", "fp", "rp_pool"):
            raise ValueError(f"instructions must be as_paper, fp or rp_pool, got {self.instructions!r}")
        for name in ("sample_rows", "following_pairs", "following_images"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("max_images", "heldout_images", "standard_subset"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0 (0 or None: every image), got {value}")
            if value == 0:  # a run config cannot say None (null means "the preset"): 0 says "every image"
                object.__setattr__(self, name, None)

    def to_dict(self) -> dict:
        return asdict(self)

    def for_checkpoint(self, variant: str) -> "EvalConfig":
        """This config with ``instructions`` resolved for a checkpoint (``fp``, ``rp`` or ``untrained``):
        ``as_paper`` asks RP with the official rephrased test pool and the others with the fixed templates."""
        if self.instructions != "as_paper":
            return self
        return replace(self, instructions="rp_pool" if variant == "rp" else "fp")

    def instruction_mode(self) -> str:
        """``fp`` or ``rp_pool``. The evaluation assets resolve ``as_paper`` per checkpoint
        (:meth:`for_checkpoint`); a library call that names no checkpoint asks the fixed templates."""
        return "fp" if self.instructions == "as_paper" else self.instructions

    def image_limit(self, setting: str) -> int | None:
        """The value of an image-count setting (a benchmark's ``image_limit``: max_images | heldout_images)."""
        return getattr(self, setting)


__all__ = ["PROTOCOLS", "EvalConfig"]
