"""Samplers: autoregressive, multi-step and one-step block diffusion.

Each sampler is a frozen, hashable config whose `sample(model, params,
context, key=None)` (also `__call__`) is jitted with the config and the model
static, runs a `lax.while_loop` with a per-example done flag and no host
synchronisation, and compiles once per (batch size, context shapes, budget).
Any model implementing `protocol.DecodeModel` can be decoded.

  AutoregressiveSampler  one token per forward (TPF = 1)
  MultiStepSampler       ECHO_Base: `steps` confidence-threshold steps per block
  OneStepSampler         ECHO: one fused forward per block (TPF = block_len)
"""

from echo_jax.sampling.ar import AutoregressiveSampler
from echo_jax.sampling.block_decode import BlockSamplerConfig
from echo_jax.sampling.commit import (
  Sampling,
  choose_tokens,
  commit_mask,
  draw_tokens,
  transfer_schedule,
)
from echo_jax.sampling.multi_step import MultiStepSampler
from echo_jax.sampling.one_step import OneStepSampler
from echo_jax.sampling.protocol import DecodeModel, SplittableContext
from echo_jax.sampling.state import SampleOutput, SampleStats
from echo_jax.sampling.stops import RepetitionGuard

__all__ = [
  "AutoregressiveSampler",
  "BlockSamplerConfig",
  "DecodeModel",
  "MultiStepSampler",
  "OneStepSampler",
  "RepetitionGuard",
  "SampleOutput",
  "SampleStats",
  "Sampling",
  "SplittableContext",
  "choose_tokens",
  "commit_mask",
  "draw_tokens",
  "transfer_schedule",
]
