"""Resume inside an evaluation: every generated output is recorded under its key as soon as its batch is done.

An output is determined by (checkpoint, input image, instruction, sampler config, seed); its key is
the sha256 of those, and :class:`OutputJournal` appends ``{key, digest}`` lines to a JSONL file after
each batch (flushed and fsynced; the images themselves are already in the content-addressed store,
written atomically). A run killed at any moment (SIGKILL, OOM, a lost node) leaves at worst a torn
last line, which is ignored; the next run reuses every recorded output whose image is still in the
store and generates only the rest.

Batches are recorded whole and in order, so the outputs still to generate start at a batch boundary
and form the same batches as in an uninterrupted run: the resumed outputs are bit-identical, not
just within the sampler's batch-composition tolerance.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path


def output_key(checkpoint: str, input_digest: str, image_id: str, instruction: str, sampler: Mapping, seed: int) -> str:
    """The key of one output: what determines it (the checkpoint's id, the input image by id and content,
    the instruction, every sampler knob, the noise seed)."""
    payload = json.dumps([checkpoint, input_digest, image_id, instruction, dict(sampler), int(seed)], sort_keys=True,
                         default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


class OutputJournal:
    """The append-only record of an evaluation's finished outputs (``key -> output digest``).

    ``also_read``: other journals of the same evaluation whose outputs count as finished (the
    shards', `evaluation.shards`); only ``path`` is written. The sampler's ``device`` enters the key
    as its kind (``cuda:3`` -> ``cuda``): shards on different GPUs of one machine make the same outputs.
    """

    def __init__(self, path: str | Path, checkpoint: str, sampler: Mapping, also_read: Iterable[str | Path] = ()):
        self.path, self.checkpoint = Path(path), checkpoint
        self.sampler = dict(sampler)
        if isinstance(self.sampler.get("device"), str):
            self.sampler["device"] = self.sampler["device"].split(":")[0]
        self.also_read = [Path(p) for p in also_read]

    def key(self, input_digest: str, image_id: str, instruction: str, seed: int) -> str:
        return output_key(self.checkpoint, input_digest, image_id, instruction, self.sampler, seed)

    def load(self) -> dict[str, str]:
        """Recorded ``key -> digest`` (this journal and ``also_read``); a line cut short by a kill is skipped."""
        done = {}
        for path in [*self.also_read, self.path]:
            if not path.exists():
                continue
            for line in path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                    done[entry["key"]] = entry["digest"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue
        return done

    def append(self, entries: list[tuple[str, str]]) -> None:
        """Record finished outputs (one batch), durably, before the next batch starts."""
        if not entries:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write("".join(json.dumps({"key": k, "digest": d}) + "\n" for k, d in entries))
            fh.flush()
            os.fsync(fh.fileno())


__all__ = ["OutputJournal", "output_key"]
