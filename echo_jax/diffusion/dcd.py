"""DCD phase 1: on-policy teacher rollouts that record stitched targets.

For each example the frozen teacher (ECHO_Base) decodes the report block by
block with the confidence rule of Algorithm 1: a block starts fully
<|MASK|>; each forward commits every masked position whose confidence is at
least tau, or else the single most confident one. Every committed position
records the teacher's *whole* distribution at that step (or its top-k), the
step number and the token. These targets are "stitched": each is the
teacher's conditional given what it had already committed in that block.

Option `student_prefix` (beyond the paper): the earlier blocks
come from the student's own one-step predictions and the teacher only
completes the current block from that prefix, so the student is trained on
the prefixes it will see at inference (against exposure bias).

Rollouts without EOS within the budget, or caught in an n-gram loop, are
flagged `keep_B = False` and excluded from the loss (counted in the stats).

The loop is the samplers' own (`sampling/block_decode.py`, recording mode):
jitted, batched in lockstep on the shared cache, with the fused append (one
teacher forward per block fewer than a separate append), and it uses only the
sampler protocol, so it runs on the training mesh. This module only turns the
records into targets and keep-flags.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from echo_jax.diffusion.dcd_loss import TeacherTargets
from echo_jax.sampling import block_decode, stops
from echo_jax.sampling.protocol import DecodeModel


@dataclasses.dataclass(frozen=True, kw_only=True)
class RolloutConfig:
  """How the teacher rolls out. Frozen and hashable: a jit static argument."""

  eos_id: int
  mask_id: int
  pad_id: int
  block_len: int = 8  # B
  max_new_tokens: int = 128  # response budget R, a multiple of B
  threshold: float = 0.85  # tau: commit every masked position with confidence >= tau
  top_k: int = 0  # 0: record the full distribution; else the k most probable tokens
  student_prefix: bool = False  # earlier blocks from the student's one-step output
  repetition: stops.RepetitionGuard | None = stops.RepetitionGuard()  # discards looping rollouts

  def validate(self) -> None:
    if self.block_len < 1 or self.max_new_tokens % self.block_len or self.max_new_tokens < 1:
      raise ValueError(
        f"max_new_tokens={self.max_new_tokens} must be a positive multiple of block_len={self.block_len}"
      )
    if not 0.0 < self.threshold <= 1.0:
      raise ValueError(f"threshold={self.threshold} must be in (0, 1]")
    if self.top_k < 0:
      raise ValueError(f"top_k={self.top_k} must be >= 0 (0 = full distribution)")


@flax.struct.dataclass
class Rollout:
  """A batch of rollouts: the clean response, the targets, and which to keep."""

  tokens_BR: jax.Array  # int32: the response the student's clean copy holds
  targets: TeacherTargets  # the teacher's stitched targets for every position
  keep_B: jax.Array  # bool: EOS within the budget and no repetition loop
  eos_B: jax.Array  # bool: the rollout produced EOS
  looped_B: jax.Array  # bool: stopped by the repetition guard
  teacher_forwards: jax.Array  # int32 []: teacher model calls of the batch


def _rollout(cfg: RolloutConfig, teacher, teacher_params, context, student, student_params):
  """The teacher decodes in the shared block loop's recording mode; here records become targets."""
  T, R = cfg.block_len, cfg.max_new_tokens
  sampler = block_decode.BlockSamplerConfig(
    eos_id=cfg.eos_id,
    mask_id=cfg.mask_id,
    pad_id=cfg.pad_id,
    block_len=T,
    max_new_tokens=R,
    repetition=cfg.repetition,
    steps=T,
    threshold=cfg.threshold,
    fused_append=True,
  )
  recording = block_decode.Recording(top_k=cfg.top_k, prefix_model=cfg.student_prefix)
  out, rec = block_decode.record_rollout(
    sampler, recording, teacher, teacher_params, context, student, student_params
  )
  eos_B, looped_B = out.stats.eos_B, out.stats.looped_B
  keep = eos_B & ~looped_B
  # Valid: every position of the blocks up to and including the one holding EOS.
  block_of_R = jnp.arange(R) // T
  eos_pos = jnp.where(eos_B, jnp.argmax(rec.clean_BR == cfg.eos_id, axis=-1), R)
  valid = keep[:, None] & (block_of_R[None, :] <= (eos_pos // T)[:, None]) & (rec.steps_BR > 0)
  targets = TeacherTargets(
    tokens_BR=rec.tokens_BR,
    steps_BR=rec.steps_BR,
    valid_BR=valid,
    probs_BRV=None if cfg.top_k else rec.probs_BRX,
    topk_ids_BRk=rec.ids_BRX if cfg.top_k else None,
    topk_probs_BRk=rec.probs_BRX if cfg.top_k else None,
  )
  return Rollout(
    tokens_BR=rec.clean_BR,
    targets=targets,
    keep_B=keep,
    eos_B=eos_B,
    looped_B=looped_B,
    teacher_forwards=out.stats.batch_forwards,
  )


_rollout_jit = jax.jit(_rollout, static_argnums=(0, 1, 4))


def teacher_rollout(
  cfg: RolloutConfig,
  teacher: DecodeModel,
  teacher_params: Any,
  context: Any,
  student: DecodeModel | None = None,
  student_params: Any = None,
) -> Rollout:
  """Roll the teacher out on a batch of contexts (jitted; see the module docstring)."""
  cfg.validate()
  if cfg.student_prefix and (student is None or student_params is None):
    raise ValueError("student_prefix=True needs the student model and its params")
  return _rollout_jit(cfg, teacher, teacher_params, context, student, student_params)
