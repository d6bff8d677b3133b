"""Inference throughput: the sampler presets, and batched 3-way-CFG sampling versus the naive loop.

    python benchmarks/inference_throughput.py --model tiny --resolution 64 \\
        --presets paper few-4 few-10 one one+cfg --batch-sizes 32 --images 4 --instructions 8     # CPU
    python benchmarks/inference_throughput.py --model sd15 --resolution 256 --dtype float16 \\
        --presets paper few-4 few-10 one one+cfg --batch-sizes 64 --images 16 --instructions 16  # GPU
    python benchmarks/inference_throughput.py --model tiny --resolution 64 --steps 10           # CPU
    python benchmarks/inference_throughput.py --model sd15 --resolution 256 --steps 100 \\
        --dtype float16 --batch-sizes 1 16 64 --images 8 --instructions 8                        # GPU

`--presets`: one row per sampler preset (`instructcv_core.inference.config.SAMPLER_PRESETS`):
`paper` (100 Euler-ancestral steps, 3-way guidance), `few-<n>` (n trailing DDIM steps, guided),
`one` (one unguided DDIM step at t = 999) and `one+cfg` (the same step with the paper's guidance),
each generating the same requests with the batched sampler at the first `--batch-sizes` value:
images/s, UNet evaluations per query, seconds per image and the speed-up over `paper` (median of
`--repeats` timed runs after a warm-up batch).

Without `--presets`: `naive` calls the stock diffusers `StableDiffusionInstructPix2PixPipeline` once per (image,
instruction), as the official evaluation scripts call their sampler: the image is re-encoded and the
instruction re-embedded every time. `batched` is `instructcv_core.inference.sampler.InstructCVSampler`: one
UNet call for the three guidance branches of a whole batch, each image encoded once and each
instruction embedded once. Both generate the same requests (``--images`` images x ``--instructions``
instructions each, as evaluation asks every category of an image).

`sd15` builds the real SD v1.5 UNet (8-channel conv_in), VAE and a CLIP ViT-L/14-sized text encoder
from their published configs with random weights (nothing is downloaded; the tokenizer is built
locally): the timings are those of the real architecture. `tiny` is the mini profile's model.
Printed: images/s, seconds per image, UNet evaluations/s, and batch-1 latency.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.train_throughput import SD15_UNET, SD15_VAE  # noqa: E402
from instructcv_core.inference.config import PAPER_GUIDANCE, Request, SamplerConfig  # noqa: E402
from instructcv_core.inference.sampler import InstructCVSampler  # noqa: E402


def build_components(model: str, work_dir: Path, resolution: int):
    """(unet, vae, text_encoder, tokenizer, scheduler_config) with random weights."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from instructcv_core.model.config import TinyModelConfig
    from instructcv_core.model.conv_in import widen_conv_in
    from instructcv_core.model.tiny_base import sd_noise_scheduler, tiny_clip_text_encoder, tiny_unet, tiny_vae

    if model == "sd15":
        from transformers import CLIPTextConfig, CLIPTextModel

        from instructcv_core.model.tiny_tokenizer import build_clip_tokenizer

        tokenizer = build_clip_tokenizer(work_dir / "tokenizer")
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=max(len(tokenizer), 49408), hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
            num_attention_heads=12, max_position_embeddings=77, pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
        scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
        return UNet2DConditionModel(**SD15_UNET), AutoencoderKL(**SD15_VAE), text_encoder, tokenizer, scheduler.config
    config = TinyModelConfig(image_size=resolution, text_encoder="clip")
    text_encoder, tokenizer = tiny_clip_text_encoder(config, work_dir / "tokenizer")
    unet = widen_conv_in(tiny_unet(config, cross_attention_dim=text_encoder.config.hidden_size))
    return unet, tiny_vae(config), text_encoder, tokenizer, sd_noise_scheduler(config.prediction_type).config


def requests_for(images: int, instructions: int) -> tuple[list[Request], dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    pictures = {f"img{i}": rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for i in range(images)}
    words = ["cat", "dog", "person", "car", "chair", "table", "bed", "tree", "sky", "road", "wall", "floor"]
    requests = [Request(key, f"Segment the {words[j % len(words)]}.", 1000 * i + j)
                for i, key in enumerate(pictures) for j in range(instructions)]
    return requests, pictures


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_batched(sampler: InstructCVSampler, requests, pictures) -> float:
    sampler._image_cache.clear()
    sampler._text_cache.clear()
    sync(sampler.device)
    start = time.perf_counter()
    for _ in sampler.generate(requests, pictures):
        pass
    sync(sampler.device)
    return time.perf_counter() - start


def time_naive(sampler: InstructCVSampler, requests, pictures) -> float:
    """One stock-pipeline call per request (the official scripts' loop)."""
    from diffusers import StableDiffusionInstructPix2PixPipeline
    from PIL import Image

    cfg = sampler.config
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=sampler.vae, text_encoder=sampler.text_encoder, tokenizer=sampler.tokenizer, unet=sampler.unet,
        scheduler=sampler._scheduler_cls.from_config(sampler._scheduler_config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    sync(sampler.device)
    start = time.perf_counter()
    for r in requests:
        image = Image.fromarray(pictures[r.image_key]).resize((cfg.resolution,) * 2, Image.Resampling.LANCZOS)
        pipe(r.instruction, image=image, num_inference_steps=cfg.steps, guidance_scale=cfg.text_guidance,
             image_guidance_scale=cfg.image_guidance, generator=torch.Generator().manual_seed(r.seed), output_type="np")
    sync(sampler.device)
    return time.perf_counter() - start


def preset_config(spec: str, **knobs) -> SamplerConfig:
    """A preset row of the command line as a config: paper | few-<steps> | one | one+cfg (the paper's guidance)."""
    if spec.startswith("few-"):
        return SamplerConfig.from_preset("few", steps=int(spec[4:]), **knobs)
    if spec == "one+cfg":
        return SamplerConfig.from_preset("one", text_guidance=PAPER_GUIDANCE[0], image_guidance=PAPER_GUIDANCE[1], **knobs)
    if spec in ("paper", "one"):
        return SamplerConfig.from_preset(spec, **knobs)
    raise SystemExit(f"--presets: {spec!r} unknown; use paper, few-<2..10>, one or one+cfg")


def compare_presets(components, specs: list[str], requests, pictures, knobs: dict, repeats: int) -> None:
    """One row per preset: the same requests, batched; median of ``repeats`` timings after a warm-up batch."""
    configs = [preset_config(spec, **knobs) for spec in specs]
    print(f"{'preset':<20}{'batch':>6}{'UNet evals/query':>18}{'images/s':>11}{'s/image':>10}{'speed-up':>10}")
    rates = {}
    for config in configs:
        sampler = InstructCVSampler(*components, config=config)
        sampler.config = dataclasses.replace(config, preset="", steps=1)  # warm-up: kernels, allocator, batch shape
        time_batched(sampler, requests[: config.batch_size], pictures)
        sampler.config = config
        seconds = statistics.median(time_batched(sampler, requests, pictures) for _ in range(repeats))
        rates[config.label] = len(requests) / seconds
        speedup = f"{rates[config.label] / rates['paper']:.1f}x" if "paper" in rates else "–"
        print(f"{config.label:<20}{config.batch_size:>6}{config.unet_evals_per_query:>18}{rates[config.label]:>11.3f}"
              f"{seconds / len(requests):>10.4f}{speedup:>10}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("tiny", "sd15"), default="tiny")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--scheduler", default="euler_ancestral")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--instructions", type=int, default=8, help="instructions asked of each image")
    parser.add_argument("--naive", type=int, default=8, help="requests timed with the naive loop (0: skip)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--presets", nargs="+", default=None, metavar="PRESET",
                        help="compare sampler presets instead of batching: paper, few-<steps>, one, one+cfg "
                             "(put paper first for the speed-up column)")
    parser.add_argument("--repeats", type=int, default=3, help="--presets: timed runs per preset (the median is printed)")
    args = parser.parse_args()
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # no dtype-cast notice for every sampler built
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        components = build_components(args.model, Path(tmp), args.resolution)
        requests, pictures = requests_for(args.images, args.instructions)
        if args.presets:
            print(f"model={args.model} dtype={args.dtype} resolution={args.resolution} threads={torch.get_num_threads()} "
                  f"requests={len(requests)} ({args.images} images x {args.instructions} instructions) "
                  f"repeats={args.repeats} (median)")
            compare_presets(components, args.presets, requests, pictures,
                            {"resolution": args.resolution, "dtype": args.dtype, "batch_size": args.batch_sizes[0]},
                            args.repeats)
            return
        base = SamplerConfig(steps=args.steps, resolution=args.resolution, scheduler=args.scheduler, dtype=args.dtype,
                             batch_size=args.batch_sizes[0])
        sampler = InstructCVSampler(*components, config=base)
        print(f"model={args.model} device={sampler.device} dtype={args.dtype} resolution={args.resolution} "
              f"steps={args.steps} scheduler={args.scheduler} threads={torch.get_num_threads()} "
              f"requests={len(requests)} ({args.images} images x {args.instructions} instructions)")
        warm = SamplerConfig(**{**base.to_dict(), "steps": 1})
        sampler.config = warm
        time_batched(sampler, requests[:2], pictures)  # warm-up (kernels, allocator)
        print(f"{'mode':<10}{'batch':>6}{'images/s':>11}{'s/image':>10}{'UNet evals/s':>14}")
        if args.naive:
            sampler.config = base
            subset = requests[: args.naive]
            seconds = time_naive(sampler, subset, pictures)
            print(f"{'naive':<10}{1:>6}{len(subset) / seconds:>11.3f}{seconds / len(subset):>10.3f}"
                  f"{base.unet_evaluations(len(subset)) / seconds:>14.1f}")
        for batch in args.batch_sizes:
            sampler.config = SamplerConfig(**{**base.to_dict(), "batch_size": batch})
            subset = requests if batch > 1 else requests[: max(1, min(len(requests), args.naive or 4))]
            seconds = time_batched(sampler, subset, pictures)
            print(f"{'batched':<10}{batch:>6}{len(subset) / seconds:>11.3f}{seconds / len(subset):>10.3f}"
                  f"{base.unet_evaluations(len(subset)) / seconds:>14.1f}")


if __name__ == "__main__":
    main()
