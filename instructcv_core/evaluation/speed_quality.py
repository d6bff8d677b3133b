"""The speed-quality curve: every checkpoint under every sampler preset, on the in-domain benchmarks.

For each (checkpoint, sampler point) the headline ``standard`` metric of every selected benchmark is
measured on the same seeded image subset (with its 95 % bootstrap interval over images), beside the
cost of a query: UNet evaluations per query (steps x guidance branches) and the images per second
measured while generating them, on the machine that ran it. The sampler points are

* the grid: ``<checkpoint>:<preset>`` entries, the presets of
  :data:`~instructcv_core.inference.config.SAMPLER_PRESETS` (``paper``, ``few:<steps>``, ``one``); by default
  every checkpoint under every preset, and
* the guidance sweep of the paper's Fig. 3: ``<s_T>/<s_I>`` pairs under one preset, for some checkpoints.

Each point is an ordinary evaluation (:func:`~instructcv_core.evaluation.run.evaluate_benchmark`, standard
protocol only) in its own folder, so its outputs, metrics and sample grid can be inspected and a rerun
reuses them; the throughput of the generation that produced them is kept beside them
(``throughput.json``), so a rerun reports what was measured, not the time it took to reuse.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from instructcv_core.inference.config import SamplerConfig

#: Columns of ``speed_quality.parquet``, one row per (checkpoint, sampler point, benchmark).
COLUMNS = ["checkpoint", "sampler", "preset", "steps", "text_guidance", "image_guidance", "sweep",
           "unet_evals_per_query", "images_per_second", "benchmark", "metric", "higher_is_better", "value",
           "ci_low", "ci_high", "n", "queries", "device"]
#: The checkpoints and sampler presets of the full grid (the default).
CHECKPOINTS = ("fp", "rp", "fp_onestep", "rp_onestep")
PRESETS = ("paper", "few:4", "few:10", "one")
#: The benchmarks of the curve by default: the in-domain ones (what the checkpoints were trained for).
IN_DOMAIN = ("nyuv2", "ade20k", "coco", "pets")
_PRESET_SPEC = re.compile(r"^(paper|few|one)(?::(\d+))?$")
_GUIDANCE_SPEC = re.compile(r"^(\d+(?:\.\d+)?)/(\d+(?:\.\d+)?)$")


@dataclass(frozen=True)
class SpeedQualityConfig:
    """Which checkpoints, sampler points, benchmarks and images the speed-quality curve measures."""

    grid: tuple[str, ...] = field(default=tuple(f"{c}:{s}" for c in CHECKPOINTS for s in PRESETS), metadata={
        "help": "The points of the curve, each <checkpoint>:<sampler>: checkpoint fp | rp (InstructPix2Pix) | "
                "fp_onestep | rp_onestep (their one-step fine-tunes); sampler paper | few:<steps> (2-10) | one. "
                "Default: every checkpoint under every preset."})
    guidance: tuple[str, ...] = field(default=("1.0/1.0", "3.0/1.5", "7.5/1.0", "7.5/1.5", "7.5/2.0", "12.5/1.5"),
                                      metadata={"help": "Guidance sweep (the paper's Fig. 3): s_T/s_I pairs under "
                                                        "`guidance_sampler`, for `guidance_checkpoints`."})
    guidance_sampler: str = field(default="paper", metadata={"help": "The preset of the guidance sweep."})
    guidance_checkpoints: tuple[str, ...] = field(default=("fp",), metadata={
        "help": "Checkpoints of the guidance sweep (empty: no sweep)."})
    benchmarks: tuple[str, ...] = field(default=IN_DOMAIN, metadata={
        "help": "Benchmarks on the curve (their headline standard metric); default: every in-domain one."})
    images: int | None = field(default=50, metadata={
        "help": "Images per benchmark, the same seeded subset for every point (0 or None: the whole test split)."})
    paper_images: int | None = field(default=None, metadata={
        "help": "Images per benchmark for the `paper` preset's points (300 UNet evaluations per query), the first of "
                "the same seeded subset; None: `images`."})
    paper_benchmarks: tuple[str, ...] | None = field(default=None, metadata={
        "help": "Benchmarks of the `paper` preset's points, a subset of `benchmarks` (its cost is per query: a "
                "benchmark asking many categories per image costs many queries); None: `benchmarks`."})

    def __post_init__(self) -> None:
        from instructcv_core.benchmarks import benchmark

        for name in ("grid", "guidance", "guidance_checkpoints", "benchmarks"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        if self.paper_benchmarks is not None:
            value = self.paper_benchmarks
            object.__setattr__(self, "paper_benchmarks", (value,) if isinstance(value, str) else tuple(value))
            stray = [b for b in self.paper_benchmarks if b not in self.benchmarks]
            if stray or not self.paper_benchmarks:
                raise ValueError(f"speed-quality: paper_benchmarks must be a non-empty subset of benchmarks "
                                 f"{list(self.benchmarks)}; not in it: {stray}")
        if not self.grid or not self.benchmarks:
            raise ValueError("speed-quality: grid and benchmarks must each name at least one")
        for entry in self.grid:
            parse_point(entry)
        parse_preset(self.guidance_sampler)
        for spec in self.guidance:
            parse_guidance(spec)
        stray = sorted(set(self.guidance_checkpoints) - set(CHECKPOINTS))
        if stray:
            raise ValueError(f"speed-quality: guidance_checkpoints {stray} unknown; choose from {list(CHECKPOINTS)}")
        for name in self.benchmarks:
            spec = benchmark(name)  # raises naming an unknown benchmark
            if spec.kind == "heldout":
                raise ValueError(f"speed-quality: {name} is the held-out-phrasing evaluation, not a benchmark with a "
                                 "headline standard metric")
        if self.images is not None and self.images < 0:
            raise ValueError(f"speed-quality: images must be >= 0 (0 or None: every image), got {self.images}")
        if self.images == 0:
            object.__setattr__(self, "images", None)
        if self.paper_images is not None and not 1 <= self.paper_images <= (self.images or self.paper_images):
            raise ValueError(f"speed-quality: paper_images must be between 1 and images ({self.images}), got {self.paper_images}")

    def images_for(self, preset: str) -> int | None:
        """Images per benchmark of a point of sampler preset ``preset``."""
        return self.paper_images if preset == "paper" and self.paper_images is not None else self.images

    def benchmarks_for(self, preset: str) -> tuple[str, ...]:
        """The benchmarks a point of sampler preset ``preset`` measures."""
        return self.paper_benchmarks if preset == "paper" and self.paper_benchmarks is not None else self.benchmarks

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def parse_preset(spec: str) -> tuple[str, int | None]:
    """``paper`` | ``few`` | ``few:<steps>`` | ``one`` -> (preset, steps or None)."""
    match = _PRESET_SPEC.match(str(spec).strip())
    if match is None:
        raise ValueError(f"speed-quality: sampler {spec!r} is not paper, few, few:<steps> or one")
    preset, steps = match.group(1), match.group(2)
    from instructcv_core.inference.config import FEW_STEPS

    if steps is not None and preset != "few":
        raise ValueError(f"speed-quality: sampler {spec!r}: only the few preset takes a step count")
    if steps is not None and int(steps) not in FEW_STEPS:
        raise ValueError(f"speed-quality: sampler {spec!r}: few takes {FEW_STEPS.start}..{FEW_STEPS.stop - 1} steps")
    return preset, None if steps is None else int(steps)


def parse_point(entry: str) -> tuple[str, str]:
    """``<checkpoint>:<sampler>`` -> (checkpoint, sampler spec), both checked."""
    checkpoint, _, spec = str(entry).strip().partition(":")
    if checkpoint not in CHECKPOINTS or not spec:
        raise ValueError(f"speed-quality: grid entry {entry!r} is not <checkpoint>:<sampler> with a checkpoint of "
                         f"{list(CHECKPOINTS)}, e.g. fp:paper or fp_onestep:one")
    parse_preset(spec)
    return checkpoint, spec


def parse_guidance(spec: str) -> tuple[float, float]:
    """``<s_T>/<s_I>`` -> (text guidance, image guidance)."""
    match = _GUIDANCE_SPEC.match(str(spec).strip())
    if match is None:
        raise ValueError(f"speed-quality: guidance {spec!r} is not <text scale>/<image scale>, e.g. 7.5/1.5")
    return float(match.group(1)), float(match.group(2))


@dataclass(frozen=True)
class Point:
    """One sampler setting of one checkpoint on the curve."""

    checkpoint: str
    sampler: SamplerConfig
    sweep: bool  # a point of the guidance sweep (not a preset's own guidance)


def sampler_for(base: SamplerConfig, spec: str, guidance: tuple[float, float] | None = None) -> SamplerConfig:
    """``base`` (resolution, batch size, dtype, device of the run) under the preset ``spec``, with
    ``guidance`` (s_T, s_I) instead of the preset's own when given."""
    from instructcv_core.inference.config import SAMPLER_PRESETS

    preset, steps = parse_preset(spec)
    values = {**base.to_dict(), **SAMPLER_PRESETS[preset], "preset": preset}
    if steps is not None:
        values["steps"] = steps
    if guidance is not None:
        values.update(text_guidance=guidance[0], image_guidance=guidance[1])
    return SamplerConfig(**values)


def points(config: SpeedQualityConfig, base: SamplerConfig) -> list[Point]:
    """Every (checkpoint, sampler) of the curve, checkpoint by checkpoint (one model load each): its grid
    entries, then its guidance sweep; a sweep point equal to a grid point is measured once."""
    grid = [parse_point(entry) for entry in config.grid]
    checkpoints = list(dict.fromkeys([c for c, _ in grid] + list(config.guidance_checkpoints)))
    out: list[Point] = []
    seen = set()
    for checkpoint in checkpoints:
        candidates = [(sampler_for(base, spec), False) for c, spec in grid if c == checkpoint]
        if checkpoint in config.guidance_checkpoints:
            candidates += [(sampler_for(base, config.guidance_sampler, parse_guidance(g)), True) for g in config.guidance]
        for sampler, sweep in candidates:
            key = (checkpoint, json.dumps(sampler.to_dict(), sort_keys=True))
            if key not in seen:
                seen.add(key)
                out.append(Point(checkpoint, sampler, sweep))
    return out


def point_dir(root: Path, point: Point) -> Path:
    """``<root>/<checkpoint>/<sampler label>``: a point's evaluation folders, one per benchmark."""
    label = re.sub(r"[^A-Za-z0-9.+_-]+", "_", point.sampler.label)
    return Path(root) / point.checkpoint / label


def measure_point(point: Point, benchmarks: Iterable[str], evaluate: Callable[[str, Path], object], root: Path,
                  device: str) -> list[dict]:
    """Rows of one point: for every benchmark, its headline standard metric and the cost of a query.

    ``evaluate(benchmark, out_dir)`` runs the benchmark (an ordinary evaluation, standard protocol) and
    returns its :class:`~instructcv_core.evaluation.run.BenchmarkResult`.
    """
    from instructcv_core.data.records import atomic_write_text
    from instructcv_core.evaluation.scoring import primary_metric

    rows = []
    for name in benchmarks:
        out_dir = point_dir(root, point) / name
        result = evaluate(name, out_dir)
        throughput_path = out_dir / "throughput.json"
        generated = int(result.counts["unet_evaluations"]) // max(1, point.sampler.unet_evals_per_query)
        if generated:  # measured now (a resumed run measures the outputs it generated)
            throughput = {"outputs": generated, "seconds": float(result.counts["generation_seconds"]),
                          "device": device, "machine": platform.machine(), "processor": platform.processor()}
            atomic_write_text(throughput_path, json.dumps(throughput, indent=1, sort_keys=True))
        elif throughput_path.exists():  # every output reused: what was measured when they were generated
            throughput = json.loads(throughput_path.read_text())
        else:
            throughput = {"outputs": 0, "seconds": math.nan, "device": device}
        seconds = throughput["seconds"]
        per_second = throughput["outputs"] / seconds if throughput["outputs"] and seconds > 0 else math.nan
        metric, higher = primary_metric(name, "standard")
        interval = result.intervals.get("standard", {}).get(metric)
        rows.append({
            "checkpoint": point.checkpoint, "sampler": point.sampler.label, "preset": point.sampler.preset,
            "steps": point.sampler.steps, "text_guidance": point.sampler.text_guidance,
            "image_guidance": point.sampler.image_guidance, "sweep": point.sweep,
            "unet_evals_per_query": point.sampler.unet_evals_per_query, "images_per_second": per_second,
            "benchmark": name, "metric": metric, "higher_is_better": higher,
            "value": float(result.metrics["standard"][metric]),
            "ci_low": interval.low if interval is not None else math.nan,
            "ci_high": interval.high if interval is not None else math.nan,
            "n": int(interval.n) if interval is not None else 0,
            "queries": int(result.counts["standard_queries"]), "device": throughput.get("device", device),
        })
    return rows


def frame_of(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=COLUMNS).astype({"steps": "int64", "unet_evals_per_query": "int64", "n": "int64",
                                                       "queries": "int64", "sweep": "bool", "higher_is_better": "bool"})


def one_step_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per benchmark: the best one-step setting (the ``one`` preset on any checkpoint) against the best
    ``paper`` setting (any checkpoint, its own guidance): relative quality, UNet evaluations and speed.

    ``quality_ratio`` is (one-step / paper) for a higher-is-better metric and (paper / one-step) for a
    lower-is-better one, so 1.0 means equal and >= 0.95 is "within 5 %".
    """
    rows = []
    presets = frame[~frame["sweep"]]
    for name, group in presets.groupby("benchmark", sort=False):
        higher = bool(group["higher_is_better"].iloc[0])
        pick = (lambda g: g.loc[g["value"].idxmax()]) if higher else (lambda g: g.loc[g["value"].idxmin()])
        one, paper = group[group["preset"] == "one"], group[group["preset"] == "paper"]
        if one.empty or paper.empty or one["value"].isna().all() or paper["value"].isna().all():
            continue
        best_one, best_paper = pick(one.dropna(subset=["value"])), pick(paper.dropna(subset=["value"]))
        a, b = float(best_one["value"]), float(best_paper["value"])
        ratio = (a / b if b else math.inf) if higher else (b / a if a else math.inf)
        rows.append({"benchmark": name, "metric": best_one["metric"],
                     "one": f"{best_one['checkpoint']} {best_one['sampler']}", "one_value": a,
                     "paper": f"{best_paper['checkpoint']} {best_paper['sampler']}", "paper_value": b,
                     "quality_ratio": ratio,
                     "fewer_unet_evals": float(best_paper["unet_evals_per_query"]) / float(best_one["unet_evals_per_query"]),
                     "speedup": float(best_one["images_per_second"]) / float(best_paper["images_per_second"])})
    return pd.DataFrame(rows, columns=["benchmark", "metric", "one", "one_value", "paper", "paper_value",
                                       "quality_ratio", "fewer_unet_evals", "speedup"])


def plot(frame: pd.DataFrame, path: Path, title: str) -> Path:
    """One panel per benchmark: headline metric (95 % CI bars) against UNet evaluations per query (log),
    one colour per checkpoint; guidance-sweep points hollow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from instructcv_core.data.records import atomic_write

    names = list(dict.fromkeys(frame["benchmark"]))
    checkpoints = list(dict.fromkeys(frame["checkpoint"]))
    colours = {c: plt.get_cmap("tab10")(i % 10) for i, c in enumerate(checkpoints)}
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        group = frame[frame["benchmark"] == name]
        for row in group.itertuples():
            low = row.value - row.ci_low if math.isfinite(row.ci_low) else 0.0
            high = row.ci_high - row.value if math.isfinite(row.ci_high) else 0.0
            ax.errorbar(row.unet_evals_per_query, row.value, yerr=[[max(low, 0.0)], [max(high, 0.0)]], fmt="o",
                        color=colours[row.checkpoint], mfc="none" if row.sweep else colours[row.checkpoint],
                        capsize=2, ms=5)
            ax.annotate(row.sampler, (row.unet_evals_per_query, row.value), fontsize=6, xytext=(3, 2),
                        textcoords="offset points")
        ax.set_xscale("log")
        metric = group["metric"].iloc[0]
        ax.set_title(f"{name} ({metric} {'↑' if group['higher_is_better'].iloc[0] else '↓'}, n={int(group['n'].max())})",
                     fontsize=9)
        ax.set_xlabel("UNet evaluations per query", fontsize=8)
        ax.tick_params(labelsize=7)
    handles = [plt.Line2D([], [], marker="o", ls="", color=colours[c], label=c) for c in checkpoints]
    handles.append(plt.Line2D([], [], marker="o", ls="", color="grey", mfc="none", label="guidance sweep"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return Path(path)


__all__ = ["CHECKPOINTS", "COLUMNS", "IN_DOMAIN", "PRESETS", "Point", "SpeedQualityConfig", "frame_of", "measure_point", "one_step_summary",
           "parse_guidance", "parse_point", "parse_preset", "plot", "point_dir", "points", "sampler_for"]
