"""Inference: batched InstructPix2Pix 3-way classifier-free guidance.

* :mod:`.config`: :class:`~.config.SamplerConfig` and :class:`~.config.Request` (plain data, no torch);
* :mod:`.sampler`: :class:`~.sampler.InstructCVSampler` (torch, diffusers).
"""
