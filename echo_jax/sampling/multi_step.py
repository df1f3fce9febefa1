"""Multi-step block diffusion (ECHO_Base, the RAD teacher).

Per block, up to `steps` denoising forwards; at step s, due_s = B // steps
tokens (the remainder spread over the first steps) are due: every masked
position with confidence strictly above `threshold` is committed if there are
at least due_s of them, else the due_s most confident (the released
`low_confidence_dynamic` rule; the released evaluation uses steps = B).
Greedy by default (confidence = softmax probability of the argmax).

The finished block is written into the cache by the next block's first
forward (`fused_append=True`, default: no extra forward) or by a forward of
its own (`fused_append=False`, as the released multi-step code does). Both
give the same tokens; `stats.forwards_B` counts what actually ran.

Example:
  sampler = MultiStepSampler(eos_id=ids.eos, mask_id=ids.mask, pad_id=ids.pad,
                             block_len=8, steps=8, max_new_tokens=256)
  out = sampler(model, params, context)   # out.tokens_BR, out.stats.tpf_B
"""

from __future__ import annotations

import dataclasses

from echo_jax.sampling.block_decode import BlockSamplerConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class MultiStepSampler(BlockSamplerConfig):
  """Multi-step block-diffusion sampler; see the module docstring."""

  steps: int = 8  # denoising steps per block, in [1, block_len]
  threshold: float = 0.85  # commit every masked position with confidence > threshold
  fused_append: bool = True  # write block n-1 into the cache in block n's first forward
