"""The DCD student objective (the paper's Algorithm 1, phase 2).

The student sees `[context | every response block fully masked | teacher tokens
as the clean copy]` and predicts all positions of a block in one forward. It is
aligned to the teacher's *stitched* targets: at each response position, the
teacher's whole distribution at the step that position was committed.

  loss = sum_{n,i} w_{n,i} * D(P_n[i], q_{n,i}) + lambda_eos * CE(EOS at teacher-EOS positions)

normalized by the number of valid response positions, where D is the forward
KL(P || q) (the paper) or the reverse KL(q || P) (the ablation), and w is
proportional to the commit step (later-committed tokens carry more mean-field
bias), scaled to mean 1 over the batch's valid positions.

Targets are either the full distribution (`probs_BRV`) or a top-k truncation
(`topk_ids_BRk`, `topk_probs_BRk`) whose remaining mass is one extra "other"
bucket, so memory is k floats a token instead of V.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp

from echo_jax.diffusion import rad
from echo_jax.diffusion.noise import Corruption
from echo_jax.diffusion.packed import PackedBatch

_TINY = 1e-12


@flax.struct.dataclass
class TeacherTargets:
  """What the teacher rollout records for each response position (B x R).

  Exactly one of `probs_BRV` or (`topk_ids_BRk`, `topk_probs_BRk`) is set.
  """

  tokens_BR: jax.Array  # int32: the token the teacher committed (argmax of its distribution)
  steps_BR: jax.Array  # int32: 1-based denoising step of the block at which it was committed
  valid_BR: jax.Array  # bool: a real position of a kept rollout
  probs_BRV: jax.Array | None = None  # float32: full teacher distribution at commit time
  topk_ids_BRk: jax.Array | None = None  # int32: ids of the k most probable tokens
  topk_probs_BRk: jax.Array | None = None  # float32: their probabilities (sum <= 1)


@dataclasses.dataclass(frozen=True)
class DCDLossConfig:
  """Switches of the DCD objective; the defaults are the paper's."""

  step_weights: bool = True  # weight each position by its commit step (ablation: False)
  eos_weight: float = 1.0  # lambda_eos; 0 disables the EOS term (ablation)
  divergence: str = "forward_kl"  # "forward_kl" (paper) | "reverse_kl" (ablation)

  def __post_init__(self):
    if self.divergence not in ("forward_kl", "reverse_kl"):
      raise ValueError(f"divergence={self.divergence!r}: use 'forward_kl' or 'reverse_kl'")
    if self.eos_weight < 0:
      raise ValueError(f"eos_weight={self.eos_weight} must be >= 0")


def _bucketed(logq_BRV: jax.Array, targets: TeacherTargets) -> tuple[jax.Array, jax.Array]:
  """Teacher and student log-probabilities over the support the targets define.

  Full targets: the vocabulary. Top-k targets: the k ids plus one "other"
  bucket holding the remaining mass of each distribution.
  """
  if targets.probs_BRV is not None:
    return jnp.log(jnp.maximum(targets.probs_BRV, _TINY)), logq_BRV
  p_top = targets.topk_probs_BRk
  logq_top = jnp.take_along_axis(logq_BRV, targets.topk_ids_BRk, axis=-1)
  p_other = jnp.clip(1.0 - p_top.sum(-1, keepdims=True), 0.0, 1.0)
  q_other = jnp.clip(1.0 - jnp.exp(logq_top).sum(-1, keepdims=True), 0.0, 1.0)
  logp = jnp.log(jnp.maximum(jnp.concatenate([p_top, p_other], -1), _TINY))
  logq = jnp.concatenate([logq_top, jnp.log(jnp.maximum(q_other, _TINY))], -1)
  return logp, logq


def divergence_BR(logits_BRV: jax.Array, targets: TeacherTargets, kind: str) -> jax.Array:
  """Per-position KL between the teacher targets and the student logits."""
  logq = jax.nn.log_softmax(logits_BRV.astype(jnp.float32), axis=-1)
  logp, logq = _bucketed(logq, targets)
  if kind == "forward_kl":  # KL(P || q) = soft-target cross-entropy minus the teacher entropy
    return jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)
  return jnp.sum(jnp.exp(logq) * (logq - logp), axis=-1)  # reverse KL(q || P)


def step_weights_BR(steps_BR: jax.Array, valid_BR: jax.Array) -> jax.Array:
  """w proportional to the commit step, with mean 1 over valid positions."""
  steps = jnp.where(valid_BR, steps_BR, 0).astype(jnp.float32)
  mean = steps.sum() / jnp.maximum(valid_BR.sum(), 1)
  return steps / jnp.maximum(mean, _TINY)


def dcd_loss(
  logits_BRV: jax.Array,
  targets: TeacherTargets,
  *,
  eos_ids: tuple[int, ...],
  config: DCDLossConfig = DCDLossConfig(),
) -> dict[str, jax.Array]:
  """The DCD loss from the student's logits at the masked copy of the response.

  `eos_ids`: the tokens that close a report (EOS and pad): the EOS term pushes
  the student toward EOS wherever the teacher wrote one of them.
  Returns the loss and its parts, each normalized by the valid positions.
  """
  valid = targets.valid_BR
  num_valid = jnp.maximum(valid.sum(), 1).astype(jnp.float32)
  div = divergence_BR(logits_BRV, targets, config.divergence)
  weights = step_weights_BR(targets.steps_BR, valid) if config.step_weights else jnp.ones_like(div)
  kl_term = jnp.sum(jnp.where(valid, weights * div, 0.0)) / num_valid

  logq = jax.nn.log_softmax(logits_BRV.astype(jnp.float32), axis=-1)
  eos_positions = valid & jnp.isin(targets.tokens_BR, jnp.asarray(eos_ids))
  eos_ce = -logq[..., eos_ids[0]]
  eos_term = jnp.sum(jnp.where(eos_positions, eos_ce, 0.0)) / num_valid

  loss = kl_term + config.eos_weight * eos_term
  agree = jnp.argmax(logits_BRV, axis=-1) == targets.tokens_BR
  return {
    "loss": loss,
    "kl": kl_term,
    "eos_ce": eos_term,
    "token_agreement": jnp.sum(jnp.where(valid, agree, False)) / num_valid,
    "num_tokens": valid.sum(),
  }


def pack_student(
  context_tokens_BP: jax.Array,
  context_positions_3BP: jax.Array,
  context_valid_BP: jax.Array,
  rollout_tokens_BR: jax.Array,
  next_position_B: jax.Array,
  *,
  block_len: int,
  mask_id: int,
  eos_id: int,
) -> PackedBatch:
  """The student's input `[context | every block fully masked | teacher tokens]`.

  The RAD layout with a noisy copy that masks every response token: masked block n
  attends the context and the teacher's clean blocks < n, exactly what the teacher saw
  at the first step of block n, so one forward scores every block in one step.
  The logits to align are those of the slice [target_start, target_stop).
  """
  everything = Corruption(
    masked_CBR=jnp.ones((1, *rollout_tokens_BR.shape), bool),
    t_CBR=jnp.ones((1, *rollout_tokens_BR.shape), jnp.float32),
  )
  return rad.pack_rad_corrupted(
    context_tokens_BP,
    context_positions_3BP,
    context_valid_BP,
    rollout_tokens_BR,
    rad.response_valid_mask(rollout_tokens_BR, eos_id, block_len),
    next_position_B,
    everything,
    block_len=block_len,
    mask_id=mask_id,
  )
