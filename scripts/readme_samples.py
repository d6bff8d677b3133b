"""Compose the README's sample picture from a run's evaluation grids (one panel per in-domain task).

    .venv/bin/python scripts/readme_samples.py [--data data/mini] [--variant fp] [--out docs/images/sample_outputs_mini.png]

Reads ``<data>/eval/<variant>/<benchmark>/samples.png`` (written by the evaluation assets: input,
generated output, decoded prediction, ground truth per row) for ADE20K, COCO, NYUv2 and Pets, keeps the
first rows of each and stacks them side by side with the benchmark's name above.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

BENCHMARKS = {"ade20k": "segmentation (ADE20K)", "coco": "detection (COCO)", "nyuv2": "depth (NYUv2)",
              "pets": "classification (Pets)"}


def compose(data: Path, variant: str, out: Path, height: int = 420) -> Path:
    panels = []
    for name, title in BENCHMARKS.items():
        path = data / "eval" / variant / name / "samples.png"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no sample grid; materialise evaluate_{variant} first")
        with Image.open(path) as grid:
            grid = grid.convert("RGB")
            grid = grid.crop((0, 0, grid.width, min(grid.height, height)))
        panel = Image.new("RGB", (grid.width, grid.height + 22), "white")
        panel.paste(grid, (0, 22))
        ImageDraw.Draw(panel).text((4, 4), title, fill="black")
        panels.append(np.asarray(panel))
    tallest = max(p.shape[0] for p in panels)
    padded = [np.pad(p, ((0, tallest - p.shape[0]), (0, 8), (0, 0)), constant_values=255) for p in panels]
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(padded, axis=1)).save(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/mini"))
    parser.add_argument("--variant", default="fp")
    parser.add_argument("--out", type=Path, default=Path("docs/images/sample_outputs_mini.png"))
    args = parser.parse_args()
    print(compose(args.data, args.variant, args.out))


if __name__ == "__main__":
    main()
