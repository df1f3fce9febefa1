"""Loop states and results of the samplers (flax.struct dataclasses, batch-leading).

Shapes: B batch, T tokens of one block (block_len), N blocks decoded at most,
R response tokens returned.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class SampleStats:
  """What decoding cost, per example. `forwards_B` excludes the prefill."""

  forwards_B: jax.Array  # int32 [B]: decode forwards this example took part in
  tokens_B: jax.Array  # int32 [B]: response tokens committed (also those after EOS in its block)
  eos_B: jax.Array  # bool [B]: stopped because it produced EOS
  looped_B: jax.Array  # bool [B]: stopped by the repetition-loop guard
  batch_forwards: jax.Array  # int32 []: model calls of the whole batch (lockstep), excl. prefill

  @property
  def tpf_B(self) -> jax.Array:
    """float32 [B]: tokens per forward."""
    return self.tokens_B / jnp.maximum(self.forwards_B, 1)

  @property
  def loops(self) -> jax.Array:
    """int32 []: reports stopped by the repetition guard."""
    return jnp.sum(self.looped_B.astype(jnp.int32))


@flax.struct.dataclass
class SampleOutput:
  """A sampler's result: the reports (cut at the first EOS) and the cost."""

  tokens_BR: jax.Array  # int32 [B, R]: response tokens; pad from the first EOS on
  lengths_B: jax.Array  # int32 [B]: tokens before the first EOS (= the report's length)
  stats: SampleStats


@flax.struct.dataclass
class BlockState:
  """Loop state of the block-diffusion samplers (multi-step and one-step)."""

  cache: Any  # the model's KV cache; cache.length is shared by the batch or per row
  block: jax.Array  # int32 []: blocks the batch has decoded (= every row's block in lockstep)
  step: jax.Array  # int32 []: denoising step inside the block
  x_BT: jax.Array  # int32 [B, T]: tokens of the current block (committed or <|MASK|>)
  masked_BT: jax.Array  # bool [B, T]: positions of the current block still to commit
  prev_BT: jax.Array  # int32 [B, T]: the finished previous block (appended by the next forward)
  buf_BNT: jax.Array  # int32 [B, N*T]: every decoded block on the block grid; pad elsewhere
  done_B: jax.Array  # bool [B]: finished (EOS, budget or loop); later blocks are ignored
  eos_B: jax.Array  # bool [B]
  looped_B: jax.Array  # bool [B]
  forwards_B: jax.Array  # int32 [B]
  tokens_B: jax.Array  # int32 [B]
  batch_forwards: jax.Array  # int32 []
  block_B: jax.Array  # int32 [B]: index n of the block each row decodes
  calls_B: jax.Array  # int32 [B]: model calls of the batch while the row held its example
  pos0_B: jax.Array  # int32 [B]: position id of the first response token
  tail_BT: jax.Array  # int32 [B, T]: the prompt's tail that opens block 0 (released grid)
  tail_len_B: jax.Array  # int32 [B]: its length (0 on the aligned grid)
  blocks_B: jax.Array  # int32 [B]: the row's block budget
  rec: Any = None  # Records while recording (block_decode.record_rollout), else None
  aux_cache: Any = None  # the prefix model's cache while recording with one, else None


@flax.struct.dataclass
class Records:
  """What a recording rollout keeps per response position (R = N*T, aligned grid)."""

  tokens_BR: jax.Array  # int32: the token committed there by the decoding model; pad where none
  clean_BR: jax.Array  # int32: the clean block written into the cache (the prefix model's if any)
  steps_BR: jax.Array  # int32: the 1-based step of its block that committed it; 0 where none
  probs_BRX: jax.Array  # float32: the distribution at that step (V) or its top-k probabilities
  ids_BRX: jax.Array  # int32: the top-k ids ([B, R, 1] zeros when recording all of V)


@flax.struct.dataclass
class TokenState:
  """Loop state of the autoregressive sampler (next-token logits)."""

  cache: Any  # the model's KV cache
  t: jax.Array  # int32 []: steps the batch has run (= every row's token in lockstep)
  last_B: jax.Array  # int32 [B]: the token fed at this step (its logit predicts token t)
  buf_BR: jax.Array  # int32 [B, R]: generated tokens; pad elsewhere
  done_B: jax.Array  # bool [B]
  eos_B: jax.Array  # bool [B]
  looped_B: jax.Array  # bool [B]
  forwards_B: jax.Array  # int32 [B]
  batch_forwards: jax.Array  # int32 []
  t_B: jax.Array  # int32 [B]: index of the token each row generates
  calls_B: jax.Array  # int32 [B]: model calls of the batch while the row held its example
  pos0_B: jax.Array  # int32 [B]: position id of the first response token
