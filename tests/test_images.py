"""`instructcv_core.data.images`: the pixel cap, the mode policy, and a reason on every refusal."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instructcv_core.data.datasets.base import check_image
from instructcv_core.data.images import MAX_PIXELS, ImageRefused, image_size, read_grey, read_label, read_rgb, read_uint16


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A tiny 1-bit PNG whose header claims ``width`` x ``height`` (the pixel data is a stub)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))
    return path


def test_huge_canvas_is_refused_from_its_header(tmp_path):
    path = png_claiming(tmp_path / "bomb.png", 12_000, 10_000)  # 120 megapixels in 80 bytes
    assert path.stat().st_size < 100
    with pytest.raises(ImageRefused, match=f"12000x10000 = 120,000,000 pixels exceeds the cap of {MAX_PIXELS:,}"):
        read_rgb(path)
    assert check_image(path) == f"12000x10000 = 120,000,000 pixels exceeds the cap of {MAX_PIXELS:,}"


def test_cap_is_a_parameter(tmp_path):
    Image.new("RGB", (20, 10)).save(tmp_path / "a.png")
    assert image_size(tmp_path / "a.png", max_pixels=200) == (20, 10)
    with pytest.raises(ImageRefused, match="200 pixels exceeds the cap of 199"):
        image_size(tmp_path / "a.png", max_pixels=199)


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32768, 65535]], np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    rgb = read_rgb(tmp_path / "g16.png")
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 4, 3)
    assert rgb[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (rgb[..., 0] == rgb[..., 2]).all()


def test_palette_is_looked_up_and_alpha_dropped(tmp_path):
    pal = Image.new("P", (2, 1))
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.putdata([0, 1])
    pal.save(tmp_path / "p.png")
    assert read_rgb(tmp_path / "p.png").tolist() == [[[10, 20, 30], [200, 100, 50]]]
    Image.new("RGBA", (1, 1), (9, 8, 7, 0)).save(tmp_path / "a.png")
    assert read_rgb(tmp_path / "a.png").tolist() == [[[9, 8, 7]]]


def test_cmyk_is_converted(tmp_path):
    Image.new("CMYK", (1, 1), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=100)
    (r, g, b), = read_rgb(tmp_path / "c.jpg")[0]
    assert r > 240 and g < 15 and b < 15


def test_float_image_is_refused_with_its_mode(tmp_path):
    Image.fromarray(np.zeros((2, 2), np.float32)).save(tmp_path / "f.tiff")
    with pytest.raises(ImageRefused, match="unsupported image mode F"):
        read_rgb(tmp_path / "f.tiff")
    assert check_image(tmp_path / "f.tiff").startswith("unsupported image mode F")


def test_exif_orientation_is_ignored(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.new("RGB", (30, 10)).save(tmp_path / "o.jpg", exif=exif)
    assert read_rgb(tmp_path / "o.jpg").shape == (10, 30, 3)  # stored grid, as the labels index it
    assert image_size(tmp_path / "o.jpg") == (30, 10)


def test_missing_and_truncated_files_have_reasons(tmp_path):
    assert check_image(tmp_path / "none.jpg") == "file not found"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    assert check_image(tmp_path / "t.png").startswith("undecodable image (")


def test_label_readers_never_convert_silently(tmp_path):
    Image.new("RGB", (2, 2)).save(tmp_path / "rgb.png")
    with pytest.raises(ImageRefused, match=r"expected a single-channel label image \(L or P\), got mode RGB"):
        read_label(tmp_path / "rgb.png")
    assert read_grey(tmp_path / "rgb.png").shape == (2, 2)
    Image.fromarray(np.array([[1000]], np.uint16)).save(tmp_path / "d.png")
    assert read_uint16(tmp_path / "d.png").tolist() == [[1000]]
    with pytest.raises(ImageRefused, match="expected a single-channel 16-bit PNG, got mode RGB"):
        read_uint16(tmp_path / "rgb.png")


def test_canvas_past_pillows_own_limit_is_refused_with_the_cap(tmp_path):
    path = png_claiming(tmp_path / "bigger.png", 20_000, 10_000)  # Pillow itself raises above 179 MP
    assert check_image(path).startswith(f"exceeds the cap of {MAX_PIXELS:,} pixels")
