"""The named colours of InstructCV's targets: the official palette, colour parsing, colour pairs.

Colours are ``(r, g, b)`` tuples of ints in 0..255, or a name of :data:`PALETTE`. Detection outlines
and classification blocks are drawn in these colours, and classification instructions name them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from instructcv_core.tasks.arrays import check_image

#: The 16 named colours of the official classification builder (``proc_oxford_pets_binary_ifelse``),
#: in its order. Names are lower case with spaces, as they appear in instructions
#: (the official dict spells some ``Brown``, ``RosyBrown``; its orange is (255, 128, 0), not CSS's).
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "purple": (128, 0, 128),
    "white": (255, 255, 255),
    "brown": (165, 42, 42),
    "gold": (255, 215, 0),
    "beige": (245, 245, 220),
    "violet": (238, 130, 238),
    "orange": (255, 128, 0),
    "maroon": (128, 0, 0),
    "indigo": (75, 0, 130),
    "aqua": (0, 255, 255),
    "coral": (255, 127, 80),
    "rosy brown": (188, 143, 143),
    "peru": (205, 133, 63),
}

#: Named colours outside the palette that the official FP builder uses ("otherwise show black").
#: They are never drawn at random (``draw_colour_pair`` keeps to :data:`PALETTE`).
FIXED_COLOURS: dict[str, tuple[int, int, int]] = {"black": (0, 0, 0)}

Colour = tuple[int, int, int] | str


def rgb(colour: Colour) -> tuple[int, int, int]:
    """A colour as an (r, g, b) tuple of ints in 0..255; names are looked up in PALETTE."""
    if isinstance(colour, str):
        name = colour.strip().lower()
        if name in PALETTE or name in FIXED_COLOURS:
            return PALETTE.get(name) or FIXED_COLOURS[name]
        raise ValueError(f"unknown colour name {colour!r}; known: {list(PALETTE) + list(FIXED_COLOURS)}")
    values = tuple(int(c) for c in colour)
    if len(values) != 3 or any(not 0 <= c <= 255 for c in values):
        raise ValueError(f"colour must be three ints in 0..255, got {colour!r}")
    return values  # type: ignore[return-value]


def mean_rgb(image: np.ndarray) -> np.ndarray:
    """The mean (r, g, b) of a uint8 RGB image over all its pixels, float64."""
    image = check_image(image)
    return image.reshape(-1, 3).astype(np.float64).mean(axis=0)


def draw_colour_pair(
    rng: np.random.Generator, palette: Mapping[str, object] | Sequence[str] = PALETTE
) -> tuple[str, str]:
    """Two distinct colour names ``(positive, negative)`` from ``palette``, uniform over the
    ``n * (n - 1)`` ordered pairs (n = 16 for :data:`PALETTE`: 240 pairs).

    Draws ``i ~ U{0..n-1}`` then ``j ~ U{0..n-2}``, shifting ``j`` up by one when ``j >= i``;
    deterministic for a given generator state. (The official builder drew two distinct names
    with Python's ``random``; its sequence is not reproduced.)
    """
    names = list(palette)
    n = len(names)
    if n < 2:
        raise ValueError("palette needs at least two colours")
    i = int(rng.integers(n))
    j = int(rng.integers(n - 1))
    if j >= i:
        j += 1
    return names[i], names[j]


__all__ = ["FIXED_COLOURS", "PALETTE", "Colour", "draw_colour_pair", "mean_rgb", "rgb"]
