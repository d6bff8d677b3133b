"""Small sample grids of raw records with their labels drawn on, for asset metadata and docs."""

from __future__ import annotations

import base64
import colorsys
import io
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from instructcv_core.data.records import ImageRecord



def category_colour(name: str) -> np.ndarray:
    """A stable, saturated colour per category name (the same in every grid)."""
    h = zlib.crc32(name.encode()) / 2**32
    rgb = np.array(colorsys.hsv_to_rgb(h, 0.9, 1.0), np.float32) * 255
    return rgb


def record_thumbnail(record: ImageRecord, root: Path, size: int = 112) -> Image.Image:
    """The image with its labels: masks tinted, boxes outlined, depth shown beside it, class named."""
    from instructcv_core.data.labels import load_class_masks, load_depth_m

    root = Path(root)
    image = np.asarray(Image.open(root / record.image_path).convert("RGB"), np.float32)
    if record.mask_format:
        masks, void = load_class_masks(record, root)
        for name, mask in masks.items():
            image[mask] = 0.45 * image[mask] + 0.55 * category_colour(name)
        if void is not None:
            image[void] = 0.3 * image[void]
    panel = Image.fromarray(image.astype(np.uint8))
    draw = ImageDraw.Draw(panel)
    for box in record.boxes:
        draw.rectangle((box.x, box.y, box.x + box.w - 1, box.y + box.h - 1),
                       outline=(0, 0, 255) if not box.iscrowd else (255, 255, 0), width=2)
    panels = [panel]
    if record.depth_path:
        depth = load_depth_m(record, root)
        gray = (np.clip(depth / 10.0, 0, 1) * 255).astype(np.uint8)
        panels.append(Image.fromarray(gray).convert("RGB"))
    thumbs = [p.resize((size, max(1, round(size * p.height / p.width))), Image.Resampling.BILINEAR) for p in panels]
    tile = Image.new("RGB", (size * len(thumbs), max(t.height for t in thumbs) + 12), (255, 255, 255))
    for i, t in enumerate(thumbs):
        tile.paste(t, (i * size, 0))
    caption = record.label_name or ", ".join(record.categories) or record.image_id
    ImageDraw.Draw(tile).text((2, tile.height - 11), caption[:40], fill=(0, 0, 0))
    return tile


def sample_grid(records: list[ImageRecord], root: Path, n: int = 8, columns: int = 4, size: int = 112) -> Image.Image:
    """Up to ``n`` records spread evenly over the list (deterministic), as one grid image."""
    if not records:
        raise ValueError("no records to preview")
    picks = [records[int(i)] for i in np.linspace(0, len(records) - 1, min(n, len(records)))]
    tiles = [record_thumbnail(r, root, size) for r in picks]
    cols = min(columns, len(tiles))
    rows = -(-len(tiles) // cols)
    w, h = max(t.width for t in tiles), max(t.height for t in tiles)
    grid = Image.new("RGB", (cols * w, rows * h), (255, 255, 255))
    for i, t in enumerate(tiles):
        grid.paste(t, ((i % cols) * w, (i // cols) * h))
    return grid


def png_markdown(image: Image.Image, alt: str, max_width: int = 448) -> str:
    """A Markdown image with the PNG embedded as base64 (Dagster metadata has no image type)."""
    if image.width > max_width:
        image = image.resize((max_width, round(image.height * max_width / image.width)), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return f"![{alt}](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()})"


def manifest_grid(manifest, store_root: Path, per_task: int = 2, size: int = 96) -> Image.Image:
    """Rows of input | target | instruction for the first ``per_task`` pairs of each task."""
    from instructcv_core.data.imagestore import ImageStore

    store = ImageStore(store_root)
    picks = manifest.groupby("task", sort=True).head(per_task)
    if picks.empty:
        raise ValueError("no manifest rows to preview")
    text_width = 3 * size
    grid = Image.new("RGB", (2 * size + text_width, size * len(picks)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i, row in enumerate(picks.itertuples()):
        for j, digest in enumerate((row.input_digest, row.target_digest)):
            tile = Image.fromarray(store.get(digest)).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
            grid.paste(tile, (j * size, i * size))
        lines = _wrap(f"[{row.task}] {row.instruction}", 44)
        draw.multiline_text((2 * size + 4, i * size + 4), "\n".join(lines[:6]), fill=(0, 0, 0))
    return grid


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + [line] if line else lines
