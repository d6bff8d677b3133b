"""Pretraining the mini base: the Stable Diffusion v1.5 of the mini world, built once and versioned.

InstructCV fine-tunes a pretrained text-to-image model; a tiny UNet trained from scratch for a few
hundred CPU steps does not learn the four tasks (measured). This command pretrains the tiny
SD-shaped model the way SD was made, on the mini world's captioned scenes
(:mod:`instructcv_core.model.pretrain_corpus`), never on a mini-benchmark image:

1. **corpus**: ``corpus_images`` captioned scenes from the corpus's own seed stream, and four
   output-like images per scene for the autoencoder;
2. **autoencoder**: the tiny AutoencoderKL fitted on scenes and output-like images together
   (:func:`instructcv_core.model.autoencoder.fit_autoencoder`, fixed steps);
3. **text-to-image**: the 4-channel UNet trained to denoise the scenes' latents given their
   captions' states from the frozen text encoder (v-prediction on the zero-terminal-SNR schedule,
   every timestep, 10 % empty captions as SD's unconditional training), fixed steps;
4. **save**: ``unet/``, ``vae/``, ``scheduler/`` (safetensors, diffusers layout),
   ``tiny_model_config.json``, ``pretrain_record.json`` (config, command, versions, device, losses,
   digests of corpus and caption states) and ``SHA256SUMS``.

The text encoder (MiniLM, frozen, from its pip package) is not part of the folder; the base_model
asset assembles the full ``StableDiffusionPipeline`` from the folder and the installed text encoder
(:func:`assemble_base`), after checking every file against ``SHA256SUMS``.

Command (defaults = the versioned base)::

    python -m instructcv_core.model.pretrain_mini build --out instructcv_core/model/mini_base [--device cuda]

Every count is fixed (no wall-clock budget); every random draw comes from ``seed``. The caption
states can be computed separately (``embed --out states.npz``, then ``build --caption-states
states.npz``) for a machine without the text encoder's package.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import platform
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from instructcv_core.model.config import TinyModelConfig
from instructcv_core.presets import knob

#: Where the versioned mini base lives (package data of this module's folder).
VERSIONED_BASE = Path(__file__).resolve().parent / "mini_base"
#: The files of a pretrained folder, checked against its SHA256SUMS.
CHECKSUMS = "SHA256SUMS"
RECORD = "pretrain_record.json"


@dataclass(frozen=True)
class PretrainConfig:
    """What the mini base is pretrained on and for how long (fixed counts, one seed)."""

    corpus_images: int = knob(8000, "Captioned corpus scenes (plus 4 output-like images each for the autoencoder).")
    image_size: int = knob(64, "Resolution in pixels (the mini profile's).")
    autoencoder_steps: int = knob(1500, "AdamW steps of the autoencoder fit.")
    autoencoder_batch: int = knob(32, "Images per autoencoder step.")
    autoencoder_lr: float = knob(1e-3, "Peak learning rate of the autoencoder fit (cosine to 5 %).")
    unet_steps: int = knob(2000, "AdamW steps of text-to-image training.")
    unet_batch: int = knob(64, "Images per text-to-image step.")
    unet_lr: float = knob(1e-3, "Peak learning rate of text-to-image training (200 warm-up steps, cosine to 5 %).")
    caption_dropout: float = knob(0.1, "Share of text-to-image samples trained with the empty caption (SD: 10 %).")
    seed: int = knob(0, "Seeds the corpus, the initialisation and every draw of training.")
    attention_head_dim: int = knob(
        2, "The UNet's attention heads per block (diffusers' `attention_head_dim`, see TinyModelConfig). 2, not "
        "SD's 8: torch's CPU attention kernel costs heads x tokens^2, and a fine-tune step takes 181 ms with 2 "
        "heads instead of 390 ms with 8 (benchmarks/unet_layout_cost.py, docs/benchmarks.md).")

    def __post_init__(self) -> None:
        for name in ("corpus_images", "image_size", "autoencoder_batch", "unet_batch", "attention_head_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"PretrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("autoencoder_steps", "unet_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"PretrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ValueError(f"PretrainConfig.caption_dropout must be in [0, 1), got {self.caption_dropout}")

    def model(self) -> TinyModelConfig:
        """The tiny model's shape: the mini profile's (MiniLM text encoder, v-prediction, zero terminal SNR)."""
        return TinyModelConfig(image_size=self.image_size, text_encoder="minilm", prediction_type="v_prediction",
                               zero_terminal_snr=True, seed=self.seed,
                               attention_head_dim=self.attention_head_dim)


# --------------------------------------------------------------------------------------------
# caption states


def caption_states(captions: list[str]) -> tuple[np.ndarray, dict]:
    """Frozen-text-encoder states of ``captions`` (float32 ``(N, 77, D)``), as the pipelines encode a prompt.

    Returns the states and the text encoder's identity (package, version, weights sha256).
    """
    import torch

    from instructcv_core.model.prompts import encode_prompt
    from instructcv_core.model.tiny_base import minilm_text_encoder

    text_encoder, tokenizer = minilm_text_encoder()
    with torch.no_grad():
        states = np.concatenate([encode_prompt(tokenizer, text_encoder, captions[i:i + 64]).float().numpy()
                                 for i in range(0, len(captions), 64)])
    return states, text_encoder_identity()


def text_encoder_identity() -> dict:
    """Which text encoder the caption states come from: package, version and the weights' sha256."""
    from importlib.metadata import version

    from instructcv_core.instructions.paraphrase import MINILM_PACKAGE, minilm_model_dir

    folder = minilm_model_dir()
    weights = next(folder / w for w in ("model.safetensors", "pytorch_model.bin") if (folder / w).exists())
    return {"package": MINILM_PACKAGE, "version": version(MINILM_PACKAGE.replace("_", "-")), "weights_sha256": sha256_file(weights)}


def save_caption_states(path: Path, captions: list[str], states: np.ndarray, identity: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, states=states, captions=np.array(captions), identity=np.array(json.dumps(identity)))
    tmp.replace(path)


def load_caption_states(path: Path, captions: list[str]) -> tuple[np.ndarray, dict]:
    """The states of ``captions`` from an ``embed`` file; a caption missing from it is an error naming it."""
    with np.load(path) as data:
        stored = [str(c) for c in data["captions"]]
        states, identity = data["states"], json.loads(str(data["identity"]))
    index = {c: i for i, c in enumerate(stored)}
    missing = [c for c in captions if c not in index]
    if missing:
        raise ValueError(f"{path}: no caption states for {len(missing)} caption(s), e.g. {missing[0]!r}; "
                         "rebuild it with `python -m instructcv_core.model.pretrain_mini embed`")
    return states[[index[c] for c in captions]], identity


# --------------------------------------------------------------------------------------------
# training


def pretrain_unet(unet, noise_scheduler, latent_mean, latent_std, states, caption_index, null_index: int,
                  config: PretrainConfig, device, log: Callable[[str], None]) -> list[dict]:
    """Text-to-image training of ``unet`` for ``config.unet_steps`` fixed steps; returns the loss curve.

    latent_mean / latent_std: the VAE posterior of every corpus image, scaled by the scaling factor
    ``(N, 4, s, s)``; states: ``(C, 77, D)`` caption states; caption_index: ``(N,)`` row of each
    image's caption in ``states``; null_index: the empty caption's row (caption dropout).
    """
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(config.seed + 10)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.unet_lr, weight_decay=1e-2)
    warmup = min(200, config.unet_steps // 10)

    def lr_at(step: int) -> float:
        if step < warmup:
            return config.unet_lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, config.unet_steps - warmup)
        return config.unet_lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))

    n, curve, start, running = len(latent_mean), [], time.monotonic(), []
    states, caption_index = states.to(device), caption_index.to(device)
    unet.train()
    for step in range(config.unet_steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        rows = torch.randint(0, n, (config.unet_batch,), generator=generator)
        eps = torch.randn(latent_mean[rows].shape, generator=generator)
        flip = torch.rand(config.unet_batch, generator=generator) < 0.5
        noise = torch.randn(eps.shape, generator=generator)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (config.unet_batch,), generator=generator)
        dropped = torch.rand(config.unet_batch, generator=generator) < config.caption_dropout
        latents = latent_mean[rows] + latent_std[rows] * eps
        latents = torch.where(flip[:, None, None, None], latents.flip(-1), latents).to(device)
        noise, timesteps = noise.to(device), timesteps.to(device)
        captions = torch.where(dropped.to(device), torch.full_like(caption_index[rows.to(device)], null_index),
                               caption_index[rows.to(device)])
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
        pred = unet(noisy, timesteps, encoder_hidden_states=states[captions]).sample
        loss = F.mse_loss(pred.float(), target.float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running.append(float(loss.detach()))
        if (step + 1) % 250 == 0 or step + 1 == config.unet_steps:
            curve.append({"step": step + 1, "loss": float(np.mean(running)), "lr": lr_at(step)})
            running = []
            log(f"text-to-image step {step + 1}/{config.unet_steps}: loss {curve[-1]['loss']:.4f} "
                f"({time.monotonic() - start:.0f}s)")
    unet.eval()
    return curve


def encode_corpus(vae, images: np.ndarray, device, batch: int = 256):
    """The VAE posterior (mean, std) of every image, scaled by the VAE's scaling factor, on the CPU."""
    import torch

    from instructcv_core.model.autoencoder import images_to_tensor

    means, stds = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            posterior = vae.encode(images_to_tensor(images[i:i + batch]).to(device)).latent_dist
            means.append(posterior.mean.float().cpu())
            stds.append(posterior.std.float().cpu())
    scale = vae.config.scaling_factor
    return torch.cat(means) * scale, torch.cat(stds) * scale


def pretrain(config: PretrainConfig, out_dir: Path, device: str = "cpu", caption_states_path: Path | None = None,
             workers: int = 1, command: str = "", log: Callable[[str], None] = print) -> Path:
    """Run the four stages (module doc) and write the pretrained folder to ``out_dir`` (atomically)."""
    import torch

    from instructcv_core.model.autoencoder import fit_autoencoder
    from instructcv_core.model.pretrain_corpus import build_corpus
    from instructcv_core.model.tiny_base import sd_noise_scheduler, tiny_unet, tiny_vae

    out_dir = Path(out_dir)
    started = time.monotonic()
    model = config.model()
    log(f"corpus: rendering {config.corpus_images} captioned scenes ({workers} workers)")
    images, captions, outputs = build_corpus(config.seed, config.corpus_images, config.image_size, workers=workers)
    corpus_digest = hashlib.sha256(images.tobytes() + outputs.tobytes() + "\n".join(captions).encode()).hexdigest()
    distinct = sorted(set(captions)) + [""]
    if caption_states_path is not None:
        states, identity = load_caption_states(caption_states_path, distinct)
    else:
        states, identity = caption_states(distinct)
    states_digest = hashlib.sha256(np.ascontiguousarray(states).tobytes()).hexdigest()
    log(f"corpus: {len(images)} scenes, {len(distinct) - 1} distinct captions, {len(outputs)} output-like images "
        f"({time.monotonic() - started:.0f}s)")

    torch.manual_seed(model.seed)
    vae = tiny_vae(model).to(device)
    fit_images = np.concatenate([images, outputs])
    fit = fit_autoencoder(vae, fit_images, steps=config.autoencoder_steps, batch_size=config.autoencoder_batch,
                          lr=config.autoencoder_lr, seed=config.seed, log=log)
    torch.manual_seed(model.seed + 1)
    unet = tiny_unet(model, cross_attention_dim=states.shape[-1]).to(device)  # the text encoder's width
    scheduler = sd_noise_scheduler(model.prediction_type, model.zero_terminal_snr)
    mean, std = encode_corpus(vae, images, device)
    caption_row = {c: i for i, c in enumerate(distinct)}
    index = torch.tensor([caption_row[c] for c in captions])
    curve = pretrain_unet(unet, scheduler, mean, std, torch.from_numpy(np.ascontiguousarray(states)), index,
                          caption_row[""], config, device, log)

    import diffusers
    import transformers

    record = {
        "config": dataclasses.asdict(config), "model": dataclasses.asdict(model), "command": command,
        "device": torch.cuda.get_device_name(0) if str(device).startswith("cuda") else platform.processor() or platform.machine(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__, "numpy": np.__version__},
        "corpus": {"images": len(images), "distinct_captions": len(distinct) - 1, "output_like_images": len(outputs),
                   "sha256": corpus_digest},
        "text_encoder": identity, "caption_states_sha256": states_digest,
        "autoencoder": fit, "text_to_image": curve, "seconds": round(time.monotonic() - started, 1),
    }
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    unet.to("cpu").save_pretrained(tmp / "unet", safe_serialization=True)
    vae.to("cpu").save_pretrained(tmp / "vae", safe_serialization=True)
    scheduler.save_pretrained(tmp / "scheduler")
    (tmp / "tiny_model_config.json").write_text(json.dumps(dataclasses.asdict(model), indent=2) + "\n")
    (tmp / RECORD).write_text(json.dumps(record, indent=1) + "\n")
    write_checksums(tmp)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    log(f"pretrained mini base written to {out_dir} ({record['seconds']:.0f}s)")
    return out_dir


# --------------------------------------------------------------------------------------------
# the versioned folder


def sha256_file(path: Path) -> str:
    """sha256 of a file's bytes (hex)."""
    from instructcv_core.data.download import file_digest

    return file_digest(Path(path), "sha256")


def write_checksums(folder: Path) -> None:
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != CHECKSUMS)
    lines = [f"{sha256_file(p)}  {p.relative_to(folder).as_posix()}" for p in files]
    (folder / CHECKSUMS).write_text("\n".join(lines) + "\n")


def verify_checksums(folder: Path) -> str:
    """Check every file of a pretrained folder against its SHA256SUMS; returns the digest of SHA256SUMS.

    A missing, extra or changed file raises a ValueError naming it and how to rebuild.
    """
    from instructcv_core.model.loading import BaseModelError

    folder = Path(folder)
    sums = folder / CHECKSUMS
    rebuild = "rebuild it with `python -m instructcv_core.model.pretrain_mini build` (or base_model: {rebuild: true})"
    if not sums.is_file():
        raise BaseModelError(f"{folder}: no {CHECKSUMS}; not a pretrained mini base folder; {rebuild}")
    expected = {}
    for line in sums.read_text().splitlines():
        digest, _, name = line.partition("  ")
        expected[name] = digest
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != CHECKSUMS}
    problems = [f"{name}: missing" for name in sorted(set(expected) - present)]
    problems += [f"{name}: not listed in {CHECKSUMS}" for name in sorted(present - set(expected))]
    problems += [f"{name}: sha256 differs" for name in sorted(set(expected) & present)
                 if sha256_file(folder / name) != expected[name]]
    if problems:
        raise BaseModelError(f"{folder}: the pretrained mini base does not match {CHECKSUMS} ({'; '.join(problems)}); {rebuild}")
    return sha256_file(sums)


def check_shape(folder: Path, wanted: TinyModelConfig) -> None:
    """Refuse a pretrained folder whose model shape is not ``wanted`` (the seed aside), naming the knobs."""
    from instructcv_core.model.loading import BaseModelError

    def plain(value):
        return list(value) if isinstance(value, (list, tuple)) else value

    shape = json.loads((Path(folder) / "tiny_model_config.json").read_text())
    asked = dataclasses.asdict(wanted)
    differs = sorted(k for k in asked if k != "seed" and plain(asked[k]) != plain(shape.get(k)))
    if differs:
        raise BaseModelError(f"{folder}: the pretrained mini base has {', '.join(f'{k}={shape.get(k)!r}' for k in differs)}, "
                             f"but the config asks {', '.join(f'{k}={asked[k]!r}' for k in differs)}; set "
                             "base_model: {pretrained: false} for a from-scratch base of another shape")


def assemble_base(pretrained: Path, out_dir: Path) -> Path:
    """The full ``StableDiffusionPipeline`` folder: a pretrained folder's UNet, VAE and scheduler with the
    installed MiniLM text encoder and tokenizer (checked against the record's weights sha256)."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    from instructcv_core.model.loading import BaseModelError, check_tokenizer
    from instructcv_core.model.tiny_base import minilm_text_encoder

    pretrained = Path(pretrained)
    record = json.loads((pretrained / RECORD).read_text())
    if record["text_encoder"]["weights_sha256"] != text_encoder_identity()["weights_sha256"]:
        raise BaseModelError(f"{pretrained}: pretrained with text encoder {record['text_encoder']}, but the installed "
                             f"one differs ({text_encoder_identity()}); install that version or rebuild the base")
    text_encoder, tokenizer = minilm_text_encoder()
    check_tokenizer(tokenizer, str(pretrained))
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(pretrained / "vae"),
        text_encoder=text_encoder, tokenizer=tokenizer,
        unet=UNet2DConditionModel.from_pretrained(pretrained / "unet"),
        scheduler=DDPMScheduler.from_pretrained(pretrained / "scheduler"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    shutil.copy(pretrained / "tiny_model_config.json", out_dir / "tiny_model_config.json")
    return out_dir


# --------------------------------------------------------------------------------------------
# command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m instructcv_core.model.pretrain_mini", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="pretrain the mini base into --out")
    build.add_argument("--out", type=Path, default=VERSIONED_BASE)
    build.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    build.add_argument("--workers", type=int, default=2, help="processes rendering the corpus (no effect on the result)")
    build.add_argument("--caption-states", type=Path, default=None, help="an `embed` file instead of running the text encoder")
    embed = sub.add_parser("embed", help="write the text encoder's states of every corpus caption to --out (.npz)")
    embed.add_argument("--out", type=Path, required=True)
    for p in (build, embed):
        for f in dataclasses.fields(PretrainConfig):
            p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default,
                           help=f.metadata["help"].replace("%", "%%"))
    args = parser.parse_args(argv)
    config = PretrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PretrainConfig)})
    if args.command == "embed":
        from instructcv_core.model.pretrain_corpus import all_captions

        captions = all_captions() + [""]
        states, identity = caption_states(captions)
        save_caption_states(args.out, captions, states, identity)
        print(f"{len(captions)} caption states written to {args.out}")
        return 0
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    command = "python -m instructcv_core.model.pretrain_mini " + " ".join(argv if argv is not None else sys.argv[1:])
    pretrain(config, args.out, device=args.device, caption_states_path=args.caption_states, workers=args.workers,
             command=command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
