"""What a mini UNet's attention layout costs per training step on the CPU.

    python benchmarks/unet_layout_cost.py [--batch 32] [--steps 6] [--threads 2]

Times one fine-tune step (forward, backward, AdamW) of randomly initialised UNets of the mini base's
shape (8-channel conv_in, 16x16 latent, block channels (32, 64), 12 text tokens of 384 dimensions,
t = 999) that differ only in where attention sits and how many heads it has. diffusers reads
``attention_head_dim`` as the number of heads per block, so the mini base's 8 are 8 heads of 4
dimensions at the 16x16 level, and the CPU attention kernel's cost grows with heads x tokens^2, not
with the head width. Prints the median step of ``--steps`` (the first is dropped as warm-up).
"""

from __future__ import annotations

import argparse
import statistics
import time

TOP = (("CrossAttnDownBlock2D", "DownBlock2D"), ("UpBlock2D", "CrossAttnUpBlock2D"))  # the mini base's (SD's) pattern
LOW = (("DownBlock2D", "CrossAttnDownBlock2D"), ("CrossAttnUpBlock2D", "UpBlock2D"))  # attention at 8x8 only

LAYOUTS = {  # name: (heads, blocks, only_cross_attention)
    "base: 8 heads, attention at 16x16 and 8x8": (8, TOP, False),
    "1 head": (1, TOP, False),
    "2 heads": (2, TOP, False),
    "2 heads, no self-attention at 16x16": (2, TOP, (True, False)),
    "8 heads, attention at 8x8 only": (8, LOW, False),
    "2 heads, attention at 8x8 only": (2, LOW, False),
}


def step_seconds(heads, blocks, only_cross, batch: int, steps: int) -> tuple[float, int]:
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=16, in_channels=8, out_channels=4, block_out_channels=(32, 64),
                                layers_per_block=1, down_block_types=blocks[0], up_block_types=blocks[1],
                                cross_attention_dim=384, attention_head_dim=heads, norm_num_groups=8,
                                only_cross_attention=only_cross)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    sample, text = torch.randn(batch, 8, 16, 16), torch.randn(batch, 12, 384)
    timesteps = torch.full((batch,), 999)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        unet(sample, timesteps, encoder_hidden_states=text).sample.pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]), sum(p.numel() for p in unet.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    base = None
    print(f"batch {args.batch}, {args.threads} threads, median of {args.steps - 1} steps")
    for name, (heads, blocks, only_cross) in LAYOUTS.items():
        seconds, params = step_seconds(heads, blocks, only_cross, args.batch, args.steps)
        base = base or seconds
        print(f"{name:45s} {seconds * 1000:6.0f} ms/step  {args.batch / seconds:6.1f} samples/s  "
              f"x{base / seconds:.2f}  {params / 1e6:.2f} M parameters", flush=True)


if __name__ == "__main__":
    main()
