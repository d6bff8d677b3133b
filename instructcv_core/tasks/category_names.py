"""Category names as they read in an instruction, where a dataset's own name does not."""

from __future__ import annotations

PROMPT_NAMES = {
    ("voc", "aeroplane"): "aeroplane",
    ("voc", "diningtable"): "dining table",
    ("voc", "pottedplant"): "potted plant",
    ("voc", "tvmonitor"): "tv monitor",
    ("voc", "motorbike"): "motorbike",
}


def prompt_name(dataset: str, name: str) -> str:
    """A category as it reads in an instruction ("tvmonitor" -> "tv monitor", "american_bulldog" -> "american bulldog")."""
    if (dataset, name) in PROMPT_NAMES:
        return PROMPT_NAMES[(dataset, name)]
    return name.strip().replace("_", " ")


__all__ = ["PROMPT_NAMES", "prompt_name"]
