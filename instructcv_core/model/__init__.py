"""The base model of InstructCV: Stable Diffusion v1.5 components, or a tiny stand-in of the same shape.

InstructCV fine-tunes Stable Diffusion v1.5 with the InstructPix2Pix recipe (reference §2, §7.1):
the UNet's ``conv_in`` is widened from 4 to 8 input channels (noisy latent ⊕ unscaled VAE posterior
mode of the input image; the 4 new channels start at zero); the VAE and the text encoder are frozen.

Two kinds of base model go through the same loading code:

* ``paper`` profile: SD v1.5, given as a Hugging Face hub id (from the local cache unless
  ``allow_network``), a local diffusers folder, or a single original ``.safetensors``/``.ckpt`` file.
* ``mini`` profile: a tiny SD-shaped model built from config and saved in the real diffusers folder
  layout (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``),
  so stock ``StableDiffusionPipeline.from_pretrained`` loads it. A random VAE cannot reconstruct
  images, so the mini base step first fits the tiny autoencoder on mini-benchmark images.

Modules: :mod:`~instructcv_core.model.loading` (checks, loading, identity of a base),
:mod:`~instructcv_core.model.config` (the tiny model's shape and the base-model stage's config, no torch),
:mod:`~instructcv_core.model.tiny_base` (building the tiny model),
:mod:`~instructcv_core.model.tiny_tokenizer` (a CLIP tokenizer built without the hub),
:mod:`~instructcv_core.model.conv_in` (widening ``conv_in``), :mod:`~instructcv_core.model.prompts`
(prompt embeddings), :mod:`~instructcv_core.model.autoencoder` (fitting the tiny VAE and its
reconstruction report). Import from the modules: this package imports nothing, so reading a config
does not load torch.

Conventions: images are ``uint8`` RGB ``(N, H, W, 3)`` arrays; in tensors they are ``float32``
``(N, 3, H, W)`` in ``[-1, 1]`` (``x / 127.5 - 1``), as diffusers pipelines expect. Latents are
``(N, 4, H / f, W / f)`` with ``f = 2 ** (len(vae.config.block_out_channels) - 1)`` (8 for SD, 4
for the tiny default). Nothing here touches the network at import time; loading does so only when
``allow_network=True``.
"""
