"""Generation of planned outputs with a journal, as `evaluate_benchmark` runs it (the resume test's subprocess).

    python tests/eval_resume_job.py PIPELINE_DIR WORK_DIR

Reads WORK_DIR/queries.parquet and the input store WORK_DIR/inputs; writes outputs to WORK_DIR/outputs,
the journal WORK_DIR/outputs.jsonl, one line per generated batch (its size) to WORK_DIR/batches.log,
and WORK_DIR/result.parquet (queries + output_digest) at the end.
"""

import sys
from pathlib import Path

import pandas as pd
import torch

from instructcv_core.data.imagestore import ImageStore
from instructcv_core.evaluation.generation import generate_outputs
from instructcv_core.evaluation.output_journal import OutputJournal
from instructcv_core.inference.config import SamplerConfig
from instructcv_core.inference.sampler import InstructCVSampler

CONFIG = SamplerConfig(steps=30, resolution=32, batch_size=2)


def main(pipeline_dir: str, work: str) -> int:
    torch.set_num_threads(1)
    work_dir = Path(work)
    queries = pd.read_parquet(work_dir / "queries.parquet")
    journal = OutputJournal(work_dir / "outputs.jsonl", pipeline_dir, CONFIG.to_dict())
    log = open(work_dir / "batches.log", "a")

    def on_batch(n: int) -> None:
        log.write(f"{n}\n")
        log.flush()

    sampler = InstructCVSampler.from_pretrained(pipeline_dir, CONFIG)
    result = generate_outputs(sampler, queries, ImageStore(work_dir / "inputs"), ImageStore(work_dir / "outputs"),
                              on_batch, journal=journal)
    result.to_parquet(work_dir / "result.parquet")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
