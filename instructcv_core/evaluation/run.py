"""One benchmark evaluated end to end: plan, generate (or reuse), score, write the results.

1. :func:`~instructcv_core.evaluation.data.load_benchmark`: the test rows, raw records (full label
   maps, raw depth, every box including crowds) and the evaluated image subset;
2. :func:`~instructcv_core.evaluation.planning.plan_queries`: the outputs to generate;
3. :func:`~instructcv_core.evaluation.generation.generate_outputs`: the batched sampler
   (`instructcv_core.inference`), outputs stored content-addressed; a rerun with the same
   checkpoint and config reuses them;
4. :func:`~instructcv_core.evaluation.scoring.score`: post-processing and both protocols' metrics.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from instructcv_core.data.imagestore import ImageStore
from instructcv_core.data.records import atomic_write, atomic_write_text
from instructcv_core.evaluation.config import EvalConfig
from instructcv_core.evaluation.data import load_benchmark
from instructcv_core.evaluation.generation import finished_outputs, generate_outputs
from instructcv_core.evaluation.output_journal import OutputJournal
from instructcv_core.evaluation.shards import shard_journals
from instructcv_core.evaluation.planning import plan_queries
from instructcv_core.evaluation.reporting import file_digest, jsonable, metrics_table, sample_grid
from instructcv_core.evaluation.scoring import score
from instructcv_core.evaluation.subset import subset_protocols
from instructcv_core.tasks.arrays import as_rgb


@dataclass
class BenchmarkResult:
    benchmark: str
    metrics: dict[str, dict[str, float]]
    details: dict[str, dict]
    counts: dict[str, float]  # images, queries, unet_evaluations, generation_seconds, reused
    paths: dict[str, str]
    identity: dict  # checkpoint, test-manifest digest, queries digest, sampler config
    intervals: dict = field(default_factory=dict)  # protocol -> metric -> Interval (n, 95 % bootstrap CI)


def evaluate_benchmark(name: str, sampler_factory: Callable[[], object], checkpoint_id: str, config: EvalConfig,
                       datasets_dir: Path, raw_dir: Path, out_dir: Path, output_store: ImageStore,
                       heldout_phrasings: list[str] | None = None, log: Callable[[str], None] = print) -> BenchmarkResult:
    """Plan, generate (or reuse), score and write one benchmark's results under ``out_dir``.

    Files: ``queries.parquet`` (every output with its digest and decoded prediction),
    ``metrics.parquet`` / ``metrics.md`` (one row per protocol and metric, with its image count
    and 95 % bootstrap interval), ``details.json``,
    ``samples.png`` (input | output | prediction | ground truth). The sampler is only built when
    something has to be generated: a rerun with the same checkpoint, data and config reuses the
    outputs (``identity.json``) and only re-scores them.
    """
    from instructcv_core.construction.manifest import write_table_frame
    from instructcv_core.benchmarks import benchmark

    limit = config.image_limit(benchmark(name).image_limit)
    bench = load_benchmark(name, datasets_dir, raw_dir, limit, config.seed)
    queries = plan_queries(bench, config, heldout_phrasings)
    input_store = ImageStore(Path(datasets_dir) / "images")
    identity = {"checkpoint": checkpoint_id, "manifest": file_digest(bench.manifest_path),
                "queries": hashlib.sha256(pd.util.hash_pandas_object(queries[["query_id", "seed"]], index=False).values.tobytes()).hexdigest(),
                "sampler": config.sampler.to_dict(), "instructions": config.instruction_mode()}
    out_dir = Path(out_dir)
    outputs_path, identity_path = out_dir / "queries.parquet", out_dir / "identity.json"
    reused, generated = False, 0
    start = time.monotonic()
    if identity_path.exists() and outputs_path.exists() and json.loads(identity_path.read_text()) == identity:
        outputs = pd.read_parquet(outputs_path)[list(queries.columns) + ["output_digest"]]
        reused = all(output_store.path(d).exists() for d in outputs["output_digest"])
    if not reused:
        # Resume inside the evaluation: outputs recorded by an earlier, killed run are reused (output_journal.py).
        journal = OutputJournal(out_dir / "outputs.jsonl", checkpoint_id, config.sampler.to_dict(),
                                also_read=shard_journals(out_dir))  # outputs of finished shards (shards.py)
        finished = sum(1 for d in finished_outputs(queries, output_store, journal) if d)
        log(f"{name}: generating {len(queries) - finished} outputs for {len(bench.image_ids)} images"
            + (f" ({finished} finished earlier, reused)" if finished else ""))
        generated = len(queries) - finished
        sampler = sampler_factory() if generated else None
        done, step = [finished], max(1, len(queries) // 10)

        def on_batch(n: int) -> None:  # a progress line about every 10 % (paper-scale runs take hours)
            before, done[0] = done[0], done[0] + n
            if done[0] // step > before // step or done[0] == len(queries):
                log(f"{name}: {done[0]}/{len(queries)} outputs ({time.monotonic() - start:.0f} s)")

        outputs = generate_outputs(sampler, queries, input_store, output_store, on_batch, journal=journal)
    else:
        log(f"{name}: reusing {len(outputs)} outputs generated earlier with this checkpoint and config")
    seconds = time.monotonic() - start

    read_output = lambda digest: as_rgb(output_store.get(digest))  # noqa: E731
    read_dataset_image = lambda digest: as_rgb(input_store.get(digest))  # noqa: E731  (inputs and targets)
    scores = score(bench, outputs, read_output, read_dataset_image, config)
    table = outputs.merge(scores.predictions, on="query_id", how="left") if not scores.predictions.empty else outputs
    write_table_frame(table, outputs_path)
    if not reused:
        atomic_write_text(identity_path, json.dumps(identity, indent=1, sort_keys=True))
    metrics_frame = metrics_table(name, scores.metrics, scores.intervals, subset_protocols(bench.image_ids, config, name),
                                  sampler=config.sampler.label)
    write_table_frame(metrics_frame, out_dir / "metrics.parquet")
    atomic_write_text(out_dir / "metrics.md", metrics_frame.to_markdown(index=False, floatfmt=".4g") + "\n")
    atomic_write_text(out_dir / "details.json", json.dumps(jsonable(scores.details), indent=1, sort_keys=True))
    grid = sample_grid(bench, table, read_output, read_dataset_image, read_dataset_image, config)
    atomic_write(out_dir / "samples.png", lambda tmp: grid.save(tmp, format="PNG"))
    counts = {"images": len(bench.image_ids), "queries": len(queries),
              "paper_queries": int(queries["paper"].sum()), "standard_queries": int(queries["standard"].sum()),
              "standard_images": int(queries.loc[queries["standard"], "image_id"].nunique()),
              "unet_evaluations": config.sampler.unet_evaluations(generated),
              "unet_evals_per_query": config.sampler.unet_evals_per_query,
              "generation_seconds": round(seconds, 2), "reused": reused}
    paths = {"dir": str(out_dir), "queries": str(outputs_path), "metrics": str(out_dir / "metrics.parquet"),
             "metrics_md": str(out_dir / "metrics.md"), "samples": str(out_dir / "samples.png")}
    return BenchmarkResult(name, scores.metrics, scores.details, counts, paths, identity, scores.intervals)


__all__ = ["BenchmarkResult", "evaluate_benchmark"]
