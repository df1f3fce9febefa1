"""The small model protocol the samplers drive.

Any JAX model can be decoded by `echo_jax.sampling` if it offers these two pure
functions. The model object itself must be hashable (it is a static argument
of the jitted sampler); weights travel separately as the `params` pytree.

Cache: a pytree owned by the model with an int32 scalar field `length` (slots
filled, shared by the batch) and a `replace(**fields)` method, e.g. a
`flax.struct.dataclass`. Slots at or beyond `length` are never attended, so a
sampler can rewind the cache by `cache.replace(length=n)`.

Attention of new tokens (the rule both functions follow):
  new token i attends every valid cache slot, and new token j whenever
  j // block_len <= i // block_len (block-causal among the new tokens;
  block_len=1 is causal, block_len=T is fully bidirectional).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax

Params = Any  # a pytree of arrays
Context = Any  # the model's own batch-leading pytree: tokens, images, masks, positions
Cache = Any


@runtime_checkable
class DecodeModel(Protocol):
  """What a sampler needs from a model."""

  def prefill(
    self, params: Params, context: Context, *, cache_length: int, block_len: int
  ) -> tuple[Cache, jax.Array]:
    """Run the context into a new cache of `cache_length` slots.

    The context attends block-causally with `block_len` on a grid on which the
    context ends exactly at a block boundary (the model pads it on the left;
    padding is never attended and takes no position). Returns the cache and
    `next_position_B`, the int32 position id of the first response token.
    """
    ...

  def extend(
    self,
    params: Params,
    cache: Cache,
    tokens_BT: jax.Array,
    positions_BT: jax.Array,
    *,
    block_len: int,
    num_append: int,
  ) -> tuple[jax.Array, Cache]:
    """Run T new text tokens at the given positions against the cache.

    Returns (logits_BTV float32, cache). The keys/values of the first
    `num_append` new tokens are written at slots [length, length + num_append)
    and `length` advances by `num_append`; the other new tokens are attended
    but not stored (multi-step denoising, the masked half of a fused step).
    Logit i scores the token *at* position i (no shift: diffusion models);
    an autoregressive sampler reads the last logit as the next token's.
    """
    ...
