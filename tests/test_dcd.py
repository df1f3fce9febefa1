"""DCD teacher rollouts: a hand-built teacher whose commits are known in advance."""

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from echo_jax.diffusion.dcd import RolloutConfig, teacher_rollout
from echo_jax.diffusion.dcd_loss import step_weights_BR

V, PAD, EOS, MASK, T = 8, 0, 2, 7, 4
BASE_CONF = (0.9, 0.5, 0.7, 0.3)  # confidence of block position i with nothing committed yet


@flax.struct.dataclass
class _Cache:
  length: jax.Array


@dataclasses.dataclass(frozen=True)
class ScriptedTeacher:
  """Position i of a block predicts token 3 + i with confidence BASE_CONF[i] + 0.1 * (#committed).

  The confidence depends on what the block has committed, so targets recorded
  at different steps differ: exactly what "stitched" targets must capture.
  Block `eos_block` predicts EOS at position 2.
  """

  eos_block: int = 1

  def context_slots(self, context, *, block_len):
    return context.shape[1]

  def prefill(self, params, context, *, cache_length, block_len):
    return _Cache(length=jnp.int32(context.shape[1])), jnp.zeros((context.shape[0],), jnp.int32)

  def extend(self, params, cache, tokens_BT, positions_BT, *, block_len, num_append):
    n_in = tokens_BT.shape[1]
    # A fused call carries [previous block | this block]: the script reads the last block.
    tokens_BT, positions_BT = tokens_BT[:, -T:], positions_BT[:, -T:]
    committed = jnp.sum(tokens_BT != MASK, axis=-1, keepdims=True)
    conf = jnp.asarray(BASE_CONF)[None, :] + 0.1 * committed
    block = positions_BT[:, :1] // T
    token = jnp.where(
      (block == self.eos_block) & (jnp.arange(T)[None, :] == 2), EOS, 3 + jnp.arange(T)[None, :]
    )
    probs = jnp.where(
      jax.nn.one_hot(token, V, dtype=bool), conf[..., None], ((1 - conf) / (V - 1))[..., None]
    )
    logits = jnp.log(probs)
    logits = jnp.concatenate([jnp.zeros_like(logits)] * (n_in // T - 1) + [logits], axis=1)
    return logits, cache.replace(length=cache.length + num_append)


def _config(**kw):
  return RolloutConfig(eos_id=EOS, mask_id=MASK, pad_id=PAD, block_len=T, max_new_tokens=12, **kw)


def test_stitched_targets_steps_and_weights():
  context = jnp.ones((2, 4), jnp.int32)
  out = teacher_rollout(_config(repetition=None), ScriptedTeacher(), {}, context)
  # Step 1 commits position 0 (0.9 >= tau); then no position reaches tau, so the most
  # confident one is committed alone: position 2 (0.8), position 1 (0.7), position 3 (0.6).
  want_steps = [1, 3, 2, 4] * 2 + [0] * 4
  np.testing.assert_array_equal(out.targets.steps_BR, [want_steps] * 2)
  want_conf = [0.9, 0.7, 0.8, 0.6]
  got_conf = jnp.take_along_axis(out.targets.probs_BRV, out.targets.tokens_BR[..., None], -1)[
    ..., 0
  ]
  np.testing.assert_allclose(got_conf[:, :8], [want_conf * 2] * 2, rtol=1e-6)
  np.testing.assert_array_equal(out.tokens_BR[0], [3, 4, 5, 6, 3, 4, EOS, 6, PAD, PAD, PAD, PAD])
  np.testing.assert_array_equal(out.targets.valid_BR[0], [True] * 8 + [False] * 4)
  assert bool(jnp.all(out.keep_B)) and bool(jnp.all(out.eos_B))
  # Two blocks of four teacher steps; block 0 enters the cache with block 1's first step.
  assert int(out.teacher_forwards) == 8
  w = step_weights_BR(out.targets.steps_BR, out.targets.valid_BR)
  np.testing.assert_allclose(w[0, :4], np.array([1, 3, 2, 4]) / 2.5)


def test_top_k_records_the_leading_probabilities():
  out = teacher_rollout(
    _config(top_k=2, repetition=None), ScriptedTeacher(), {}, jnp.ones((1, 4), jnp.int32)
  )
  assert out.targets.probs_BRV is None
  np.testing.assert_array_equal(out.targets.topk_ids_BRk[0, :4, 0], [3, 4, 5, 6])
  np.testing.assert_allclose(out.targets.topk_probs_BRk[0, :4, 0], [0.9, 0.7, 0.8, 0.6], rtol=1e-6)


def test_rollout_without_eos_is_discarded():
  out = teacher_rollout(
    _config(repetition=None), ScriptedTeacher(eos_block=99), {}, jnp.ones((1, 4), jnp.int32)
  )
  assert not bool(out.keep_B[0]) and not bool(out.eos_B[0])
  assert not bool(jnp.any(out.targets.valid_BR))


def test_repetition_loop_is_discarded():
  guard_cfg = _config()
  guard_cfg = dataclasses.replace(
    guard_cfg, repetition=dataclasses.replace(guard_cfg.repetition, ngram=4, max_repeats=1)
  )
  out = teacher_rollout(guard_cfg, ScriptedTeacher(eos_block=99), {}, jnp.ones((1, 4), jnp.int32))
  assert bool(out.looped_B[0]) and not bool(out.keep_B[0])


def test_student_prefix_needs_a_student():
  with pytest.raises(ValueError, match="student"):
    teacher_rollout(
      _config(student_prefix=True), ScriptedTeacher(), {}, jnp.ones((1, 4), jnp.int32)
    )


def test_student_prefix_uses_the_student_tokens():
  """The student here is a teacher that always writes EOS late: its blocks become the clean copy."""
  out = teacher_rollout(
    _config(student_prefix=True, repetition=None),
    ScriptedTeacher(),
    {},
    jnp.ones((1, 4), jnp.int32),
    student=ScriptedTeacher(eos_block=0),
    student_params={},
  )
  # The student's one-step block 0 already holds EOS, so the rollout stops after it,
  # while the targets are the teacher's completion of that block.
  np.testing.assert_array_equal(out.tokens_BR[0, :4], [3, 4, EOS, 6])
  np.testing.assert_array_equal(out.targets.tokens_BR[0, :4], [3, 4, 5, 6])
  np.testing.assert_array_equal(out.targets.valid_BR[0], [True] * 4 + [False] * 8)
