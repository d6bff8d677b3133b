"""Prompt embeddings of a frozen text encoder, computed exactly as the diffusers pipelines compute them."""

from __future__ import annotations

from collections.abc import Sequence

import torch


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
