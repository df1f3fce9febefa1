"""The DCD objective against explicit numpy arithmetic."""

import jax
import numpy as np
import pytest

from echo_jax.diffusion.dcd_loss import DCDLossConfig, TeacherTargets, dcd_loss, step_weights_BR

V = 6
EOS = 2


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


@pytest.fixture
def case():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 4, V)).astype(np.float32)
  probs = _softmax(rng.normal(size=(2, 4, V)) * 2).astype(np.float32)
  tokens = probs.argmax(-1).astype(np.int32)
  tokens[0, 3] = EOS
  steps = np.array([[1, 2, 2, 3], [1, 1, 4, 2]], np.int32)
  valid = np.array([[True, True, True, True], [True, True, True, False]])
  return logits, probs, tokens, steps, valid


def _numpy_loss(logits, probs, tokens, steps, valid, *, step_weights, eos_weight, reverse=False):
  q = _softmax(logits.astype(np.float64))
  p = probs.astype(np.float64)
  kl = (q * np.log(q / p)).sum(-1) if reverse else (p * np.log(p / q)).sum(-1)
  w = steps / steps[valid].mean() if step_weights else np.ones_like(kl)
  n = valid.sum()
  eos = (tokens == EOS) & valid
  return (w * kl)[valid].sum() / n + eos_weight * (-np.log(q[..., EOS]))[eos].sum() / n


@pytest.mark.parametrize("step_weights", [True, False])
@pytest.mark.parametrize("eos_weight", [0.0, 0.5])
@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl"])
def test_full_targets_match_numpy(case, step_weights, eos_weight, divergence):
  logits, probs, tokens, steps, valid = case
  targets = TeacherTargets(tokens_BR=tokens, steps_BR=steps, valid_BR=valid, probs_BRV=probs)
  config = DCDLossConfig(step_weights=step_weights, eos_weight=eos_weight, divergence=divergence)
  out = jax.jit(lambda lg, t: dcd_loss(lg, t, eos_ids=(EOS,), config=config))(logits, targets)
  want = _numpy_loss(
    logits,
    probs,
    tokens,
    steps,
    valid,
    step_weights=step_weights,
    eos_weight=eos_weight,
    reverse=divergence == "reverse_kl",
  )
  np.testing.assert_allclose(float(out["loss"]), want, rtol=1e-5)
  assert int(out["num_tokens"]) == 7


def test_topk_with_all_ids_equals_full(case):
  logits, probs, tokens, steps, valid = case
  ids = np.argsort(-probs, axis=-1).astype(np.int32)
  full = TeacherTargets(tokens_BR=tokens, steps_BR=steps, valid_BR=valid, probs_BRV=probs)
  topk = TeacherTargets(
    tokens_BR=tokens,
    steps_BR=steps,
    valid_BR=valid,
    topk_ids_BRk=ids,
    topk_probs_BRk=np.take_along_axis(probs, ids, -1),
  )
  a = dcd_loss(logits, full, eos_ids=(EOS,))["loss"]
  b = dcd_loss(logits, topk, eos_ids=(EOS,))["loss"]
  np.testing.assert_allclose(float(a), float(b), rtol=1e-5)


def test_topk_other_bucket(case):
  """k=2: KL over the two kept ids plus one bucket of the remaining mass."""
  logits, probs, tokens, steps, valid = case
  ids = np.argsort(-probs, axis=-1)[..., :2].astype(np.int32)
  p_top = np.take_along_axis(probs, ids, -1).astype(np.float64)
  targets = TeacherTargets(
    tokens_BR=tokens, steps_BR=steps, valid_BR=valid, topk_ids_BRk=ids, topk_probs_BRk=p_top
  )
  out = dcd_loss(
    logits, targets, eos_ids=(EOS,), config=DCDLossConfig(step_weights=False, eos_weight=0)
  )
  q = _softmax(logits.astype(np.float64))
  q_top = np.take_along_axis(q, ids, -1)
  p = np.concatenate([p_top, 1 - p_top.sum(-1, keepdims=True)], -1)
  qq = np.concatenate([q_top, 1 - q_top.sum(-1, keepdims=True)], -1)
  kl = (p * np.log(p / qq)).sum(-1)
  np.testing.assert_allclose(float(out["loss"]), kl[valid].mean(), rtol=1e-5)


def test_student_equal_to_teacher_has_zero_kl(case):
  _, probs, _, steps, valid = case
  tokens = probs.argmax(-1).astype(np.int32)
  targets = TeacherTargets(tokens_BR=tokens, steps_BR=steps, valid_BR=valid, probs_BRV=probs)
  out = dcd_loss(np.log(probs), targets, eos_ids=(EOS,))
  assert abs(float(out["kl"])) < 1e-6
  assert float(out["token_agreement"]) == 1.0


def test_step_weights_are_proportional_with_mean_one():
  steps = np.array([[1, 2, 3, 9]], np.int32)
  valid = np.array([[True, True, True, False]])
  w = np.asarray(step_weights_BR(steps, valid))
  np.testing.assert_allclose(w[0, :3], [0.5, 1.0, 1.5])
  assert w[0, :3].mean() == pytest.approx(1.0)


def test_bad_config_is_refused():
  with pytest.raises(ValueError, match="divergence"):
    DCDLossConfig(divergence="js")
  with pytest.raises(ValueError, match="eos_weight"):
    DCDLossConfig(eos_weight=-1)
