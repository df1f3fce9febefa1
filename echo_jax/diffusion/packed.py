"""`PackedBatch`, the arrays one full forward of the model consumes, and its token loss.

Every objective (RAD, full duplication, autoregressive) packs its examples into a
`PackedBatch` and scores the logits of `model(tokens_BL, positions_3BL, mask_BLL)` with
the same weighted cross-entropy. No token shift is applied here: logit i is scored
against `targets_BL[i]`; an autoregressive packing writes next-token targets itself.

Only positions in [target_start, target_stop) carry weight, so a train step may compute
logits just there and call `token_loss` on the slice.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class PackedBatch:
  """One packed batch (batch-leading; every array has a static shape)."""

  tokens_BL: jax.Array  # int32 input ids
  positions_3BL: jax.Array  # int32 rotary positions (time, height, width)
  mask_BLL: jax.Array  # bool attention mask, True = may attend
  targets_BL: jax.Array  # int32 token each position is scored against (where weight > 0)
  weights_BL: jax.Array  # float32 loss weight per position (0 = not scored)
  num_tokens_B: jax.Array  # float32 loss normalizer per example (valid response tokens)
  target_start: int = flax.struct.field(pytree_node=False, default=0)  # first weighted index
  target_stop: int = flax.struct.field(pytree_node=False, default=0)  # one past the last

  def target_slice(self) -> tuple[jax.Array, jax.Array]:
    """(targets, weights) restricted to [target_start, target_stop)."""
    sl = slice(self.target_start, self.target_stop)
    return self.targets_BL[:, sl], self.weights_BL[:, sl]


def token_loss(
  logits_BLV: jax.Array,
  targets_BL: jax.Array,
  weights_BL: jax.Array,
  num_tokens_B: jax.Array,
) -> dict[str, jax.Array]:
  """Weighted cross-entropy, summed and divided by the number of tokens.

  Returns scalars: loss = sum(w * CE) / sum(num_tokens); num_tokens; num_masked (positions
  with w > 0); accuracy (argmax == target over those); ce_masked (unweighted mean CE over
  those, an easier curve to read than the 1/t-weighted loss).
  """
  if logits_BLV.ndim != 3 or logits_BLV.shape[:2] != targets_BL.shape:
    raise ValueError(
      f"logits_BLV {logits_BLV.shape} must be (batch, length, vocab) with (batch, length) "
      f"equal to targets_BL {targets_BL.shape}"
    )
  if weights_BL.shape != targets_BL.shape:
    raise ValueError(f"weights_BL {weights_BL.shape} must match targets_BL {targets_BL.shape}")
  logits_BLV = logits_BLV.astype(jnp.float32)
  logz_BL = jax.nn.logsumexp(logits_BLV, axis=-1)
  picked_BL = jnp.take_along_axis(logits_BLV, targets_BL[..., None].astype(jnp.int32), -1)[..., 0]
  ce_BL = logz_BL - picked_BL
  scored_BL = weights_BL > 0
  num_tokens = jnp.sum(num_tokens_B.astype(jnp.float32))
  num_masked = jnp.sum(scored_BL.astype(jnp.float32))
  correct_BL = (jnp.argmax(logits_BLV, axis=-1) == targets_BL) & scored_BL
  return dict(
    loss=jnp.sum(jnp.where(scored_BL, weights_BL * ce_BL, 0.0)) / jnp.maximum(num_tokens, 1.0),
    num_tokens=num_tokens,
    num_masked=num_masked,
    accuracy=jnp.sum(correct_BL.astype(jnp.float32)) / jnp.maximum(num_masked, 1.0),
    ce_masked=jnp.sum(jnp.where(scored_BL, ce_BL, 0.0)) / jnp.maximum(num_masked, 1.0),
  )


def packed_loss(logits_BLV: jax.Array, batch: PackedBatch) -> dict[str, jax.Array]:
  """`token_loss` of a batch, given logits over the whole packed length or its target slice."""
  length = batch.tokens_BL.shape[1]
  span = batch.target_stop - batch.target_start
  if logits_BLV.shape[1] == length:
    targets_BL, weights_BL = batch.targets_BL, batch.weights_BL
  elif logits_BLV.shape[1] == span:
    targets_BL, weights_BL = batch.target_slice()
  else:
    raise ValueError(
      f"logits_BLV has length {logits_BLV.shape[1]}; expected the packed length {length} or "
      f"the target slice [{batch.target_start}, {batch.target_stop}) of length {span}"
    )
  return token_loss(logits_BLV, targets_BL, weights_BL, batch.num_tokens_B)


def response_positions(next_position_B: jax.Array, response_len: int) -> jax.Array:
  """positions_3BR of a text response continuing at `next_position_B` (all 3 rows equal)."""
  next_position_B = jnp.asarray(next_position_B)
  if next_position_B.ndim != 1:
    raise ValueError(f"next_position_B must have shape (batch,), got {next_position_B.shape}")
  positions_BR = next_position_B.astype(jnp.int32)[:, None] + jnp.arange(
    response_len, dtype=jnp.int32
  )
  return jnp.broadcast_to(positions_BR[None], (3, *positions_BR.shape))


def check_context(tokens_BP: jax.Array, positions_3BP: jax.Array, valid_BP: jax.Array) -> None:
  """Raise ValueError unless the context arrays agree in shape and types."""
  if tokens_BP.ndim != 2:
    raise ValueError(f"context tokens_BP must be (batch, P), got {tokens_BP.shape}")
  if positions_3BP.shape != (3, *tokens_BP.shape):
    raise ValueError(
      f"context positions_3BP {positions_3BP.shape} must be (3, *tokens_BP.shape) = "
      f"{(3, *tokens_BP.shape)}"
    )
  if valid_BP.shape != tokens_BP.shape or valid_BP.dtype != jnp.bool_:
    raise ValueError(
      f"context valid_BP must be bool of shape {tokens_BP.shape}, got {valid_BP.dtype} "
      f"{valid_BP.shape}"
    )


def check_response_tokens(
  tokens_BR: jax.Array, valid_BR: jax.Array, next_position_B: jax.Array, batch: int
) -> None:
  """Raise ValueError unless the response arrays agree with each other and the batch."""
  if tokens_BR.ndim != 2 or tokens_BR.shape[0] != batch:
    raise ValueError(f"response tokens_BR must be ({batch}, R), got {tokens_BR.shape}")
  if valid_BR.shape != tokens_BR.shape:
    raise ValueError(f"response valid_BR {valid_BR.shape} must match tokens_BR {tokens_BR.shape}")
  if jnp.shape(next_position_B) != (batch,):
    raise ValueError(
      f"next_position_B must have shape ({batch},), got {jnp.shape(next_position_B)}"
    )
