"""Full-duplication block diffusion (BD3-LM / SDAR): packing [noisy (P+R) | clean (P+R)].

The baseline that RAD improves on, kept to compare cost and to check that
RAD computes the same objective. The whole sequence, context included, is duplicated;
the context is never noised, so each noisy copy is [context | noisy response]. With the
mask of `masks.bd3_mask` a noisy response block reads the context and earlier blocks from
the clean copy and its own block from its noisy copy, exactly the keys RAD gives it, so
the same `Corruption` yields the same loss as `rad.pack_rad_corrupted` at (C + 1)(P + R)
tokens instead of P + (C + 1) R.

Vision: the image pad tokens appear once per copy; a model that places image features
at <|image_pad|> tokens in order must fill every copy (the noisy context copies are
never read by a response token, so their features do not change the loss).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from echo_jax.diffusion.noise import Corruption, NoiseConfig, check_response, corrupt
from echo_jax.diffusion.packed import (
  PackedBatch,
  check_context,
  check_response_tokens,
  packed_loss,
  response_positions,
)
from echo_jax.models import masks


def pack_bd3_corrupted(
  context_tokens_BP: jax.Array,
  context_positions_3BP: jax.Array,
  context_valid_BP: jax.Array,
  response_tokens_BR: jax.Array,
  response_valid_BR: jax.Array,
  next_position_B: jax.Array,
  corruption: Corruption,
  *,
  block_len: int,
  mask_id: int,
) -> PackedBatch:
  """Pack a given corruption as [(context | noisy response) x C | context | clean response].

  Targets are the clean tokens; weights are 1 / (t C) at the masked noisy response
  positions and 0 elsewhere. The weighted span is [P, C (P + R)).
  """
  check_context(context_tokens_BP, context_positions_3BP, context_valid_BP)
  batch, context_len = context_tokens_BP.shape
  check_response_tokens(response_tokens_BR, response_valid_BR, next_position_B, batch)
  response_valid_BR = check_response(response_valid_BR, block_len)
  num_noisy = corruption.num_noisy
  if corruption.masked_CBR.shape != (num_noisy, *response_tokens_BR.shape):
    raise ValueError(
      f"corruption.masked_CBR {corruption.masked_CBR.shape} must be (C, *tokens_BR.shape) "
      f"with tokens_BR {response_tokens_BR.shape}"
    )
  context_BP = context_tokens_BP.astype(jnp.int32)
  response_BR = response_tokens_BR.astype(jnp.int32)
  masked_CBR = corruption.masked_CBR & response_valid_BR[None]
  noisy_CBR = jnp.where(masked_CBR, jnp.int32(mask_id), response_BR[None])
  weights_CBR = jnp.where(masked_CBR, 1.0 / (corruption.t_CBR * num_noisy), 0.0)
  zeros_BP = jnp.zeros(context_BP.shape, jnp.float32)

  one_copy_positions_3BL = jnp.concatenate(
    [
      context_positions_3BP.astype(jnp.int32),
      response_positions(next_position_B, response_BR.shape[1]),
    ],
    axis=2,
  )
  tokens = [x for c in range(num_noisy) for x in (context_BP, noisy_CBR[c])]
  weights = [x for c in range(num_noisy) for x in (zeros_BP, weights_CBR[c].astype(jnp.float32))]
  valid_BL = jnp.concatenate([context_valid_BP, response_valid_BR], axis=1)
  return PackedBatch(
    tokens_BL=jnp.concatenate([*tokens, context_BP, response_BR], axis=1),
    positions_3BL=jnp.tile(one_copy_positions_3BL, (1, 1, num_noisy + 1)),
    mask_BLL=masks.bd3_mask(valid_BL, block_len, context_len, num_noisy),
    targets_BL=jnp.tile(jnp.concatenate([context_BP, response_BR], axis=1), (1, num_noisy + 1)),
    weights_BL=jnp.concatenate(
      [*weights, zeros_BP, jnp.zeros(response_BR.shape, jnp.float32)], axis=1
    ),
    num_tokens_B=jnp.sum(response_valid_BR, axis=1).astype(jnp.float32),
    target_start=context_len,
    target_stop=num_noisy * (context_len + response_BR.shape[1]),
  )


def pack_bd3(
  context_tokens_BP: jax.Array,
  context_positions_3BP: jax.Array,
  context_valid_BP: jax.Array,
  response_tokens_BR: jax.Array,
  response_valid_BR: jax.Array,
  next_position_B: jax.Array,
  key: jax.Array,
  *,
  block_len: int,
  mask_id: int,
  noise: NoiseConfig | None = None,
) -> PackedBatch:
  """Corrupt the response with `key` per `noise` and pack it with full duplication."""
  noise = NoiseConfig() if noise is None else noise
  corruption = corrupt(key, response_valid_BR, block_len=block_len, config=noise)
  return pack_bd3_corrupted(
    context_tokens_BP,
    context_positions_3BP,
    context_valid_BP,
    response_tokens_BR,
    response_valid_BR,
    next_position_B,
    corruption,
    block_len=block_len,
    mask_id=mask_id,
  )


def bd3_loss(logits_BLV: jax.Array, batch: PackedBatch) -> dict[str, jax.Array]:
  """The full-duplication loss (same weighting as `rad.rad_loss`)."""
  return packed_loss(logits_BLV, batch)
