"""One training step of the InstructPix2Pix recipe: the loss of a micro-batch and the update it feeds.

- Loss: L2 between the UNet output and the scheduler's target (noise for epsilon, velocity for
  v-prediction) at timesteps drawn uniformly (from ``train_timesteps``; every one by default), on ``scaling_factor * z`` with ``z`` drawn from the VAE
  posterior of the target; the UNet input is ``cat(noisy latent, unscaled posterior mode of the input)``.
- Conditioning dropout per sample (5% text only, 5% both, 5% image only); null text = encoder(""),
  null image = zero latent (:func:`apply_conditioning_dropout`).
- Joint horizontal flip of input and target, p = 0.5.

The ``onestep`` objective (Garcia et al., "Fine-Tuning Image-Conditional Diffusion Models is Easier
than You Think", WACV 2025) trains what a one-step deterministic DDIM sampler with trailing spacing
runs: the UNet once at t = T - 1 on ``cat(Gaussian noise, image latent)``, the x0 its prediction
implies (:func:`predicted_x0`), and a task loss on that x0 (latent MSE, or L1/L2 on the image the
frozen VAE decodes from it). Flip, latents and conditioning are the diffusion objective's.

Every random draw comes, in a fixed order, from the one generator a micro-batch is given.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def apply_conditioning_dropout(text_emb, image_latents, null_text_emb, probs, generator):
    """InstructPix2Pix classifier-free-guidance dropout, per sample (official `ddpm_edit.get_input`).

    One r ~ U(0, 1) per sample: text is replaced by the null embedding when r < p1 + p2, the image
    latent by zeros when p1 <= r < p1 + p2 + p3 (so p1 text only, p2 both, p3 image only).
    """
    p_text, p_both, p_image = probs
    r = torch.rand(text_emb.shape[0], generator=generator).to(text_emb.device)
    drop_text = r < p_text + p_both
    drop_image = (r >= p_text) & (r < p_text + p_both + p_image)
    text_emb = torch.where(drop_text[:, None, None], null_text_emb.to(text_emb.dtype).expand_as(text_emb), text_emb)
    image_latents = torch.where(drop_image[:, None, None, None], torch.zeros_like(image_latents), image_latents)
    return text_emb, image_latents


class TextEmbeddings:
    """Frozen text-encoder outputs cached per distinct instruction (there are few; encoding is costly on CPU).

    Each prompt is encoded alone, exactly as the diffusers pipeline encodes it (`model.encode_prompt`),
    so an embedding never depends on which other prompts shared its batch. The cache is bounded;
    an evicted prompt is re-encoded to the same values.
    """

    def __init__(self, tokenizer, text_encoder, max_entries: int = 4096):
        self.tokenizer, self.text_encoder, self.max_entries = tokenizer, text_encoder, max_entries
        self.cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> torch.Tensor:
        from instructcv_core.model.prompts import encode_prompt

        for prompt in dict.fromkeys(prompts):
            if prompt not in self.cache:
                if len(self.cache) >= self.max_entries:
                    self.cache.pop(next(iter(self.cache)))
                self.cache[prompt] = encode_prompt(self.tokenizer, self.text_encoder, [prompt])[0].float()
        return torch.stack([self.cache[p] for p in prompts])


def predicted_x0(noise_scheduler, model_output: torch.Tensor, sample: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """The clean latent x0 a model output implies at ``timesteps`` (DDIM's ``pred_original_sample``).

    v-prediction: x0 = sqrt(a_t) z_t - sqrt(1 - a_t) v; epsilon: x0 = (z_t - sqrt(1 - a_t) eps) / sqrt(a_t),
    with a_t = ``alphas_cumprod[t]``. No clipping (the saved DDIM scheduler does not clip either).
    """
    alphas = noise_scheduler.alphas_cumprod.to(sample.device, torch.float32)[timesteps]
    alphas = alphas.reshape(-1, *([1] * (sample.dim() - 1)))
    model_output, sample = model_output.float(), sample.float()
    if noise_scheduler.config.prediction_type == "v_prediction":
        return alphas.sqrt() * sample - (1 - alphas).sqrt() * model_output
    if noise_scheduler.config.prediction_type == "epsilon":
        return (sample - (1 - alphas).sqrt() * model_output) / alphas.sqrt()
    raise ValueError(f"one-step training supports epsilon and v_prediction models, not {noise_scheduler.config.prediction_type!r}")


@dataclass
class DiffusionObjective:
    """The training loss of a micro-batch: the UNet being trained, the frozen parts and the recipe.

    vae: the frozen VAE in ``weight_dtype`` on ``device`` (unused when batches carry cached latent
    statistics and the loss is not in pixel space). null_text: ``texts([""])``, the null prompt of
    classifier-free guidance. ``objective``: ``diffusion`` (the InstructPix2Pix loss) or ``onestep``
    (the one-step x0 loss named by ``onestep_loss``; batches then carry ``target`` images when it is
    a pixel loss).
    """

    unet: torch.nn.Module
    vae: torch.nn.Module
    noise_scheduler: object
    texts: TextEmbeddings
    null_text: torch.Tensor
    scaling_factor: float
    weight_dtype: torch.dtype
    device: torch.device
    conditioning_dropout: tuple[float, float, float]
    random_flip: bool
    train_timesteps: tuple[int, int] | None = None  # [low, high); None: every training timestep
    objective: str = "diffusion"
    onestep_loss: str = "latent"

    @classmethod
    def from_config(cls, config, unet, base, frozen, texts: TextEmbeddings) -> "DiffusionObjective":
        """The objective of a `TrainConfig` run: its recipe knobs, the base's scheduler and VAE scaling, the
        frozen parts (`training.setup.frozen_parts`) and the null prompt ``texts([""])`` (CLIP("") in the official code)."""
        return cls(unet=unet, vae=frozen.vae, noise_scheduler=base.noise_scheduler, texts=texts, null_text=texts([""]),
                   scaling_factor=base.vae.config.scaling_factor, weight_dtype=frozen.weight_dtype, device=frozen.device,
                   conditioning_dropout=config.conditioning_dropout, random_flip=config.random_flip,
                   train_timesteps=config.train_timesteps, objective=config.objective, onestep_loss=config.onestep_loss)

    def micro_batch_loss(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        """The loss of one micro-batch; draws flip, posterior eps, noise, timesteps and dropout from ``generator``
        (the one-step objective: flip, noise and dropout)."""
        from instructcv_core.training.latent_cache import posterior_stats

        device = self.device
        n = len(batch["instruction"])
        flip = torch.rand(n, generator=generator) < 0.5  # drawn even when flips are off: same stream
        if not self.random_flip:
            flip = torch.zeros_like(flip)
        if "input_stats" in batch:
            rows = torch.arange(n)
            input_stats = batch["input_stats"][rows, flip.long()].to(device)  # (n, 2, C, h, w)
            target_stats = batch["target_stats"][rows, flip.long()].to(device)
            image_latents, target_mean, target_std = input_stats[:, 0], target_stats[:, 0], target_stats[:, 1]
        else:
            # One joint horizontal flip of input and target, then one VAE pass over both.
            pair = torch.cat([batch["input"], batch["target"]]).to(device)
            pair = torch.where(torch.cat([flip, flip]).to(device)[:, None, None, None], pair.flip(-1), pair)
            mean, std = posterior_stats(self.vae, pair.to(self.weight_dtype))
            image_latents, target_mean, target_std = mean[:n].float(), mean[n:].float(), std[n:].float()
        if self.objective == "onestep":
            return self._onestep_loss(batch, flip, image_latents.float(), target_mean, generator)
        # Target latent: a posterior sample (mean + std * eps, as latent_dist.sample()), scaled.
        eps = torch.randn(target_mean.shape, generator=generator).to(device)
        latents = (target_mean + target_std * eps) * self.scaling_factor
        # Image condition: the posterior mode, unscaled (the official code's encode_first_stage(...).mode()).
        image_latents = image_latents.float()
        noise = torch.randn(latents.shape, generator=generator).to(device)
        low, high = self.train_timesteps or (0, self.noise_scheduler.config.num_train_timesteps)
        if high > self.noise_scheduler.config.num_train_timesteps:
            raise ValueError(f"train_timesteps {low, high} exceed the scheduler's {self.noise_scheduler.config.num_train_timesteps}")
        timesteps = torch.randint(low, high, (n,), generator=generator).to(device)
        text_emb, image_latents = apply_conditioning_dropout(self.texts(batch["instruction"]), image_latents, self.null_text,
                                                             self.conditioning_dropout, generator)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        if self.noise_scheduler.config.prediction_type == "epsilon":
            target = noise
        else:  # v_prediction
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        pred = self.unet(torch.cat([noisy, image_latents], dim=1), timesteps, encoder_hidden_states=text_emb).sample
        return F.mse_loss(pred.float(), target.float(), reduction="mean")

    def _onestep_loss(self, batch: dict, flip: torch.Tensor, image_latents: torch.Tensor, target_mean: torch.Tensor,
                      generator: torch.Generator) -> torch.Tensor:
        """The one-step sampler's x0 at t = T - 1 from Gaussian noise, against the target (latent or pixels)."""
        device, n = self.device, len(flip)
        noisy = torch.randn(target_mean.shape, generator=generator).to(device)  # init_noise_sigma = 1 (DDIM)
        timesteps = torch.full((n,), self.noise_scheduler.config.num_train_timesteps - 1, dtype=torch.long, device=device)
        text_emb, image_latents = apply_conditioning_dropout(self.texts(batch["instruction"]), image_latents, self.null_text,
                                                             self.conditioning_dropout, generator)
        pred = self.unet(torch.cat([noisy, image_latents], dim=1), timesteps, encoder_hidden_states=text_emb).sample
        x0 = predicted_x0(self.noise_scheduler, pred, noisy, timesteps)
        if self.onestep_loss == "latent":
            # The deterministic target latent: the posterior mean, scaled (what the sampler's x0 should be).
            return F.mse_loss(x0, target_mean.float() * self.scaling_factor, reduction="mean")
        if "target" not in batch:
            raise ValueError("a pixel-space one-step loss needs the batch's target images (PairDataset(target_images=True))")
        target = batch["target"].to(device).float()
        target = torch.where(flip.to(device)[:, None, None, None], target.flip(-1), target)
        decoded = self.vae.decode((x0 / self.scaling_factor).to(self.weight_dtype)).sample.float()
        if self.onestep_loss == "pixel_l1":
            return F.l1_loss(decoded, target, reduction="mean")
        if self.onestep_loss == "pixel_l2":
            return F.mse_loss(decoded, target, reduction="mean")
        raise ValueError(f"unknown onestep_loss {self.onestep_loss!r}")


def train_micro_batch(accelerator, objective: DiffusionObjective, optimizer, lr_scheduler, batch: dict,
                      generator: torch.Generator, max_grad_norm: float | None) -> torch.Tensor:
    """Backpropagate one micro-batch's loss; on the last micro-batch of an accumulation, update the weights.

    Under ``accelerator.accumulate`` the optimizer and scheduler steps only take effect when gradients
    sync (every ``gradient_accumulation_steps`` micro-batches); the gradient norm is clipped then.
    Returns the (undetached) loss.
    """
    with accelerator.accumulate(objective.unet):
        loss = objective.micro_batch_loss(batch, generator)
        accelerator.backward(loss)
        if accelerator.sync_gradients and max_grad_norm is not None:
            accelerator.clip_grad_norm_(objective.unet.parameters(), max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return loss

