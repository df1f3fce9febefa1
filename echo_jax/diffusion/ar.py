"""Autoregressive objective (stage 1, ECHO_AR): causal LM over [context | response].

Next-token targets: logit i is scored against token i + 1, and only where token i + 1 is
a report token or the EOS that ends it (`rad.report_mask`). The context must be
left-padded so that its last token (index P - 1, which predicts the first response
token) is real. Response tokens after the EOS are invalid keys and never scored.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from echo_jax.diffusion.packed import (
  PackedBatch,
  check_context,
  check_response_tokens,
  packed_loss,
  response_positions,
)
from echo_jax.models import masks


def pack_ar(
  context_tokens_BP: jax.Array,
  context_positions_3BP: jax.Array,
  context_valid_BP: jax.Array,
  response_tokens_BR: jax.Array,
  report_valid_BR: jax.Array,
  next_position_B: jax.Array,
) -> PackedBatch:
  """Pack [context | response] (L = P + R) with a causal mask and next-token targets.

  `report_valid_BR` marks the report tokens and their EOS (`rad.report_mask`). The
  weighted span is [P - 1, P + R - 1).
  """
  check_context(context_tokens_BP, context_positions_3BP, context_valid_BP)
  batch, context_len = context_tokens_BP.shape
  if context_len < 1:
    raise ValueError(
      "the context must hold at least one token (it predicts the first response token)"
    )
  check_response_tokens(response_tokens_BR, report_valid_BR, next_position_B, batch)
  if report_valid_BR.dtype != jnp.bool_:
    raise ValueError(f"report_valid_BR must be bool, got {report_valid_BR.dtype}")
  response_len = response_tokens_BR.shape[1]
  tokens_BL = jnp.concatenate([context_tokens_BP, response_tokens_BR], axis=1).astype(jnp.int32)
  valid_BL = jnp.concatenate([context_valid_BP, report_valid_BR], axis=1)
  # Position i predicts token i + 1; the last position predicts nothing.
  targets_BL = jnp.pad(tokens_BL[:, 1:], ((0, 0), (0, 1)))
  scored_BL = jnp.pad(valid_BL[:, 1:], ((0, 0), (0, 1)))
  scored_BL = scored_BL & (jnp.arange(tokens_BL.shape[1]) >= context_len - 1)[None]
  positions_3BL = jnp.concatenate(
    [context_positions_3BP.astype(jnp.int32), response_positions(next_position_B, response_len)],
    axis=2,
  )
  return PackedBatch(
    tokens_BL=tokens_BL,
    positions_3BL=positions_3BL,
    mask_BLL=masks.causal_mask(valid_BL),
    targets_BL=targets_BL,
    weights_BL=scored_BL.astype(jnp.float32),
    num_tokens_B=jnp.sum(report_valid_BR, axis=1).astype(jnp.float32),
    target_start=context_len - 1,
    target_stop=context_len + response_len - 1,
  )


def ar_loss(logits_BLV: jax.Array, batch: PackedBatch) -> dict[str, jax.Array]:
  """Mean next-token cross-entropy over the report tokens (+EOS) of an `pack_ar` batch.

  Returns dict(loss, num_tokens, num_masked (= scored tokens), accuracy, ce_masked).
  """
  return packed_loss(logits_BLV, batch)
