"""Response-Asymmetric Diffusion (RAD): packing [context | noisy | clean] and its loss.

As in the ECHO paper, the context (left-padded to P) appears once; the response appears as C
noisy copies (C = 1, or 2 with complementary masking) followed by one clean copy, so
L = P + (C + 1) R instead of the (C + 1)(P + R) of full duplication (`bd3.py`). The
noisy copies reuse the clean copy's position ids. Loss: cross-entropy at the masked
noisy positions (no token shift), weighted by 1 / (t C), summed and divided by the
number of valid response tokens; with C = 2 that is the mean of the two copies' losses.

Response validity: report tokens, the EOS and the pad tokens up to the
end of the EOS's block are real, trained positions; later blocks are invalid.
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


def _first_eos_index(tokens_BR: jax.Array, eos_id: int) -> jax.Array:
  """Index of the first EOS per example, or R - 1 when there is none (a cut report)."""
  is_eos_BR = tokens_BR == eos_id
  return jnp.where(
    jnp.any(is_eos_BR, axis=1), jnp.argmax(is_eos_BR, axis=1), tokens_BR.shape[1] - 1
  )


def report_mask(tokens_BR: jax.Array, eos_id: int) -> jax.Array:
  """bool_BR: the report tokens and the first EOS (everything if there is no EOS)."""
  last_B = _first_eos_index(tokens_BR, eos_id)
  return jnp.arange(tokens_BR.shape[1])[None, :] <= last_B[:, None]


def response_valid_mask(tokens_BR: jax.Array, eos_id: int, block_len: int) -> jax.Array:
  """bool_BR: valid through the end of the block holding the first EOS (all if none).

  The pads after the EOS inside its block are trained (the model learns to close a
  block); the blocks after it are invalid.
  """
  if tokens_BR.ndim != 2 or tokens_BR.shape[1] % block_len:
    raise ValueError(
      f"tokens_BR {tokens_BR.shape} must be (batch, R) with R a multiple of block_len={block_len}"
    )
  end_B = (_first_eos_index(tokens_BR, eos_id) // block_len + 1) * block_len
  return jnp.arange(tokens_BR.shape[1])[None, :] < end_B[:, None]


def pack_rad_corrupted(
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
  """Pack a given corruption as [context | noisy x C | clean]; see the module docstring.

  Targets are the clean tokens everywhere; weights are 1 / (t C) at the masked noisy
  positions and 0 elsewhere. The weighted span is [P, P + C R).
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
  masked_CBR = corruption.masked_CBR & response_valid_BR[None]
  noisy_CBR = jnp.where(masked_CBR, jnp.int32(mask_id), response_tokens_BR[None].astype(jnp.int32))
  positions_3BR = response_positions(next_position_B, response_tokens_BR.shape[1])
  weights_CBR = jnp.where(masked_CBR, 1.0 / (corruption.t_CBR * num_noisy), 0.0)

  tokens_BL = jnp.concatenate(
    [context_tokens_BP.astype(jnp.int32), *noisy_CBR, response_tokens_BR.astype(jnp.int32)], axis=1
  )
  targets_BL = jnp.concatenate(
    [context_tokens_BP] + [response_tokens_BR] * (num_noisy + 1), axis=1
  ).astype(jnp.int32)
  zeros_BR = jnp.zeros(response_tokens_BR.shape, jnp.float32)
  weights_BL = jnp.concatenate(
    [jnp.zeros(context_tokens_BP.shape, jnp.float32), *weights_CBR.astype(jnp.float32), zeros_BR],
    axis=1,
  )
  positions_3BL = jnp.concatenate(
    [context_positions_3BP.astype(jnp.int32)] + [positions_3BR] * (num_noisy + 1), axis=2
  )
  return PackedBatch(
    tokens_BL=tokens_BL,
    positions_3BL=positions_3BL,
    mask_BLL=masks.rad_mask(context_valid_BP, response_valid_BR, block_len, num_noisy),
    targets_BL=targets_BL,
    weights_BL=weights_BL,
    num_tokens_B=jnp.sum(response_valid_BR, axis=1).astype(jnp.float32),
    target_start=context_len,
    target_stop=context_len + num_noisy * response_tokens_BR.shape[1],
  )


def pack_rad(
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
  """Corrupt the response with `key` per `noise` and pack it for RAD (L = P + (C+1) R)."""
  noise = NoiseConfig() if noise is None else noise
  corruption = corrupt(key, response_valid_BR, block_len=block_len, config=noise)
  return pack_rad_corrupted(
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


def rad_loss(logits_BLV: jax.Array, batch: PackedBatch) -> dict[str, jax.Array]:
  """The RAD loss from the logits of the packed forward (whole length or target slice).

  Returns dict(loss, num_tokens, num_masked, accuracy, ce_masked); see `token_loss`.
  """
  return packed_loss(logits_BLV, batch)
