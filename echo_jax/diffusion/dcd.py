"""DCD phase 1: on-policy teacher rollouts that record stitched targets (ECHO.md §6).

For each example the frozen teacher (ECHO_Base) decodes the report block by
block with the confidence rule of Algorithm 1: a block starts fully
<|MASK|>; each forward commits every masked position whose confidence is at
least tau, or else the single most confident one. Every committed position
records the teacher's *whole* distribution at that step (or its top-k), the
step number and the token. These targets are "stitched": each is the
teacher's conditional given what it had already committed in that block.

Option `student_prefix` (beyond the paper, ECHO.md §10): the earlier blocks
come from the student's own one-step predictions and the teacher only
completes the current block from that prefix, so the student is trained on
the prefixes it will see at inference (against exposure bias).

Rollouts without EOS within the budget, or caught in an n-gram loop, are
flagged `keep_B = False` and excluded from the loss (counted in the stats).

The loop is jitted and batched (all examples in lockstep on the shared cache)
and uses only the sampler protocol, so it runs on the training mesh.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from echo_jax.diffusion.dcd_loss import TeacherTargets
from echo_jax.sampling import commit, stops
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


@flax.struct.dataclass
class _State:
  teacher_cache: Any
  student_cache: Any
  block: jax.Array  # int32 []
  tokens_BR: jax.Array
  teacher_tokens_BR: jax.Array
  steps_BR: jax.Array
  record_BRX: jax.Array  # probabilities (V) or top-k probabilities (k)
  record_ids_BRX: jax.Array  # top-k ids (a [B, R, 1] placeholder when recording all of V)
  done_B: jax.Array
  eos_B: jax.Array
  looped_B: jax.Array
  forwards: jax.Array


def _teacher_block(cfg, teacher, params, cache, positions_BT, active_B, width):
  """Denoise one block with the teacher; returns tokens, steps, records and forwards.

  `width` is the record size per position: the vocabulary, or top_k.
  """
  T = cfg.block_len
  batch = positions_BT.shape[0]

  def body(carry):
    x, masked, step, probs_rec, ids_rec, steps_rec, n = carry
    logits, _ = teacher.extend(params, cache, x, positions_BT, block_len=T, num_append=0)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    conf = jnp.max(probs, axis=-1)
    # Algorithm 1: every position with c >= tau, else the single most confident.
    sel = commit.commit_mask(conf, masked, jnp.int32(1), jnp.nextafter(cfg.threshold, -1.0))
    if cfg.top_k:
      top_p, top_i = jax.lax.top_k(probs, cfg.top_k)
      probs_rec = jnp.where(sel[..., None], top_p, probs_rec)
      ids_rec = jnp.where(sel[..., None], top_i.astype(jnp.int32), ids_rec)
    else:
      probs_rec = jnp.where(sel[..., None], probs, probs_rec)
    return (
      jnp.where(sel, tokens, x),
      masked & ~sel,
      step + 1,
      probs_rec,
      ids_rec,
      jnp.where(sel, step + 1, steps_rec),
      n + 1,
    )

  init = (
    jnp.full((batch, T), cfg.mask_id, jnp.int32),
    jnp.broadcast_to(active_B[:, None], (batch, T)),
    jnp.int32(0),
    jnp.zeros((batch, T, width), jnp.float32),
    jnp.zeros((batch, T, cfg.top_k or 1), jnp.int32),
    jnp.zeros((batch, T), jnp.int32),
    jnp.int32(0),
  )
  x, _, _, probs_rec, ids_rec, steps_rec, n = jax.lax.while_loop(
    lambda c: jnp.any(c[1]) & (c[2] < T), body, init
  )
  return x, steps_rec, probs_rec, ids_rec, n


def _rollout(cfg: RolloutConfig, teacher, teacher_params, context, student, student_params):
  T, R = cfg.block_len, cfg.max_new_tokens
  num_blocks = R // T
  slots = teacher.context_slots(context, block_len=T)
  t_cache, pos0_B = teacher.prefill(teacher_params, context, cache_length=slots + R, block_len=T)
  s_cache = None
  if cfg.student_prefix:
    s_cache, _ = student.prefill(student_params, context, cache_length=slots + R, block_len=T)
  batch = pos0_B.shape[0]
  width = (
    cfg.top_k
    or jax.eval_shape(
      lambda: teacher.extend(
        teacher_params,
        t_cache,
        jnp.zeros((batch, 1), jnp.int32),
        pos0_B[:, None],
        block_len=1,
        num_append=0,
      )
    )[0].shape[-1]
  )
  idx_T = jnp.arange(T, dtype=jnp.int32)

  def run_block(st: _State) -> _State:
    start = st.block * T
    positions = pos0_B[:, None].astype(jnp.int32) + start + idx_T[None, :]
    active = ~st.done_B
    t_tokens, steps, probs_rec, ids_rec, n = _teacher_block(
      cfg, teacher, teacher_params, st.teacher_cache, positions, active, width
    )
    clean = t_tokens
    s_cache = st.student_cache
    if cfg.student_prefix:
      masked = jnp.full((batch, T), cfg.mask_id, jnp.int32)
      s_logits, _ = student.extend(
        student_params, s_cache, masked, positions, block_len=T, num_append=0
      )
      clean = jnp.argmax(s_logits, axis=-1).astype(jnp.int32)
      _, s_cache = student.extend(
        student_params, s_cache, clean, positions, block_len=T, num_append=T
      )
    clean = jnp.where(active[:, None], clean, cfg.pad_id)
    _, t_cache = teacher.extend(
      teacher_params, st.teacher_cache, clean, positions, block_len=T, num_append=T
    )

    def put(buf, block_vals):
      return jax.lax.dynamic_update_slice_in_dim(buf, block_vals.astype(buf.dtype), start, axis=1)

    tokens_BR = put(st.tokens_BR, clean)
    eos = active & stops.has_eos(clean, jnp.ones_like(clean, bool), cfg.eos_id)
    looped = jnp.zeros_like(eos)
    if cfg.repetition is not None:
      looped = (
        active
        & ~eos
        & stops.repeats_ngram(
          tokens_BR,
          jnp.zeros((batch,), jnp.int32),
          jnp.full((batch,), start + T),
          start,
          T,
          cfg.repetition,
        )
      )
    return st.replace(
      teacher_cache=t_cache,
      student_cache=s_cache,
      block=st.block + 1,
      tokens_BR=tokens_BR,
      teacher_tokens_BR=put(st.teacher_tokens_BR, jnp.where(active[:, None], t_tokens, cfg.pad_id)),
      steps_BR=put(st.steps_BR, jnp.where(active[:, None], steps, 0)),
      record_BRX=put(st.record_BRX, probs_rec),
      record_ids_BRX=put(st.record_ids_BRX, ids_rec),
      done_B=st.done_B | eos | looped,
      eos_B=st.eos_B | eos,
      looped_B=st.looped_B | looped,
      forwards=st.forwards + n + 1,
    )

  st = _State(
    teacher_cache=t_cache,
    student_cache=s_cache,
    block=jnp.int32(0),
    tokens_BR=jnp.full((batch, R), cfg.pad_id, jnp.int32),
    teacher_tokens_BR=jnp.full((batch, R), cfg.pad_id, jnp.int32),
    steps_BR=jnp.zeros((batch, R), jnp.int32),
    record_BRX=jnp.zeros((batch, R, width), jnp.float32),
    record_ids_BRX=jnp.zeros((batch, R, cfg.top_k or 1), jnp.int32),
    done_B=jnp.zeros((batch,), bool),
    eos_B=jnp.zeros((batch,), bool),
    looped_B=jnp.zeros((batch,), bool),
    forwards=jnp.int32(0),
  )
  st = jax.lax.while_loop(lambda s: (s.block < num_blocks) & ~jnp.all(s.done_B), run_block, st)

  keep = st.eos_B & ~st.looped_B
  # Valid: every position of the blocks up to and including the one holding EOS.
  block_of_R = jnp.arange(R) // T
  eos_pos = jnp.where(st.eos_B, jnp.argmax(st.tokens_BR == cfg.eos_id, axis=-1), R)
  valid = keep[:, None] & (block_of_R[None, :] <= (eos_pos // T)[:, None]) & (st.steps_BR > 0)
  targets = TeacherTargets(
    tokens_BR=st.teacher_tokens_BR,
    steps_BR=st.steps_BR,
    valid_BR=valid,
    probs_BRV=None if cfg.top_k else st.record_BRX,
    topk_ids_BRk=st.record_ids_BRX if cfg.top_k else None,
    topk_probs_BRk=st.record_BRX if cfg.top_k else None,
  )
  return Rollout(
    tokens_BR=st.tokens_BR,
    targets=targets,
    keep_B=keep,
    eos_B=st.eos_B,
    looped_B=st.looped_B,
    teacher_forwards=st.forwards,
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
