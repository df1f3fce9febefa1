"""The small model protocol the samplers drive.

Any JAX model can be decoded by `echo_jax.sampling` if it offers these pure
functions. The model object itself must be hashable (it is a static argument
of the jitted sampler); weights travel separately as the `params` pytree.

Context: the model's own batch-leading pytree (tokens, images, positions,
validity), LEFT-padded so every example's last real token is the last column.

Cache: a pytree owned by the model with an int32 scalar field `length` (slots
filled, shared by the batch) and a `replace(**fields)` method, e.g. a
`flax.struct.dataclass`. Slots at or beyond `length` are never attended, so a
sampler can rewind the cache by `cache.replace(length=n)`. A cache made with
`cache_length` slots must accept `extend` calls as long as
`length + T <= cache_length` (T new tokens, stored or not).

Attention of new tokens (the rule `extend` follows):
  new token i attends every valid cache slot, and new token j whenever
  j // block_len <= i // block_len (block-causal among the new tokens;
  block_len=1 is causal, block_len=T is fully bidirectional).

Required: `context_slots`, `prefill`, `extend`. Optional, only for the
autoregressive sampler in next-token mode and for the authors' released block
grid: `context_lengths` and `split_context` (a sampler that needs them says so
with a TypeError when they are missing).
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

  def context_slots(self, context: Context, *, block_len: int) -> int:
    """Static number of cache slots `prefill` fills for this context.

    A Python int from static shapes only (the context's padded length rounded
    up to a multiple of `block_len`); the sampler sizes the cache as this plus
    the slots its response needs.
    """
    ...

  def prefill(
    self, params: Params, context: Context, *, cache_length: int, block_len: int
  ) -> tuple[Cache, jax.Array]:
    """Run the context into a new cache of `cache_length` slots.

    The context attends block-causally with `block_len` on a grid on which the
    context ends exactly at a block boundary (the model pads it on the left;
    padding is never attended and takes no position). Returns the cache, with
    `length == context_slots(context, block_len=block_len)`, and
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
    Logit i is whatever the model's head emits at new token i: for a diffusion
    model it scores the token *at* position i (no shift); for an
    autoregressive model it predicts the token at position i + 1. Samplers
    read it accordingly (see `AutoregressiveSampler.logits`).
    """
    ...


@runtime_checkable
class SplittableContext(Protocol):
  """Optional: lets a sampler move the last few context tokens out of the context.

  Used by the autoregressive sampler in next-token mode (the last context
  token is fed again so its logit predicts the first response token) and by
  the released block grid (the prompt's tail shares a block with the first
  response tokens).
  """

  def context_lengths(self, context: Context) -> jax.Array:
    """int32 [B]: number of real (non-padding) tokens of each example's context."""
    ...

  def split_context(
    self, context: Context, tail_len_B: jax.Array, *, max_tail: int
  ) -> tuple[Context, jax.Array]:
    """Move the last `tail_len_B[b]` real tokens of each example out of the context.

    Returns (head, tail_BT): `head` is a context of the same static shapes,
    left-padded again (its last real token is the one before the tail) and
    with the same positions for the tokens it keeps; `tail_BT` int32
    [B, max_tail] holds the moved tokens left-aligned (anything after
    `tail_len_B[b]` is ignored). The tail must be text: the sampler feeds it
    through `extend` at positions next_position_B(head) + 0, 1, ...
    """
    ...
