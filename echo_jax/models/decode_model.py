"""EchoVLM behind the sampler protocol (echo_jax.sampling.protocol.DecodeModel).

The samplers take the model as a static (hashed) jit argument and the weights as a
pytree, so the adapter holds only the NNX GraphDef and merges it with the
`nnx.State` it is given on every call (cheap: merging happens at trace time).

    decode_model, params = EchoDecodeModel.from_model(model)
    context = DecodeContext(tokens_BP, positions_3BP, valid_BP, vision)
    cache, next_position_B = decode_model.prefill(params, context, cache_length=S, block_len=B)
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from echo_jax.models.config import ModelConfig
from echo_jax.models.decoder import KVCache
from echo_jax.models.vision import VisionInputs
from echo_jax.models.vlm import EchoVLM


@flax.struct.dataclass
class DecodeContext:
  """The prompt of a batch: left-padded to P tokens (P a multiple of the block length).

  tokens_BP int32; positions_3BP int32 (positions.rope_positions); valid_BP bool (False
  for left padding); vision: the batch's images, or None for text-only prompts.
  """

  tokens_BP: jax.Array
  positions_3BP: jax.Array
  valid_BP: jax.Array
  vision: VisionInputs | None = None


@dataclasses.dataclass(frozen=True)
class EchoDecodeModel:
  """Hashable DecodeModel over an EchoVLM; `params` is the model's `nnx.State`."""

  graphdef: nnx.GraphDef
  config: ModelConfig
  # Hashing a GraphDef walks the whole module tree (milliseconds for a small model), and
  # jit hashes its static arguments on every call: hash once.
  _hash: int = dataclasses.field(init=False, repr=False, compare=False)

  def __post_init__(self):
    object.__setattr__(self, "_hash", hash((self.graphdef, self.config)))

  def __hash__(self) -> int:
    return self._hash

  @classmethod
  def from_model(cls, model: EchoVLM) -> tuple[EchoDecodeModel, nnx.State]:
    graphdef, params = nnx.split(model)
    return cls(graphdef, model.config), params

  def model(self, params: nnx.State) -> EchoVLM:
    return nnx.merge(self.graphdef, params)

  def context_slots(self, context: DecodeContext, *, block_len: int) -> int:
    """P rounded up to a multiple of `block_len` (the cache length after prefill)."""
    p = context.tokens_BP.shape[1]
    return -(-p // block_len) * block_len

  def prefill(
    self, params: nnx.State, context: DecodeContext, *, cache_length: int, block_len: int
  ) -> tuple[KVCache, jax.Array]:
    """Prefill after left-padding the context to `context_slots` columns (padding is
    invisible and the block grid is anchored at the context end, so nothing changes
    for the real tokens)."""
    extra = self.context_slots(context, block_len=block_len) - context.tokens_BP.shape[1]
    if extra:
      pad = self.config.tokens.pad
      context = context.replace(
        tokens_BP=jnp.pad(context.tokens_BP, ((0, 0), (extra, 0)), constant_values=pad),
        positions_3BP=jnp.pad(context.positions_3BP, ((0, 0), (0, 0), (extra, 0))),
        valid_BP=jnp.pad(context.valid_BP, ((0, 0), (extra, 0))),
      )
    return self.model(params).prefill(
      context.tokens_BP,
      context.positions_3BP,
      context.valid_BP,
      context.vision,
      cache_length=cache_length,
      block_len=block_len,
    )

  def extend(
    self,
    params: nnx.State,
    cache: KVCache,
    tokens_BT: jax.Array,
    positions_BT: jax.Array,
    *,
    block_len: int,
    num_append: int,
  ) -> tuple[jax.Array, KVCache]:
    return self.model(params).extend(
      cache, tokens_BT, positions_BT, block_len=block_len, num_append=num_append
    )

  # --- optional protocol part (sampling.protocol.SplittableContext) ---

  def context_lengths(self, context: DecodeContext) -> jax.Array:
    """int32 (B,): real tokens per example."""
    return context.valid_BP.sum(axis=1).astype(jnp.int32)

  def split_context(
    self, context: DecodeContext, tail_len_B: jax.Array, *, max_tail: int
  ) -> tuple[DecodeContext, jax.Array]:
    """Move each example's last `tail_len_B[b]` (<= max_tail) tokens out of the context.

    The head is the context shifted right by tail_len_B (left-padded again, same
    positions for the tokens it keeps); images stay with the head, so the tail must be
    text. Returns (head, tail_BT) with the tail left-aligned in (B, max_tail).
    """
    p = context.tokens_BP.shape[1]
    tail_B = jnp.clip(tail_len_B.astype(jnp.int32), 0, max_tail)
    src_BP = jnp.arange(p)[None] - tail_B[:, None]  # head column i takes old column i - tail
    keep_BP = src_BP >= 0
    src_BP = jnp.clip(src_BP, 0, p - 1)
    take = lambda x_BP: jnp.take_along_axis(x_BP, src_BP, axis=1)
    head = context.replace(
      tokens_BP=jnp.where(keep_BP, take(context.tokens_BP), self.config.tokens.pad),
      positions_3BP=jnp.where(keep_BP[None], jax.vmap(take)(context.positions_3BP), 0).astype(
        context.positions_3BP.dtype
      ),
      valid_BP=keep_BP & take(context.valid_BP),
    )
    tail_src_BT = jnp.clip(p - tail_B[:, None] + jnp.arange(max_tail)[None], 0, p - 1)
    tail_BT = jnp.take_along_axis(context.tokens_BP, tail_src_BT, axis=1)
    tail_BT = jnp.where(
      jnp.arange(max_tail)[None] < tail_B[:, None], tail_BT, self.config.tokens.pad
    )
    return head, tail_BT.astype(jnp.int32)
