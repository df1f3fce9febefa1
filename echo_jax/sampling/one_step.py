"""One-step block diffusion (ECHO, the DCD student): one forward per block.

Each forward commits every position of its block. Fused decode: the forward
that predicts block n also writes the keys/values of the finished block n-1
(2B tokens in: block n-1 clean with `num_append=B`, then block n all
<|MASK|>; the logits of the last B). The first block after the prefill has
only its B masked tokens in. So tokens per forward is exactly B (in the
released grid the first block holds the prompt's tail, so it commits fewer).

Example:
  sampler = OneStepSampler(eos_id=ids.eos, mask_id=ids.mask, pad_id=ids.pad,
                           block_len=8, max_new_tokens=256)
  out = sampler(model, params, context)
"""

from __future__ import annotations

import dataclasses

from echo_jax.sampling.block_decode import BlockSamplerConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class OneStepSampler(BlockSamplerConfig):
  """One forward per block, fused with the cache write of the previous block."""

  def validate(self, model) -> None:
    if self.steps != 1 or not self.fused_append:
      raise ValueError(
        "OneStepSampler decodes each block in one fused forward: leave steps=1 and "
        "fused_append=True (use MultiStepSampler for more steps)"
      )
    super().validate(model)
