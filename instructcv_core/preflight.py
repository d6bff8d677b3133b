"""Cheap checks that a full (paper) run can succeed, done before any data work.

Nothing here imports torch or touches the network unless asked: the checks look at the file system
and the Hugging Face cache, so they run in a second at the start of every step of a paper run.
"""

from __future__ import annotations

import os
from pathlib import Path

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")


class PreflightError(RuntimeError):
    """Something a run needs is missing; the message names it and says how to provide it."""


def base_model_problem(source: str, allow_network: bool) -> str | None:
    """Why ``source`` (diffusers folder, single checkpoint file or hub id) cannot be loaded, or None."""
    path = Path(source).expanduser()
    looks_local = source.startswith((".", "/", "~")) or path.suffix in SINGLE_FILE_SUFFIXES or path.exists()
    if looks_local:
        if not path.exists():
            return f"base model {source!r}: no such file or folder"
        if path.is_dir() and not (path / "model_index.json").exists():
            return f"base model {source!r}: the folder has no model_index.json (not a diffusers pipeline folder)"
        if path.is_file() and path.suffix not in SINGLE_FILE_SUFFIXES:
            return f"base model {source!r}: a single-file checkpoint must end in .safetensors or .ckpt"
        return None
    if allow_network:
        return None
    if _in_hub_cache(source):
        return None
    return (
        f"base model {source!r} is not in the local Hugging Face cache ({_hub_cache()}) and downloads are "
        "disabled. Download it (`hf download " + source + "`), point `base_model` at a local diffusers folder "
        "or a .safetensors/.ckpt file, or set `allow_network: true`."
    )


def released_model_problem(source: str, allow_network: bool, revision: str | None = None,
                           single_file_config: str | None = None) -> str | None:
    """Why the released InstructCV weights at ``source`` (hub id, diffusers folder or single file) cannot
    be loaded, or None (`instructcv_core.model.released`; this check imports nothing heavy)."""
    from instructcv_core.model.released import IP2P_CONFIG_REPO, how_to_provide

    path = Path(source).expanduser()
    looks_local = source.startswith((".", "/", "~")) or path.suffix in SINGLE_FILE_SUFFIXES or path.exists()
    if looks_local:
        if not path.exists():
            return f"released weights {source!r}: no such file or folder. {how_to_provide(source)}"
        if path.is_dir() and not (path / "model_index.json").exists():
            return (f"released weights {source!r}: the folder has no model_index.json (not a diffusers pipeline "
                    f"folder). {how_to_provide(source)}")
        if path.is_file():
            if path.suffix not in SINGLE_FILE_SUFFIXES:
                return f"released weights {source!r}: a single-file checkpoint must end in .safetensors or .ckpt"
            config = single_file_config or IP2P_CONFIG_REPO
            config_path = Path(config).expanduser()
            if not config_path.is_dir() and not allow_network and not _in_hub_cache(config):
                return (f"released weights {source!r}: a single file needs the component configs of {config!r}, which "
                        "is neither a local diffusers folder nor in the local Hugging Face cache; set "
                        "released_single_file_config to a local InstructPix2Pix diffusers folder, or allow_network: true")
        return None
    if allow_network or _in_hub_cache(source, revision):
        return None
    at = f" at revision {revision!r}" if revision else ""
    return (f"released weights {source!r} are not in the local Hugging Face cache ({_hub_cache()}){at} and downloads "
            f"are disabled. {how_to_provide(source)}")


def gpu_problem() -> str | None:
    """None when a CUDA GPU is usable, else why not (imports torch: call only when a GPU is required)."""
    import torch

    if torch.cuda.is_available():
        return None
    return (
        "no CUDA GPU is available (torch.cuda.is_available() is False); the paper profile trains SD v1.5 "
        "and needs one. Run on a GPU machine, or set settings.require_gpu: false to proceed on the CPU."
    )


def _hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return home / "hub"


def _in_hub_cache(repo_id: str, revision: str | None = None) -> bool:
    """Whether a snapshot of ``repo_id`` with a model_index.json is cached (at ``revision``: a commit, or a
    branch or tag the cache's refs/ name; unset: any snapshot)."""
    repo = _hub_cache() / ("models--" + repo_id.replace("/", "--"))
    folder = repo / "snapshots"
    if not folder.is_dir():
        return False
    if revision is not None:
        ref = repo / "refs" / revision
        commit = ref.read_text().strip() if ref.is_file() else revision
        return (folder / commit / "model_index.json").exists()
    return any((snap / "model_index.json").exists() for snap in folder.iterdir())
