"""How visual targets are made (:class:`BuildConfig`): plain data, read by the Dagster run config too."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class BuildConfig:
    """How targets are made. Everything here changes the pairs, so it is part of their identity."""

    resolution: int = field(default=256, metadata={"help": "Square training resolution of inputs and targets (pixels)."})
    seed: int = field(default=0, metadata={"help": "Seed of the classification colours and negatives."})
    box_colour: str = field(default="blue", metadata={
        "help": "Detection box colour, a palette name (official COCO targets: blue; the paper text says red)."})
    box_width: int = field(default=4, metadata={
        "help": "Detection box outline width in pixels, drawn at the original resolution."})
    include_crowd: bool = field(default=False, metadata={"help": "Draw COCO crowd boxes in detection targets."})
    pets_variants: tuple[str, ...] = field(default=("binary", "breeds"), metadata={
        "help": "Oxford-IIIT Pet classification variants: binary (cat/dog) and/or breeds (37)."})
    classification_negatives: int = field(default=1, metadata={
        "help": "Negative questions per image for the multi-class variants."})
    fp_binary_colours: str = field(default="official", metadata={
        "help": "Colours of the FP manifest's binary cat/dog questions: `official` (the official FP builder's "
                "fixed colour triples, each of which occurs with one species only, so the answer can be read from "
                "the instruction without the image) or `random` (seeded random colour pairs, the RP builder's "
                "questions: the FP and RP manifests then differ only in their phrasing)."})

    def __post_init__(self) -> None:
        from instructcv_core.tasks.colours import PALETTE

        object.__setattr__(self, "pets_variants", tuple(self.pets_variants))
        if self.box_colour not in PALETTE:
            raise ValueError(f"box_colour {self.box_colour!r} is not a palette colour ({', '.join(PALETTE)})")
        unknown = set(self.pets_variants) - {"binary", "breeds"}
        if unknown:
            raise ValueError(f"pets_variants: unknown variant(s) {sorted(unknown)} (known: binary, breeds)")
        if self.fp_binary_colours not in ("official", "random"):
            raise ValueError(f"fp_binary_colours must be 'official' or 'random', got {self.fp_binary_colours!r}")
        if self.resolution < 8 or self.box_width < 1 or self.classification_negatives < 0:
            raise ValueError(f"resolution must be >= 8, box_width >= 1 and classification_negatives >= 0 "
                             f"(got {self.resolution}, {self.box_width}, {self.classification_negatives})")


__all__ = ["BuildConfig"]
