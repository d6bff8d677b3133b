"""Resume inside an evaluation (`evaluation.output_journal`): a generation killed with SIGKILL resumes
without regenerating its finished outputs, and ends with the outputs of an uninterrupted run, bit for bit."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from instructcv_core.data.imagestore import ImageStore
from instructcv_core.evaluation.output_journal import OutputJournal, output_key

PROJECT_ROOT = Path(__file__).resolve().parent.parent
JOB = PROJECT_ROOT / "tests" / "eval_resume_job.py"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _queries(work: Path, n: int = 12) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    store = ImageStore(work / "inputs")
    digests = [store.put(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)) for _ in range(3)]
    rows = [{"query_id": f"q{i:02d}", "image_id": f"img{i % 3}", "input_digest": digests[i % 3],
             "instruction": ["segment the cat", "detect the dog"][i % 2] + f" {i}", "seed": 100 + i} for i in range(n)]
    frame = pd.DataFrame(rows)
    frame.to_parquet(work / "queries.parquet")
    return frame


def _run(pipeline_dir: Path, work: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    log = open(work / "job.log", "ab")
    return subprocess.Popen([sys.executable, str(JOB), str(pipeline_dir), str(work)], env=env, cwd=PROJECT_ROOT,
                            stdout=log, stderr=subprocess.STDOUT)


def test_output_key_covers_checkpoint_image_instruction_sampler_and_seed():
    base = ("ckpt", "digest", "img0", "segment the cat", {"steps": 100, "text_guidance": 7.5}, 1)
    key = output_key(*base)
    for i, other in enumerate(("ckpt2", "digest2", "img1", "segment the dog", {"steps": 50, "text_guidance": 7.5}, 2)):
        changed = list(base)
        changed[i] = other
        assert output_key(*changed) != key, i


def test_torn_last_line_is_ignored(tmp_path):
    journal = OutputJournal(tmp_path / "j.jsonl", "ckpt", {})
    journal.append([("a", "d1"), ("b", "d2")])
    with open(tmp_path / "j.jsonl", "a") as fh:
        fh.write('{"key": "c", "dig')  # a kill in the middle of a write
    assert journal.load() == {"a": "d1", "b": "d2"}


@pytest.mark.slow  # three generations of 12 outputs x 30 steps in subprocesses: ~45 s of CPU
def test_killed_generation_resumes_without_regenerating_finished_outputs(tiny_pipeline_dir, tmp_path):
    reference = tmp_path / "reference"
    reference.mkdir()
    queries = _queries(reference)
    assert _run(tiny_pipeline_dir, reference).wait(timeout=600) == 0
    expected = pd.read_parquet(reference / "result.parquet")["output_digest"].tolist()
    assert len(set(expected)) == len(queries)

    work = tmp_path / "killed"
    work.mkdir()
    _queries(work)
    proc = _run(tiny_pipeline_dir, work)
    deadline = time.monotonic() + 300
    while not ((work / "outputs.jsonl").exists() and len((work / "outputs.jsonl").read_text().splitlines()) >= 4):
        assert proc.poll() is None, (work / "job.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no finished batch within 300 s"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (work / "result.parquet").exists(), "the generation finished before it was killed"
    recorded = len(OutputJournal(work / "outputs.jsonl", "", {}).load())
    assert 4 <= recorded < len(queries)
    generated_before = sum(int(n) for n in (work / "batches.log").read_text().split())

    assert _run(tiny_pipeline_dir, work).wait(timeout=600) == 0
    generated_after = sum(int(n) for n in (work / "batches.log").read_text().split()) - generated_before
    assert generated_after == len(queries) - recorded  # the finished outputs were not generated again
    assert pd.read_parquet(work / "result.parquet")["output_digest"].tolist() == expected
