"""The authors' released InstructCV weights: where they come from, which exact bytes they are, how they load.

The authors published their checkpoint on the Hugging Face hub as a diffusers
``StableDiffusionInstructPix2PixPipeline``, ``alaa-lab/InstructCV`` (their demo, ``predict.py``,
loads it in float16 and samples with s_T 7.5 / s_I 1.5): SD v1.5's CLIP ViT-L/14 text encoder and
tokenizer, the SD VAE, and a UNet whose ``conv_in`` takes 8 channels (noisy latent + image latent).
Three forms are accepted, through the same cheap checks as the base model
(:mod:`instructcv_core.model.loading`), before anything is loaded:

* a hub id (default :data:`RELEASED_MODEL`), read from the local Hugging Face cache unless
  ``allow_network``, at ``revision`` (a branch, tag or commit; default: the cached ``main``);
* a local diffusers folder in the same layout (``model_index.json``, ``unet/``, ``vae/``,
  ``text_encoder/``, ``tokenizer/``, ``scheduler/``), e.g. a copy of the hub snapshot;
* a single original checkpoint file (``.ckpt`` / ``.safetensors`` in the latent-diffusion layout of
  the official training code), converted by diffusers' ``from_single_file`` with the component
  configs of ``single_file_config`` (a local diffusers folder or a hub id; default
  :data:`IP2P_CONFIG_REPO`, the repository diffusers itself picks for an 8-channel SD v1 UNet). The
  EMA weights are taken when the file holds them: the official inference samples with them.

Provenance (:attr:`ReleasedWeights.identity`): ``released:<source>@<revision>``, where the revision
is a hub id's commit (the snapshot that loads) or ``sha256:<hex>`` over a folder's or a file's
bytes. Evaluation records it with every result, so a table cell names the exact weights.

Nothing here imports torch or touches the network at import time.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

#: The released checkpoint on the Hugging Face hub (diffusers layout).
RELEASED_MODEL = "alaa-lab/InstructCV"
#: Where diffusers takes the component configs of an InstructPix2Pix single file by default.
IP2P_CONFIG_REPO = "timbrooks/instruct-pix2pix"


def _base_error():
    from instructcv_core.model.loading import BaseModelError

    return BaseModelError


def how_to_provide(source: str) -> str:
    """How to give the released weights to a machine that cannot download them."""
    return (
        f"Provide a local copy of the released InstructCV weights ({source}): on a machine with network run "
        f"`hf download {RELEASED_MODEL} --local-dir <folder>`, copy the folder here and set "
        "resources.settings.config.released_model: <folder> (a diffusers folder with model_index.json, unet/, vae/, "
        "text_encoder/, tokenizer/, scheduler/); or copy that machine's Hugging Face cache (HF_HOME) here; or set "
        "released_model to a single original .ckpt/.safetensors file (its component configs: "
        f"released_single_file_config, a local diffusers folder, else the cached hub repo {IP2P_CONFIG_REPO}); "
        "or set allow_network: true to let the run download it."
    )


@dataclass(frozen=True)
class ReleasedWeights:
    """A resolved released checkpoint: what was asked for, its kind and its exact revision.

    ``kind``: ``hub``, ``folder`` or ``single_file``. ``revision``: the hub commit of the snapshot
    that loads, or ``sha256:<hex>`` over the folder's files or the single file.
    """

    source: str
    kind: str
    revision: str
    hub_revision: str | None = None  # the revision asked for (a hub id only)
    single_file_config: str | None = None

    @property
    def identity(self) -> str:
        """``released:<source>@<revision>``: the checkpoint identity results and outputs are keyed by."""
        return f"released:{self.source}@{self.revision}"


def check_released_source(source: str = RELEASED_MODEL, *, revision: str | None = None, allow_network: bool = False,
                          single_file_config: str | Path | None = None) -> str:
    """Validate a released-weights source cheaply (file checks, a cache lookup; loads nothing, never
    downloads) and return its kind; :class:`~instructcv_core.model.loading.BaseModelError` otherwise,
    naming the source and how to provide a local copy."""
    from instructcv_core.model.loading import _classify

    return _classify(str(source), allow_network, single_file_config, default_config_repo=IP2P_CONFIG_REPO,
                     revision=revision, what="released InstructCV weights", how=how_to_provide(str(source)))


def resolve_released(source: str = RELEASED_MODEL, *, revision: str | None = None, allow_network: bool = False,
                     single_file_config: str | Path | None = None) -> ReleasedWeights:
    """The released weights at ``source`` with their exact revision (see the module docstring).

    A hub id's commit is read from the local cache; with ``allow_network`` and no cached copy, the
    repository's ``model_index.json`` is downloaded to learn it. A folder or a file is hashed (a few
    seconds for SD v1.5's 2-4 GB).
    """
    source = str(source)
    kind = check_released_source(source, revision=revision, allow_network=allow_network,
                                 single_file_config=single_file_config)
    config = str(single_file_config) if single_file_config is not None else None
    if kind == "hub":
        return ReleasedWeights(source, kind, _hub_commit(source, revision, allow_network), revision, config)
    path = Path(source).expanduser()
    digest = folder_sha256(path) if kind == "folder" else _file_sha256(path)
    return ReleasedWeights(source, kind, f"sha256:{digest}", None, config)


def load_released(weights: ReleasedWeights, *, allow_network: bool = False, dtype=None):
    """Load the released weights as a ``StableDiffusionInstructPix2PixPipeline`` (no safety checker).

    ``dtype``: a torch dtype (default float32; the sampler casts to its own). Without
    ``allow_network`` the hub is forced offline while loading, so a missing file fails at once
    instead of hanging. Raises :class:`~instructcv_core.model.loading.BaseModelError` naming the
    source and how to provide it; the tokenizer's vocabulary size is checked after loading (an
    uncached hub id can silently load a 2-token tokenizer).
    """
    import torch
    from diffusers import StableDiffusionInstructPix2PixPipeline

    from instructcv_core.instructions.paraphrase import hub_offline
    from instructcv_core.model.loading import BaseModelError, check_tokenizer

    how = how_to_provide(weights.source)
    common = {"dtype": dtype or torch.float32, "safety_checker": None, "feature_extractor": None,
              "requires_safety_checker": False, "local_files_only": not allow_network}
    try:
        with hub_offline(not allow_network):
            if weights.kind == "single_file":
                pipe = StableDiffusionInstructPix2PixPipeline.from_single_file(
                    str(Path(weights.source).expanduser()), config=weights.single_file_config or IP2P_CONFIG_REPO,
                    extract_ema=True, **common)
            elif weights.kind == "folder":
                pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(str(Path(weights.source).expanduser()), **common)
            else:
                pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(weights.source, revision=weights.hub_revision,
                                                                              **common)
    except BaseModelError:
        raise
    except Exception as exc:  # diffusers/transformers/hub raise many types for missing or bad files
        raise BaseModelError(f"{weights.source}: could not load the released InstructCV weights ({weights.kind}; "
                             f"{type(exc).__name__}: {exc}). {how}") from exc
    check_tokenizer(pipe.tokenizer, weights.source)
    expected = pipe.vae.config.latent_channels * 2
    if pipe.unet.config.in_channels != expected:
        raise BaseModelError(f"{weights.source}: its UNet takes {pipe.unet.config.in_channels} input channels, an "
                             f"InstructPix2Pix UNet {expected}: not InstructCV weights. {how}")
    return pipe


def folder_sha256(folder: Path) -> str:
    """sha256 over a folder's files: their relative paths and each file's sha256, in sorted order."""
    lines = [f"{f.relative_to(folder).as_posix()} {_file_sha256(f)}"
             for f in sorted(p for p in Path(folder).rglob("*") if p.is_file())]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _file_sha256(path: Path) -> str:
    from instructcv_core.data.download import file_digest

    return file_digest(Path(path), "sha256")


def _hub_commit(repo_id: str, revision: str | None, allow_network: bool) -> str:
    """The commit of the snapshot of ``repo_id`` that loads: the cached one, or (with network) the hub's."""
    from instructcv_core.model.loading import hub_cached_file

    cached = hub_cached_file(repo_id, "model_index.json", revision)
    if cached is None and allow_network:
        from huggingface_hub import hf_hub_download

        cached = Path(hf_hub_download(repo_id, "model_index.json", revision=revision))
    if cached is None:  # check_released_source has refused this already
        raise _base_error()(f"{repo_id}: not in the local Hugging Face cache. {how_to_provide(repo_id)}")
    return cached.parent.name  # .../snapshots/<commit>/model_index.json


__all__ = ["IP2P_CONFIG_REPO", "RELEASED_MODEL", "ReleasedWeights", "check_released_source", "folder_sha256",
           "how_to_provide", "load_released", "resolve_released"]
