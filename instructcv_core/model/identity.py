"""The identity of a base model: a digest of its exact content, cheap to import (no torch).

A training run records it, so a base refitted or replaced at the same path is told apart from the
one the run started with (the mini base is rebuilt in place when its config changes).
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def base_identity(source: str) -> str:
    """A digest naming the exact content of a base model, so runs can tell one base from another.

    A local folder or single file: sha256 over every file's relative path and bytes (about a second
    per GB; the mini base is rebuilt in place at the same path, so the path alone would not do). A
    hub id: the id and the cached snapshot's commit (``id@commit``), or the bare id when the model is
    not cached yet (it will be downloaded at its latest revision).
    """
    source = str(source)
    path = Path(source).expanduser()
    if path.exists():
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        digest = hashlib.sha256()
        for file in files:
            digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode() + b"\0")
            with open(file, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
        return "sha256:" + digest.hexdigest()
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(source, "model_index.json")
    if isinstance(found, str) and Path(found).exists():
        return f"{source}@{Path(found).parent.name}"
    return source
