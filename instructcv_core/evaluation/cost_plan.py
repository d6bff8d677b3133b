"""What a profile will cost before it runs: queries, UNet evaluations and GPU-hours per benchmark and
protocol, the training cost (FP, RP and their one-step fine-tunes) and the speed-quality curve.

Per job (:data:`JOBS`): ``full_reproduction`` evaluates FP, RP and the untrained reference and trains;
``released_evaluation`` evaluates the authors' released weights once, with no training, one-step
fine-tune or speed-quality curve.

Queries follow the planner's rules (`evaluation.planning`, the tasks' ``questions``; by count, each
task's ``query_counts``): depth asks each image once; closed-set segmentation and detection ask the paper protocol for each GT-present
category and the standard protocol for every category (the paper questions are a subset, so both
protocols together generate the standard set); classification asks every class (standard) and the
binary cat/dog or true/other pair (paper); FSS-1000 asks each image its own class; Table 3 asks 200
ADE20K images each present category in six phrasings. Counts come from the test manifests when
they exist (``counted``), else from the published split sizes below (``published sizes``; the mean
number of GT-present categories per image is an assumption there, named in :data:`SPLIT_SIZES`).

UNet evaluations = outputs x steps x 3 guidance branches (`SamplerConfig.unet_evaluations`); the
VAE encode and decode add under 2 % at 100 steps and are left out. GPU-hours = UNet evaluations /
throughput; training GPU-hours = samples x epochs / samples per second (per checkpoint). The
default throughputs are anchors from published measurements (:data:`ANCHORS`), not ours; pass a
measured figure (`benchmarks/inference_throughput.py`, `benchmarks/train_throughput.py`) instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from instructcv_core.benchmarks import BENCHMARKS, Benchmark


@dataclass(frozen=True)
class SplitSize:
    """A test split's published size: images, categories the standard protocol asks, GT-present per image."""

    images: int
    classes: int
    present_per_image: float  # mean GT-present categories per image: the paper's closed-set queries
    source: str


#: Published sizes of the paper's test splits (``present_per_image`` for ADE20K and VOC is assumed:
#: neither dataset publishes it; COCO's 3.5 is the COCO paper's figure for its images).
SPLIT_SIZES: dict[str, SplitSize] = {
    "nyuv2": SplitSize(654, 1, 1, "NYUv2 official test split"),
    "ade20k": SplitSize(2000, 150, 8.0, "ADE20K val; 8 present classes per image assumed"),
    "coco": SplitSize(4952, 80, 3.5, "COCO val2017 images with annotations; 3.5 categories per image (Lin et al. 2014)"),
    "pets": SplitSize(3669, 37, 1, "Oxford-IIIT Pet test"),
    "sunrgbd": SplitSize(4396, 1, 1, "SUN RGB-D test without its NYUv2 part (5,050 - 654)"),
    "voc_seg": SplitSize(1449, 20, 1.5, "VOC2012 segmentation val; 1.5 present classes per image assumed"),
    "voc_det": SplitSize(5823, 20, 1.5, "VOC2012 Main val; 1.5 present classes per image assumed"),
    "imagenet_sub": SplitSize(500, 10, 1, "10 ImageNet synsets x 50 val images (the official FP list)"),
    "fss1000": SplitSize(2400, 1, 1, "FSS-1000 test: 240 classes x 10 images"),
    "ade20k_heldout": SplitSize(2000, 150, 8.0, "ADE20K val (Table 3 uses 200 of them, 6 phrasings)"),
}

#: Throughput anchors (published measurements, converted; see the module docstring).
ANCHORS = {
    # diffusers docs (optimization/torch2.0): SD1.5 on an A100-80GB, batch 16, fp16 + SDPA +
    # torch.compile, 4.68 it/s at 512² = 4.68 x 16 x 2 (CFG) = 150 UNet evaluations/s; a 256² UNet
    # forward costs 0.180 TFLOP against 0.80 at 512² (the SD1.5 FLOP count with in_channels 8).
    "unet_evaluations_per_second": (150 * 0.80 / 0.180,
                                    "A100: diffusers' SD1.5 batch-16 compiled 150 UNet evals/s at 512², x4.44 by FLOPs to 256²"),
    # InstructPix2Pix: 10.24M samples (1024 x 10k steps) in 25.5 h on 8 A100s = 13.9 samples/s per GPU.
    "train_samples_per_second": (10_240_000 / (25.5 * 8 * 3600),
                                 "A100: InstructPix2Pix trained 10.24M samples in 8 x 25.5 A100-hours at 256²"),
}
#: Training pairs assumed when the manifest does not exist yet (the official config names say ~100k).
DEFAULT_TRAIN_SAMPLES = 100_000
#: The jobs a plan can be made for (`pipelines/jobs.py`).
JOBS = ("full_reproduction", "released_evaluation")


@dataclass
class BenchmarkCost:
    benchmark: str
    images: int
    paper_queries: int
    standard_queries: int
    outputs: int  # generated for both protocols (shared)
    counted: bool  # from the test manifest (True) or the published sizes (False)
    unet_per_output: int
    checkpoints: int  # how many models are evaluated on it (fp, rp and, where it is a reference, untrained)

    def unet_evaluations(self, which: str) -> int:
        queries = {"paper": self.paper_queries, "standard": self.standard_queries, "both": self.outputs}[which]
        return queries * self.unet_per_output


@dataclass
class CostPlan:
    profile: str
    benchmarks: list[BenchmarkCost]
    unet_per_second: float
    unet_source: str
    train_samples: int
    train_samples_source: str
    train_epochs: float
    train_samples_per_second: float
    train_source: str
    notes: list[str] = field(default_factory=list)
    onestep_samples: int = 0  # samples of one one-step fine-tune (FP and RP each run one)
    speed_quality_unet_evaluations: int = 0  # every point of the speed-quality curve
    speed_quality_points: int = 0
    job: str = "full_reproduction"  # released_evaluation: the released weights' evaluation alone

    @property
    def trains(self) -> bool:
        """Whether the job trains (and runs the one-step fine-tunes and the speed-quality curve)."""
        return self.job == "full_reproduction"

    def gpu_hours(self, unet_evaluations: int) -> float:
        return unet_evaluations / self.unet_per_second / 3600

    @property
    def train_gpu_hours(self) -> float:
        """One checkpoint's training (FP and RP each cost this)."""
        return self.train_samples * self.train_epochs / self.train_samples_per_second / 3600

    @property
    def eval_gpu_hours(self) -> float:
        """Every evaluation of every checkpoint, both protocols (shared outputs)."""
        return sum(self.gpu_hours(b.unet_evaluations("both")) * b.checkpoints for b in self.benchmarks)

    @property
    def onestep_gpu_hours(self) -> float:
        """One one-step fine-tune at the training throughput (a one-step sample costs one UNet forward and
        backward, as a diffusion sample, plus a decoder pass under a pixel loss: an approximation)."""
        return self.onestep_samples / self.train_samples_per_second / 3600

    @property
    def speed_quality_gpu_hours(self) -> float:
        return self.gpu_hours(self.speed_quality_unet_evaluations)

    @property
    def total_gpu_hours(self) -> float:
        if not self.trains:
            return self.eval_gpu_hours
        return 2 * self.train_gpu_hours + 2 * self.onestep_gpu_hours + self.eval_gpu_hours + self.speed_quality_gpu_hours

    def rows(self) -> list[dict]:
        """One row per benchmark (per checkpoint): queries, UNet evaluations and GPU-hours per protocol."""
        out = []
        for b in self.benchmarks:
            out.append({
                "benchmark": b.benchmark, "images": b.images, "counts": "counted" if b.counted else "published sizes",
                "paper_queries": b.paper_queries, "paper_unet_evals": b.unet_evaluations("paper"),
                "paper_gpu_hours": round(self.gpu_hours(b.unet_evaluations("paper")), 2),
                "standard_queries": b.standard_queries, "standard_unet_evals": b.unet_evaluations("standard"),
                "standard_gpu_hours": round(self.gpu_hours(b.unet_evaluations("standard")), 2),
                "both_outputs": b.outputs, "both_gpu_hours": round(self.gpu_hours(b.unet_evaluations("both")), 2),
                "checkpoints": b.checkpoints})
        return out

    def to_markdown(self) -> str:
        header = ("| benchmark | images | paper queries | paper UNet evals | paper GPU-h | standard queries | "
                  "standard UNet evals | standard GPU-h | both: outputs | both: GPU-h | checkpoints |")
        lines = [header, "|" + "---|" * 11]
        for r in self.rows():
            counts = "" if r["counts"] == "counted" else "*"
            lines.append(f"| {r['benchmark']} | {r['images']:,}{counts} | {r['paper_queries']:,} | {r['paper_unet_evals']:,} | "
                         f"{r['paper_gpu_hours']:,.2f} | {r['standard_queries']:,} | {r['standard_unet_evals']:,} | "
                         f"{r['standard_gpu_hours']:,.2f} | {r['both_outputs']:,} | {r['both_gpu_hours']:,.2f} | {r['checkpoints']} |")
        per_checkpoint = sum(self.gpu_hours(b.unet_evaluations("both")) for b in self.benchmarks)
        if not self.trains:
            lines += [
                "",
                f"Job {self.job}: the released weights evaluated once, both protocols (shared outputs): "
                f"{self.eval_gpu_hours:,.1f} GPU-hours at {self.unet_per_second:,.0f} UNet evaluations/s "
                f"({self.unet_source}). No training, one-step fine-tune or speed-quality curve.",
                f"Total: {self.total_gpu_hours:,.1f} GPU-hours, about as many hours of wall clock: the evaluation is one "
                "step on one GPU (the data stages before it run on CPUs).",
            ]
            return self._footer(lines)
        lines += [
            "",
            f"Evaluation: {per_checkpoint:,.1f} GPU-hours per checkpoint (both protocols, shared outputs); "
            f"{self.eval_gpu_hours:,.1f} for FP, RP and the untrained reference, at {self.unet_per_second:,.0f} UNet "
            f"evaluations/s ({self.unet_source}).",
            f"Training: {self.train_samples:,} samples ({self.train_samples_source}) x {self.train_epochs:g} epochs / "
            f"{self.train_samples_per_second:,.1f} samples/s = {self.train_gpu_hours:,.1f} GPU-hours per checkpoint, "
            f"{2 * self.train_gpu_hours:,.1f} for FP and RP ({self.train_source}).",
            f"One-step fine-tunes: {self.onestep_samples:,} samples = {self.onestep_gpu_hours:,.1f} GPU-hours each, "
            f"{2 * self.onestep_gpu_hours:,.1f} for FP and RP (at the training throughput).",
            f"Speed-quality curve: {self.speed_quality_points} points, {self.speed_quality_unet_evaluations:,} UNet "
            f"evaluations = {self.speed_quality_gpu_hours:,.1f} GPU-hours.",
            f"Total: {self.total_gpu_hours:,.1f} GPU-hours; on 8 GPUs about {self.total_gpu_hours / 8:,.1f} hours of "
            "wall clock when the steps fan out.",
        ]
        return self._footer(lines)

    def _footer(self, lines: list[str]) -> str:
        if any(not b.counted for b in self.benchmarks):
            lines.append("* published split sizes (no test manifest yet): " + "; ".join(
                f"{b.benchmark}: {SPLIT_SIZES[b.benchmark].source}" for b in self.benchmarks if not b.counted))
        lines += self.notes
        return "\n".join(lines) + "\n"


def queries_from_sizes(spec: Benchmark, size: SplitSize, images: int, heldout_phrasings: int) -> tuple[int, int, int]:
    """(paper, standard, generated) query counts of ``images`` images of a split of ``size``: the rule of
    the benchmark's evaluation (its task's ``query_counts``)."""
    from instructcv_core.tasks import evaluation

    present = round(images * size.present_per_image)
    try:
        rule = evaluation(spec.task, spec.kind)
    except KeyError:
        raise ValueError(f"{spec.name}: no query rule for kind {spec.kind!r}") from None
    return rule.query_counts(spec, images, size.classes, present, heldout_phrasings)


def queries_from_manifest(name: str, datasets_dir: Path, raw_dir: Path, eval_config, heldout_phrasings) -> tuple[int, int, int, int]:
    """(images, paper, standard, generated) of a benchmark counted by the planner on its test manifest."""
    from instructcv_core.evaluation.data import load_benchmark
    from instructcv_core.evaluation.planning import plan_queries

    spec = BENCHMARKS[name]
    bench = load_benchmark(name, datasets_dir, raw_dir, eval_config.image_limit(spec.image_limit), eval_config.seed)
    queries = plan_queries(bench, eval_config, heldout_phrasings if spec.kind == "heldout" else None)
    return len(bench.image_ids), int(queries["paper"].sum()), int(queries["standard"].sum()), len(queries)


def make_plan(profile: str, data_root: Path | None = None, *, unet_per_second: float | None = None,
              train_samples_per_second: float | None = None, train_samples: int | None = None,
              num_processes: int = 1, job: str = "full_reproduction") -> CostPlan:
    """The cost plan of ``job`` (:data:`JOBS`) under ``profile``; counts from ``data_root/<profile>``
    where its manifests exist."""
    if job not in JOBS:
        raise ValueError(f"no cost plan for job {job!r} (known: {', '.join(JOBS)})")
    from instructcv_core.benchmarks import TABLE3_INSTRUCTIONS
    from instructcv_core.evaluation.config import EvalConfig
    from instructcv_core.inference.config import SamplerConfig
    from instructcv_core.presets import preset, resolve
    from instructcv_core.training.config import TrainConfig
    from instructcv_core.training.recipe import manifest_rows, resolve_schedule, samples_per_step

    sampler = resolve(SamplerConfig, profile, "sampler")
    eval_config = EvalConfig(sampler=sampler, **preset(profile, "eval"))
    phrasings = list(TABLE3_INSTRUCTIONS)
    profile_dir = Path(data_root) / profile if data_root is not None else None
    datasets_dir = profile_dir / "datasets" if profile_dir is not None else None
    costs = []
    for name, spec in BENCHMARKS.items():
        manifest = datasets_dir / "test" / f"{spec.test_manifest}.parquet" if datasets_dir is not None else None
        if manifest is not None and manifest.exists():
            images, paper_q, standard_q, outputs = queries_from_manifest(
                name, datasets_dir, profile_dir / "raw", eval_config, phrasings)
            counted = True
        else:
            size = SPLIT_SIZES[name]
            limit = eval_config.image_limit(spec.image_limit)
            images = min(size.images, limit) if limit else size.images
            paper_q, standard_q, outputs = queries_from_sizes(spec, size, images, len(phrasings))
            counted = False
        checkpoints = 1 if job == "released_evaluation" else 3 if spec.untrained_reference else 2
        costs.append(BenchmarkCost(name, images, paper_q, standard_q, outputs, counted, sampler.unet_evaluations(1),
                                   checkpoints))

    unet_source = "given" if unet_per_second else ANCHORS["unet_evaluations_per_second"][1]
    train_source = "given" if train_samples_per_second else ANCHORS["train_samples_per_second"][1]
    train = resolve(TrainConfig, profile, "train", base_model="-", manifest="-", image_store="-", output_dir="-")
    manifest = datasets_dir / "fp_manifest.parquet" if datasets_dir is not None else None
    if train_samples is not None:
        samples, samples_source = train_samples, "given"
    elif manifest is not None and manifest.exists():
        samples, samples_source = manifest_rows(manifest, train.tasks), "the FP training manifest"
    else:
        samples, samples_source = DEFAULT_TRAIN_SAMPLES, "assumed: the official config names say about 100k pairs"
    if train.num_train_epochs is not None:
        epochs = float(train.num_train_epochs)
    else:  # a step-bounded recipe: its samples are steps x the effective batch
        resolved = resolve_schedule(train, num_processes, samples)
        epochs = resolved.max_steps * samples_per_step(resolved, num_processes) / max(samples, 1)
    onestep = resolve_schedule(resolve(TrainConfig, profile, "train_onestep", base_model="-", manifest="-", image_store="-",
                                       output_dir="-"), num_processes, samples)
    curve_points, curve_evaluations = speed_quality_cost(profile, datasets_dir, eval_config) if job == "full_reproduction" else (0, 0)
    notes = []
    if profile != "paper":
        notes.append(f"Profile {profile}: its sampler runs {sampler.steps} steps; the anchors are GPU figures.")
    return CostPlan(profile, costs, unet_per_second or ANCHORS["unet_evaluations_per_second"][0], unet_source,
                    samples, samples_source, epochs,
                    train_samples_per_second or ANCHORS["train_samples_per_second"][0], train_source, notes,
                    onestep_samples=onestep.max_steps * samples_per_step(onestep, num_processes) if job == "full_reproduction" else 0,
                    speed_quality_unet_evaluations=curve_evaluations, speed_quality_points=curve_points, job=job)


def speed_quality_cost(profile: str, datasets_dir: Path | None, eval_config) -> tuple[int, int]:
    """(points, UNet evaluations) of the profile's speed-quality curve: every point asks the standard
    questions of ``images`` images of each of its benchmarks (counted on the test manifests when they
    exist, else from the published sizes)."""
    from dataclasses import replace

    from instructcv_core.evaluation.speed_quality import SpeedQualityConfig, points
    from instructcv_core.presets import resolve

    curve = resolve(SpeedQualityConfig, profile, "speed_quality")

    def standard_queries(limit: int | None, benchmarks: tuple[str, ...]) -> int:
        standard = 0
        for name in benchmarks:
            spec = BENCHMARKS[name]
            manifest = datasets_dir / "test" / f"{spec.test_manifest}.parquet" if datasets_dir is not None else None
            if manifest is not None and manifest.exists():
                config = replace(eval_config, max_images=limit, protocols=("standard",))
                standard += queries_from_manifest(name, datasets_dir, datasets_dir.parent / "raw", config, [])[2]
            else:
                size = SPLIT_SIZES[name]
                images = min(size.images, limit) if limit else size.images
                standard += queries_from_sizes(spec, size, images, 0)[1]
        return standard

    grid = points(curve, eval_config.sampler)
    def subset(preset: str) -> tuple[int | None, tuple[str, ...]]:
        return curve.images_for(preset), curve.benchmarks_for(preset)

    queries = {key: standard_queries(*key) for key in {subset(p.sampler.preset) for p in grid}}
    return len(grid), sum(queries[subset(p.sampler.preset)] * p.sampler.unet_evals_per_query for p in grid)


__all__ = ["ANCHORS", "JOBS", "SPLIT_SIZES", "BenchmarkCost", "CostPlan", "make_plan", "queries_from_sizes", "speed_quality_cost"]
