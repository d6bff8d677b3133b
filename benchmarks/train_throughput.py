"""Training throughput (samples/s) of one InstructPix2Pix optimisation step, tiny model or SD v1.5.

    python benchmarks/train_throughput.py --model tiny --resolution 64 --batch 32 --threads 1  # CPU
    python benchmarks/train_throughput.py --model tiny --unet-channels 64 128 --threads 1     # a wider tiny UNet
    python benchmarks/train_throughput.py --model tiny --attention math --profile             # where a CPU step goes
    python benchmarks/train_throughput.py --model sd15 --resolution 256 --batch 64 \\
        --precision bf16 [--gradient-checkpointing] [--no-cache]                          # GPU

`sd15` builds the real SD v1.5 UNet (8-channel conv_in), VAE and CLIP ViT-L/14 text encoder from their
published configs with random weights (nothing is downloaded). With latents cached (the default) a
step is UNet forward + backward + AdamW; `--no-cache` adds the VAE encoding of input and target, as
a run without latent caching does. Text embeddings are computed once (the few distinct instructions
are cached in training too). `--attention` pins the backend of torch's scaled-dot-product attention
(which diffusers' default processor calls); `--profile` prints the operators that took the most time
over the timed steps (torch.profiler).
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
import torch.nn.functional as F

SD15_UNET = dict(
    sample_size=64, in_channels=8, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8,
)
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512,
)


def build(model: str, device: str, unet_channels: tuple[int, ...] | None = None):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    if model == "sd15":
        unet, vae, text_dim, downsample = UNet2DConditionModel(**SD15_UNET), AutoencoderKL(**SD15_VAE), 768, 8
    else:
        from instructcv_core.model.config import TinyModelConfig
        from instructcv_core.model.conv_in import widen_conv_in
        from instructcv_core.model.tiny_base import tiny_unet, tiny_vae

        config = TinyModelConfig(**({"unet_block_out_channels": unet_channels} if unet_channels else {}))
        unet = widen_conv_in(tiny_unet(config, cross_attention_dim=384))
        vae, text_dim, downsample = tiny_vae(config), 384, 2 ** (len(config.vae_block_out_channels) - 1)
    return unet.to(device), vae.to(device).eval().requires_grad_(False), text_dim, downsample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("tiny", "sd15"), default="tiny")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--no-cache", action="store_true", help="encode input and target with the VAE every step")
    parser.add_argument("--unet-channels", type=int, nargs="+", default=None,
                        help="tiny model: UNet channels per level (default: the mini profile's)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--attention", choices=("default", "flash", "math"), default="default",
                        help="scaled-dot-product attention backend (default: torch's choice)")
    parser.add_argument("--profile", action="store_true", help="print the top operators of the timed steps")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    unet, vae, text_dim, downsample = build(args.model, device, tuple(args.unet_channels) if args.unet_channels else None)
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    b, r, lat = args.batch, args.resolution, args.resolution // downsample
    text = torch.randn(b, 77, text_dim, device=device)
    images = torch.rand(2, b, 3, r, r, device=device) * 2 - 1
    cached = torch.randn(2, b, 4, lat, lat, device=device)

    def step() -> None:
        with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            if args.no_cache:
                with torch.no_grad():
                    target = vae.encode(images[0]).latent_dist.sample() * 0.18215
                    condition = vae.encode(images[1]).latent_dist.mode()
            else:
                target, condition = cached[0], cached[1]
            noise = torch.randn_like(target)
            t = torch.randint(0, 1000, (b,), device=device)
            prediction = unet(torch.cat([target + noise, condition], 1), t, encoder_hidden_states=text).sample
            loss = F.mse_loss(prediction.float(), noise.float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"default": contextlib.nullcontext(), "flash": sdpa_kernel([SDPBackend.FLASH_ATTENTION]),
               "math": sdpa_kernel([SDPBackend.MATH])}[args.attention]
    profiler = contextlib.nullcontext()
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        profiler = profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else []))
    with backend:
        for _ in range(args.warmup):
            step()
        if device == "cuda":
            torch.cuda.synchronize()
        with profiler as prof:
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            if device == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
    params = sum(p.numel() for p in unet.parameters()) / 1e6
    print(f"model {args.model} ({params:.1f}M UNet params, {tuple(unet.config.block_out_channels)}) on {device} "
          f"({torch.get_num_threads()} threads): resolution {r}, batch {b}, {args.precision}, "
          f"cache {'off' if args.no_cache else 'on'}, gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}, "
          f"attention {args.attention}")
    print(f"{args.steps} steps in {seconds:.2f} s: {args.steps * b / seconds:.1f} samples/s, {seconds / args.steps * 1000:.0f} ms/step")
    if args.profile:
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    if device == "cuda":
        print(f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
