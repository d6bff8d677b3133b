"""Loading a Stable Diffusion base (SD v1.5 or the tiny one) through one code path, with cheap checks first.

:func:`check_base_source` validates a source without loading anything (file checks, a cache lookup);
:func:`load_base` loads its components. Nothing here touches the network unless ``allow_network=True``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import PreTrainedModel

from instructcv_core.instructions.paraphrase import MIN_TOKENIZER_SIZE, hub_offline

#: File suffixes :func:`load_base` treats as single original (LDM-layout) checkpoints.
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")
#: The diffusers components a Stable Diffusion base must have (``model_index.json`` keys / subfolders).
REQUIRED_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
#: The hub repository diffusers takes the SD v1.x configs from when converting a single file.
SD15_CONFIG_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
#: Prompt length in tokens (CLIP ViT-L/14's, used for every text encoder here).
MAX_PROMPT_TOKENS = 77


class BaseModelError(RuntimeError):
    """The base model named by a profile cannot be found or loaded.

    The message names the source (path or hub id) and how to provide it.
    """


HOW_TO_PROVIDE = (
    "Provide the base model as one of: a Hugging Face hub id already in the local cache "
    "(download it once, e.g. `huggingface-cli download <id>`, or set allow_network=True to let the "
    "loader download it); a local diffusers folder (with model_index.json, unet/, vae/, text_encoder/, "
    "tokenizer/, scheduler/); or a single original checkpoint file (.safetensors or .ckpt)."
)


def check_tokenizer(tokenizer, source: str) -> None:
    """Trap (cpu-feasibility): an empty tokenizer folder or an uncached hub id yields a 2-token vocab."""
    if len(tokenizer) <= MIN_TOKENIZER_SIZE:
        raise BaseModelError(
            f"{source}: the tokenizer has only {len(tokenizer)} tokens (an empty tokenizer folder or an uncached "
            f"hub id silently yields one). {HOW_TO_PROVIDE}"
        )


@dataclass
class BaseComponents:
    """The pieces of a Stable Diffusion base that InstructPix2Pix training needs.

    noise_scheduler: ``DDPMScheduler.from_config`` of the base's scheduler (the training schedule).
    source: what was asked for (path or hub id); kind: ``"hub"``, ``"folder"`` or ``"single_file"``.
    """

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: PreTrainedModel
    tokenizer: object
    noise_scheduler: DDPMScheduler
    source: str
    kind: str


def _looks_like_path(source: str) -> bool:
    return (
        source.startswith(("/", "./", "../", "~", "\\"))
        or (len(source) > 1 and source[1] == ":")
        or source.lower().endswith(SINGLE_FILE_SUFFIXES)
        or source.count("/") > 1
    )


def _hub_cached(repo_id: str, filename: str = "model_index.json", revision: str | None = None) -> bool:
    return hub_cached_file(repo_id, filename, revision) is not None


def hub_cached_file(repo_id: str, filename: str = "model_index.json", revision: str | None = None) -> Path | None:
    """The local copy of ``filename`` of hub repo ``repo_id`` at ``revision`` (default: the cached
    ``main``) in the Hugging Face cache, or None; its folder is the snapshot named by the commit."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, revision=revision)
    return Path(found) if isinstance(found, str) and Path(found).exists() else None


def _check_folder(folder: Path, source: str, how: str = HOW_TO_PROVIDE, error: type[BaseModelError] = BaseModelError) -> None:
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise error(f"{source}: folder has no model_index.json, so it is not a diffusers pipeline folder. {how}")
    try:
        index = json.loads(index_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise error(f"{source}: unreadable model_index.json ({exc}). {how}") from exc
    for name in REQUIRED_COMPONENTS:
        entry = index.get(name)
        if not isinstance(entry, list) or None in entry:
            raise error(f"{source}: model_index.json declares no {name!r} component. {how}")
        sub = folder / name
        if not sub.is_dir():
            raise error(f"{source}: missing component folder {sub}. {how}")
        if name == "tokenizer":
            if not any(sub.iterdir()):  # would load as a 2-token tokenizer (cpu-feasibility trap)
                raise error(f"{source}: empty tokenizer folder {sub}. {how}")
            continue
        config_file = sub / ("scheduler_config.json" if name == "scheduler" else "config.json")
        if not config_file.is_file():
            raise error(f"{source}: missing {config_file}. {how}")
        if name in ("unet", "vae", "text_encoder"):
            weights = [p for p in sub.iterdir() if p.suffix in (".safetensors", ".bin") or p.name.endswith(".index.json")]
            if not weights:
                raise error(f"{source}: no weights (*.safetensors / *.bin) in {sub}. {how}")


def _classify(source: str, allow_network: bool, single_file_config: str | Path | None, *,
              default_config_repo: str = SD15_CONFIG_REPO, revision: str | None = None, what: str = "base model",
              how: str = HOW_TO_PROVIDE, error: type[BaseModelError] = BaseModelError) -> str:
    """Cheap validation of ``source`` (no model is loaded); returns its kind.

    ``default_config_repo``: where diffusers takes a single file's component configs when
    ``single_file_config`` is not given; ``revision``: the hub revision a hub id is looked up at;
    ``what``, ``how`` and ``error``: how messages name the model and say how to provide it.
    """
    if not isinstance(source, (str, Path)) or not str(source).strip():
        raise error(f"empty {what} source {source!r}. {how}")
    source = str(source)
    path = Path(source).expanduser()
    if path.is_dir():
        _check_folder(path, source, how, error)
        return "folder"
    if path.is_file():
        if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            raise error(f"{source}: a file that is not a .safetensors/.ckpt checkpoint. {how}")
        if single_file_config is not None:
            config_dir = Path(single_file_config).expanduser()
            if config_dir.is_dir():
                _check_folder(config_dir, str(single_file_config), how, error)
            elif not allow_network and not _hub_cached(str(single_file_config)):
                raise error(
                    f"{source}: single_file_config {str(single_file_config)!r} is neither a local diffusers folder nor a cached hub id."
                )
        elif not allow_network and not _hub_cached(default_config_repo):
            kind = "SD v1.5" if default_config_repo == SD15_CONFIG_REPO else "InstructPix2Pix"
            raise error(
                f"{source}: converting a single checkpoint file needs the {kind} component configs, which diffusers "
                f"takes from the hub repo {default_config_repo!r} (not in the local cache). Pass single_file_config= a local "
                "diffusers folder of the same architecture, or set allow_network=True."
            )
        return "single_file"
    if _looks_like_path(source):
        raise error(f"{source}: no such file or folder. {how}")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(source)
    except HFValidationError as exc:
        raise error(f"{source}: neither an existing path nor a valid hub id ({exc}). {how}") from exc
    if not allow_network and not _hub_cached(source, revision=revision):
        at = f" at revision {revision!r}" if revision else ""
        raise error(
            f"{source}: no such local folder, and the hub id is not in the local Hugging Face cache{at} "
            f"(allow_network is off, so nothing is downloaded). {how}"
        )
    return "hub"


def check_base_source(source: str, allow_network: bool = False, single_file_config: str | Path | None = None) -> None:
    """Validate ``source`` cheaply (file checks and a cache lookup; loads nothing, never downloads).

    Raises :class:`BaseModelError` naming the source and how to provide it. Use it to fail before
    any data work.
    """
    _classify(source, allow_network, single_file_config)


def load_base(
    source: str,
    *,
    allow_network: bool = False,
    dtype: torch.dtype = torch.float32,
    single_file_config: str | Path | None = None,
) -> BaseComponents:
    """Load the UNet, VAE, text encoder, tokenizer and noise scheduler of a Stable Diffusion base.

    ``source``: a local diffusers folder (has ``model_index.json``); a single original
    ``.safetensors``/``.ckpt`` file (``StableDiffusionPipeline.from_single_file``; its component
    configs come from ``single_file_config``, a local diffusers folder or hub id, by default SD v1.5's
    hub repo, which must then be cached unless ``allow_network``); or a hub id (from the local cache
    unless ``allow_network``). Without ``allow_network`` the hub is forced offline while loading
    (a hub lookup with no network can hang for minutes). Cheap checks run first
    (:func:`check_base_source`); any missing file raises :class:`BaseModelError` naming the source.
    """
    source = str(source)
    kind = _classify(source, allow_network, single_file_config)
    common = {
        "dtype": dtype,
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
        "local_files_only": not allow_network,
    }
    try:
        with hub_offline(not allow_network):
            if kind == "single_file":
                extra = {"config": str(single_file_config)} if single_file_config is not None else {}
                pipe = StableDiffusionPipeline.from_single_file(str(Path(source).expanduser()), **common, **extra)
            else:
                location = str(Path(source).expanduser()) if kind == "folder" else source
                pipe = StableDiffusionPipeline.from_pretrained(location, **common)
    except BaseModelError:
        raise
    except Exception as exc:  # diffusers/transformers/hub raise many types for missing or bad files
        raise BaseModelError(f"{source}: could not load the {kind} base model ({type(exc).__name__}: {exc}). {HOW_TO_PROVIDE}") from exc
    check_tokenizer(pipe.tokenizer, source)
    return BaseComponents(
        unet=pipe.unet,
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        noise_scheduler=DDPMScheduler.from_config(pipe.scheduler.config),
        source=source,
        kind=kind,
    )

