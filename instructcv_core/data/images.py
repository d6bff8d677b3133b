"""The one way the project opens an image file: a pixel cap, an explicit mode policy, a reason on refusal.

Every dataset reader (the image check of `datasets.base`, label masks, depth PNGs) and the pair
builder open files through this module, so that one bad file gets the same answer everywhere:
`ImageRefused`, whose ``reason`` says why in words that go into a quarantine report.

Pixel cap: `MAX_PIXELS` (50 megapixels; 150 MB as 8-bit RGB). The size is read from the file's
header and checked *before* anything is decoded, so a small file that claims a huge canvas (a
120-megapixel 1-bit PNG is a few kilobytes) is refused without allocating its pixels. The largest
image of the source datasets is far below it (ImageNet's largest are about 12 megapixels).

Mode policy of `read_rgb` (what a *photograph* becomes; the result is always uint8 (H, W, 3)):

- ``RGB``: as stored. ``L`` (8-bit grey) and ``1`` (1-bit): the grey value in all three channels.
- 16-bit grey (``I;16``, ``I;16B``, ``I;16L``, and ``I`` holding 0..65535): scaled to 8 bits
  (``round(v * 255 / 65535)``), never clipped at 255 (which would turn most of the picture white).
  The conversion loses precision, so the dataset readers report every such image (`is_sixteen_bit`;
  a ``sixteen_bit_to_rgb`` warning of the raw stage).
- ``P`` (palette): looked up through its palette.
- Alpha (``RGBA``, ``LA``, ``PA``): the alpha channel is dropped and the colour kept as stored,
  as every training loader of the field does (``convert("RGB")``); no compositing.
- ``CMYK`` and ``YCbCr``: converted by Pillow's formulas (no ICC colour management).
- Any other mode (floating point ``F``, ``I`` beyond 16 bits, ``LAB``, ``HSV``, ...) is refused.
- EXIF orientation is *ignored*: pixels are used as stored, because the datasets' labels (boxes,
  masks, depth) index the stored pixel grid, not the rotated view an image viewer shows.
- Multi-frame files (GIF, TIFF): the first frame.

Label files are not photographs: `read_label` returns the stored indices of a single-channel file
(palette indices are never looked up), `read_grey` the 8-bit grey view of a mask, and
`read_uint16` the raw values of a 16-bit depth PNG.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

MAX_PIXELS = 50_000_000
SIXTEEN_BIT_GREY = ("I;16", "I;16B", "I;16L")
_CONVERTED_TO_RGB = ("1", "L", "P", "RGBA", "LA", "PA", "RGBX", "CMYK", "YCbCr")


class ImageRefused(ValueError):
    """An image file that cannot be used; ``reason`` is the words a quarantine entry records."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")


@contextmanager
def open_image(path: Path, *, max_pixels: int = MAX_PIXELS, decode: bool = True) -> Iterator[Image.Image]:
    """The decoded Pillow image of ``path`` (fully loaded), after the pixel cap is checked.

    Raises `ImageRefused` for a missing file, a file Pillow cannot decode (truncated data
    included: the whole image is decoded, not only its header) or one above ``max_pixels``.
    ``decode=False`` reads the header only (size and mode), for a cheap size comparison.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():  # Pillow's own bomb warning: our cap, lower, decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except FileNotFoundError:
        raise ImageRefused(path, "file not found") from None
    except Image.DecompressionBombError as exc:
        raise ImageRefused(path, f"exceeds the cap of {max_pixels:,} pixels ({exc})") from None
    except Exception as exc:  # Pillow raises many types for bad data; every one means "unusable"
        raise ImageRefused(path, f"undecodable image ({type(exc).__name__}: {exc})") from None
    with im:
        width, height = im.size
        if width * height > max_pixels:
            raise ImageRefused(
                path, f"{width}x{height} = {width * height:,} pixels exceeds the cap of {max_pixels:,}"
            )
        if width < 1 or height < 1:
            raise ImageRefused(path, f"empty image ({width}x{height})")
        try:
            if decode:
                im.load()
        except Exception as exc:
            raise ImageRefused(path, f"undecodable image ({type(exc).__name__}: {exc})") from None
        yield im


def header_size(path: Path, *, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding the pixels (cap checked)."""
    with open_image(path, max_pixels=max_pixels, decode=False) as im:
        return im.size


def image_size(path: Path, *, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(width, height) of a photograph `read_rgb` would accept: decoded in full, mode checked."""
    return image_size_and_mode(path, max_pixels=max_pixels)[0]


def image_size_and_mode(path: Path, *, max_pixels: int = MAX_PIXELS) -> tuple[tuple[int, int], str]:
    """(width, height) and stored Pillow mode of a photograph `read_rgb` would accept (see `image_size`)."""
    with open_image(path, max_pixels=max_pixels) as im:
        _rgb_problem(im, path)
        return im.size, im.mode


def is_sixteen_bit(mode: str) -> bool:
    """Whether `read_rgb` scales a photograph of this (accepted) mode down from 16 bits to 8."""
    return mode in SIXTEEN_BIT_GREY or mode == "I"


def read_rgb(path: Path, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A photograph as uint8 (H, W, 3), under the module's mode policy; `ImageRefused` otherwise."""
    with open_image(path, max_pixels=max_pixels) as im:
        _rgb_problem(im, path)
        if im.mode == "RGB":
            return np.asarray(im)
        if im.mode in _CONVERTED_TO_RGB:
            return np.asarray(im.convert("RGB"))
        grey = _sixteen_bit(im, path)
        scaled = np.rint(grey.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
        return np.repeat(scaled[..., None], 3, axis=2)


def read_label(path: Path, modes: tuple[str, ...] = ("L", "P"), *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """The stored values of a single-channel label file as uint8 (H, W); palettes are not applied.

    A file in a mode outside ``modes`` is refused: converting an RGB label to grey would invent
    class indices.
    """
    with open_image(path, max_pixels=max_pixels) as im:
        if im.mode not in modes:
            raise ImageRefused(path, f"expected a single-channel label image ({' or '.join(modes)}), got mode {im.mode}")
        return np.asarray(im)


def read_grey(path: Path, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A mask as 8-bit grey (H, W) uint8: colour masks are converted with the ITU-R 601 luma formula."""
    with open_image(path, max_pixels=max_pixels) as im:
        if im.mode == "L":
            return np.asarray(im)
        if im.mode in _CONVERTED_TO_RGB or im.mode == "RGB":
            return np.asarray(im.convert("L"))
        raise ImageRefused(path, f"a mask must be 8-bit (grey, palette or colour), got mode {im.mode}")


def read_uint16(path: Path, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """The raw values of a single-channel 16-bit PNG (depth) as uint16 (H, W)."""
    with open_image(path, max_pixels=max_pixels) as im:
        if im.mode not in SIXTEEN_BIT_GREY and im.mode != "I":
            raise ImageRefused(path, f"expected a single-channel 16-bit PNG, got mode {im.mode}")
        return _sixteen_bit(im, path)


def _rgb_problem(im: Image.Image, path: Path) -> None:
    if im.mode == "RGB" or im.mode in _CONVERTED_TO_RGB or im.mode in SIXTEEN_BIT_GREY:
        return
    if im.mode == "I":
        _sixteen_bit(im, path)  # accepted only when its values fit in 16 bits
        return
    raise ImageRefused(path, f"unsupported image mode {im.mode} (expected 8-bit colour, grey or palette, or 16-bit grey)")


def _sixteen_bit(im: Image.Image, path: Path) -> np.ndarray:
    values = np.asarray(im)
    if values.dtype == np.uint16 or values.dtype == np.dtype(">u2"):
        return values.astype(np.uint16)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ImageRefused(path, f"mode {im.mode} holds values {int(values.min())}..{int(values.max())}, outside 16 bits")
    return values.astype(np.uint16)
