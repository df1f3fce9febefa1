"""The block loop's recording mode (the DCD teacher rollout) against an uncached reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference_model as rm

from echo_jax.sampling import block_decode

EOS, MASK, PAD = 1, 2, 0
T, BUDGET, TAU = 4, 8, 0.975


def _logits(model, params, seq, blk):
  blk = np.asarray(blk)
  mask = blk[None, :] <= blk[:, None]
  out = model.forward(
    params, jnp.asarray([seq], jnp.int32), jnp.arange(len(seq))[None], jnp.asarray(mask)[None]
  )
  return np.asarray(out[0], np.float64)


def ref_record(model, params, prompt):
  """One prompt, no cache: per position (token, step, probs), the clean response, forwards.

  Forwards are counted as a loop with a separate cache write per finished block would.
  """
  head_blk = [(i - len(prompt)) // T for i in range(len(prompt))]
  canvas, toks, steps, probs, forwards = [], [], [], [], 0
  for _ in range(BUDGET // T):
    x = np.full(T, MASK)
    masked = np.ones(T, bool)
    st, pr = np.zeros(T, int), np.zeros((T, model.cfg.vocab))
    s = 0
    while masked.any():
      seq = list(prompt) + canvas + list(x)
      logits = _logits(model, params, seq, head_blk + [j // T for j in range(len(canvas) + T)])
      forwards += 1
      p = np.exp(logits[-T:] - logits[-T:].max(-1, keepdims=True))
      p /= p.sum(-1, keepdims=True)
      conf = np.where(masked, p.max(-1), -np.inf)
      sel = conf >= TAU
      if not sel.any():
        sel = np.zeros(T, bool)
        sel[int(np.argmax(conf))] = True
      s += 1
      x = np.where(sel, p.argmax(-1), x)
      st = np.where(sel, s, st)
      pr = np.where(sel[:, None], p, pr)
      masked &= ~sel
    forwards += 1  # the separate write of this block into the cache
    canvas += list(x)
    toks += list(x)
    steps += list(st)
    probs += list(pr)
    if EOS in x:
      break
  return toks, steps, np.array(probs), forwards


@pytest.fixture(scope="module")
def setup():
  model = rm.ReferenceModel(rm.RefConfig(vocab=16))
  params = rm.init_params(model.cfg, jax.random.key(3))
  rng = np.random.default_rng(3)
  prompts = [list(rng.integers(3, 16, size=n)) for n in (5, 3)]
  return model, params, prompts


def test_recording_equals_reference_and_saves_a_forward_per_block(setup):
  model, params, prompts = setup
  cfg = block_decode.BlockSamplerConfig(
    eos_id=EOS, mask_id=MASK, pad_id=PAD, block_len=T, max_new_tokens=BUDGET, steps=T, threshold=TAU
  )
  out, rec = block_decode.record_rollout(
    cfg, block_decode.Recording(), model, params, rm.make_context(prompts, 8)
  )
  for b, prompt in enumerate(prompts):
    toks, steps, probs, ref_forwards = ref_record(model, params, prompt)
    n = len(toks)
    assert rec.tokens_BR[b, :n].tolist() == toks, f"example {b}"
    assert rec.clean_BR[b, :n].tolist() == toks
    assert rec.steps_BR[b, :n].tolist() == steps
    assert set(rec.steps_BR[b, n:].tolist()) <= {0}
    np.testing.assert_allclose(rec.probs_BRX[b, :n], probs, atol=2e-5)
    # The fused append: the denoising forwards only, one per block fewer than the reference.
    blocks = n // T
    assert int(out.stats.forwards_B[b]) == ref_forwards - blocks
    assert max(steps) > 1, "the single-most-confident branch is exercised"


def test_recording_refuses_other_schedules(setup):
  model, params, prompts = setup
  cfg = block_decode.BlockSamplerConfig(
    eos_id=EOS, mask_id=MASK, pad_id=PAD, block_len=T, max_new_tokens=BUDGET, steps=2
  )
  with pytest.raises(ValueError, match="steps == block_len"):
    block_decode.record_rollout(
      cfg, block_decode.Recording(), model, params, rm.make_context(prompts, 8)
    )
