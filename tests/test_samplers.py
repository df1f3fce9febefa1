"""Samplers against uncached reference decoding, plus exact small cases.

The reference decoders below recompute the whole sequence without a cache at
every step (the released code's `use_cache=False` path), one example at a
time and without padding; the samplers run batched, padded and cached.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference_model as rm

from echo_jax.sampling import (
  AutoregressiveSampler,
  MultiStepSampler,
  OneStepSampler,
  RepetitionGuard,
  Sampling,
  commit_mask,
  stops,
  transfer_schedule,
)
from echo_jax.sampling.commit import choose_tokens, draw_tokens, filtered_logits

EOS, MASK, PAD = 1, 2, 0
T = 4  # block length
IDS = dict(eos_id=EOS, mask_id=MASK, pad_id=PAD)


# ---------------------------------------------------------------- references
def full_logits(model, params, seq, blk):
  """Uncached forward of one sequence; token q sees k iff blk[k] <= blk[q]."""
  blk = np.asarray(blk)
  mask = blk[None, :] <= blk[:, None]
  out = model.forward(
    params, jnp.asarray([seq], jnp.int32), jnp.arange(len(seq))[None], jnp.asarray(mask)[None]
  )
  return np.asarray(out[0], np.float64)


def np_commit(conf, masked, due, tau):
  """The released low_confidence_dynamic rule, one example."""
  c = np.where(masked, conf, -np.inf)
  high = c > tau
  if high.sum() >= due:
    return high
  sel = np.zeros_like(masked)
  sel[np.argsort(-c, kind="stable")[: min(due, masked.sum())]] = True
  return sel


def ref_block_decode(model, params, prompt, *, steps, budget, tau=0.85, fused=True, released=False):
  """Greedy block diffusion of one prompt: (response cut at EOS, forwards, tokens)."""
  sched = transfer_schedule(T, steps)
  if released:
    a = len(prompt) // T * T
    head, tail = list(prompt[:a]), list(prompt[a:])
    nblocks = -(-(len(tail) + budget) // T)
  else:
    head, tail, nblocks = list(prompt), [], budget // T
  head_blk = [(i - len(head)) // T for i in range(len(head))]
  canvas, response, forwards, tokens = [], [], 0, 0
  for n in range(nblocks):
    t = len(tail) if n == 0 else 0
    x = np.array((tail if n == 0 else []) + [MASK] * (T - t))
    masked = np.arange(T) >= t
    if n > 0 and not fused:
      forwards += 1  # the separate cache-write forward
    s = 0
    while masked.any():
      seq = head + canvas + list(x)
      blk = head_blk + [j // T for j in range(len(canvas) + T)]
      logits = full_logits(model, params, seq, blk)[-T:]
      forwards += 1
      p = np.exp(logits - logits.max(-1, keepdims=True))
      p /= p.sum(-1, keepdims=True)
      tok, conf = p.argmax(-1), p.max(-1)
      sel = np_commit(conf, masked, sched[s], tau)
      x = np.where(sel, tok, x)
      masked &= ~sel
      s += 1
    canvas += list(x)
    response += list(x[t:])
    tokens += T - t
    if EOS in x[t:]:
      break
  cut = response.index(EOS) if EOS in response else len(response)
  return response[:cut], forwards, tokens


def ref_ar_decode(model, params, prompt, *, budget, at=False):
  """Greedy token-by-token decoding with a causal mask, no cache."""
  gen = []
  while len(gen) < budget:
    seq = list(prompt) + gen + ([MASK] if at else [])
    tok = int(full_logits(model, params, seq, range(len(seq)))[-1].argmax())
    gen.append(tok)
    if tok == EOS:
      break
  return gen[: gen.index(EOS)] if EOS in gen else gen, len(gen)


def padded(resp, width):
  return list(resp) + [PAD] * (width - len(resp))


@pytest.fixture(scope="module", params=[0, 1])
def setup(request):
  seed = request.param
  model = rm.ReferenceModel(rm.RefConfig(vocab=16))
  params = rm.init_params(model.cfg, jax.random.key(seed))
  rng = np.random.default_rng(seed)
  prompts = [list(rng.integers(3, 16, size=n)) for n in (5, 8, 3, 7)]
  return model, params, prompts


# ---------------------------------------------------------------- parity
@pytest.mark.parametrize(
  "sampler",
  [
    MultiStepSampler(**IDS, block_len=T, steps=T, max_new_tokens=16),
    MultiStepSampler(**IDS, block_len=T, steps=2, max_new_tokens=16, fused_append=False),
    OneStepSampler(**IDS, block_len=T, max_new_tokens=16),
  ],
  ids=["multi4_fused", "multi2_unfused", "one_step"],
)
@pytest.mark.parametrize("grid", ["aligned", "released"])
def test_block_sampler_equals_uncached_reference(setup, sampler, grid):
  model, params, prompts = setup
  sampler = dataclasses.replace(sampler, grid=grid)
  out = sampler(model, params, rm.make_context(prompts, 8))
  width = out.tokens_BR.shape[1]
  assert width == 16 + (T if grid == "released" else 0)
  for b, prompt in enumerate(prompts):
    resp, forwards, tokens = ref_block_decode(
      model,
      params,
      prompt,
      steps=sampler.steps,
      budget=16,
      fused=sampler.fused_append,
      released=grid == "released",
    )
    assert out.tokens_BR[b].tolist() == padded(resp, width), f"example {b}"
    assert int(out.lengths_B[b]) == len(resp)
    assert int(out.stats.forwards_B[b]) == forwards
    assert int(out.stats.tokens_B[b]) == tokens
  assert int(out.stats.batch_forwards) >= int(out.stats.forwards_B.max())


@pytest.mark.parametrize("mode", ["next", "at"])
def test_ar_sampler_equals_uncached_reference(setup, mode):
  model, params, prompts = setup
  sampler = AutoregressiveSampler(**IDS, max_new_tokens=12, logits=mode)
  out = sampler(model, params, rm.make_context(prompts, 8))
  for b, prompt in enumerate(prompts):
    resp, n = ref_ar_decode(model, params, prompt, budget=12, at=mode == "at")
    assert out.tokens_BR[b].tolist() == padded(resp, 12), f"example {b}"
    assert int(out.stats.forwards_B[b]) == n == int(out.stats.tokens_B[b])
  np.testing.assert_array_equal(out.stats.tpf_B, 1.0)


def test_batch_equals_each_example_alone(setup):
  model, params, prompts = setup
  sampler = MultiStepSampler(**IDS, block_len=T, steps=T, max_new_tokens=16, grid="released")
  both = sampler(model, params, rm.make_context(prompts, 12))  # another bucket, more padding
  for b, prompt in enumerate(prompts):
    alone = sampler(model, params, rm.make_context([prompt], 8))
    assert both.tokens_BR[b].tolist() == alone.tokens_BR[0].tolist()
    assert int(both.stats.forwards_B[b]) == int(alone.stats.forwards_B[0])


def test_one_step_tpf_is_block_len(setup):
  model, params, prompts = setup
  # An EOS id the model never emits: every report runs to the budget.
  sampler = OneStepSampler(eos_id=99, mask_id=MASK, pad_id=PAD, block_len=T, max_new_tokens=20)
  out = sampler(model, params, rm.make_context(prompts, 8))
  np.testing.assert_array_equal(out.stats.tpf_B, float(T))
  np.testing.assert_array_equal(out.stats.forwards_B, 5)
  assert int(out.stats.batch_forwards) == 5
  assert not out.stats.eos_B.any()


# ---------------------------------------------------------------- exact small cases
def test_commit_rule_exact():
  conf = jnp.array(
    [[0.9, 0.95, 0.5, 0.3], [0.9, 0.95, 0.5, 0.3], [0.2, 0.6, 0.6, 0.99], [0.9, 0.1, 0.95, 0.4]]
  )
  masked = jnp.array([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 0], [0, 1, 0, 1]], bool)
  got = commit_mask(conf, masked, jnp.array([[1], [3], [2], [4]]), 0.85)
  want = [
    [1, 1, 0, 0],  # two above tau >= 1 due: both
    [1, 1, 1, 0],  # only two above tau < 3 due: the 3 most confident
    [0, 1, 1, 0],  # 0.99 is not masked; tie 0.6/0.6 -> both (k = 2)
    [0, 1, 0, 1],  # due 4 > 2 masked: all masked, never an unmasked one
  ]
  np.testing.assert_array_equal(got, np.array(want, bool))
  assert transfer_schedule(8, 3) == (3, 3, 2)


@dataclasses.dataclass(frozen=True)
class TableModel:
  """A stub whose logits depend only on (example, position): table[b, pos]."""

  def context_slots(self, context, *, block_len):
    return -(-context.tokens_BP.shape[1] // block_len) * block_len

  def prefill(self, params, context, *, cache_length, block_len):
    n = jnp.sum(context.valid_BP, axis=1).astype(jnp.int32)
    return rm.RefCache(
      k_NBSHK=jnp.zeros(()), v_NBSHK=jnp.zeros(()), valid_BS=jnp.zeros(()), length=jnp.int32(0)
    ), n

  def extend(self, params, cache, tokens_BT, positions_BT, *, block_len, num_append):
    logits = jnp.take_along_axis(params, positions_BT[:, :, None], axis=1)
    return logits, cache.replace(length=cache.length + num_append)


def table(rows, vocab=8):
  """Logits from (token, prob) per position: prob on token, the rest spread evenly."""
  out = np.zeros((len(rows), max(len(r) for r in rows) + 8, vocab))
  for b, row in enumerate(rows):
    out[b, :] = np.log(1.0 / vocab)
    for i, (tok, p) in enumerate(row):
      q = np.full(vocab, (1 - p) / (vocab - 1))
      q[tok] = p
      out[b, i] = np.log(q)
  return jnp.asarray(out, jnp.float32)


def stub_context(lengths):
  return rm.make_context([[3] * n for n in lengths], max(lengths))


def test_one_step_commits_every_masked_position():
  # The one-step sampler commits the masked positions without ranking them: with all of
  # a block due at its only step, commit_mask selects exactly those, at any confidence.
  rng = np.random.default_rng(0)
  for _ in range(20):
    conf = jnp.asarray(rng.random((3, 8)), jnp.float32)
    masked = jnp.asarray(rng.random((3, 8)) < 0.7)
    due = jnp.full((3, 1), 8)
    for tau in (0.0, 0.5, 0.85, 1.0):
      np.testing.assert_array_equal(commit_mask(conf, masked, due, tau), masked)
  logits = jnp.asarray(rng.normal(size=(2, 8, 32)), jnp.float32)
  hot = Sampling(temperature=1.5, top_k=5)
  for sampling, key in ((Sampling(), None), (hot, jax.random.key(3))):
    np.testing.assert_array_equal(
      draw_tokens(logits, sampling, key), choose_tokens(logits, sampling, key)[0]
    )


def test_multi_step_commit_order_on_fixed_logits():
  # Context of 4 tokens: the response starts at position 4.
  ctx = [(3, 0.5)] * 4
  blocks = [(5, 0.9), (6, 0.95), (7, 0.5), (4, 0.3), (4, 0.99), (4, 0.99), (4, 0.99), (4, 0.99)]
  params = table([ctx + blocks])
  out = MultiStepSampler(eos_id=1, mask_id=2, pad_id=0, block_len=4, steps=4, max_new_tokens=8)(
    TableModel(), params, stub_context([4])
  )
  assert out.tokens_BR[0].tolist() == [5, 6, 7, 4, 4, 4, 4, 4]
  # Block 0: {0, 1} above tau, then 7 (0.5), then 4 (0.3): 3 steps. Block 1: all at once.
  assert int(out.stats.forwards_B[0]) == 4
  assert float(out.stats.tpf_B[0]) == 2.0


def test_eos_stops_after_its_block_and_cuts():
  a = [(3, 0.5)] * 4 + [(5, 0.99)] * 5 + [(1, 0.99)] + [(6, 0.99)] * 10
  b = [(3, 0.5)] * 4 + [(5, 0.99)] * 16
  out = OneStepSampler(eos_id=1, mask_id=2, pad_id=0, block_len=4, max_new_tokens=16)(
    TableModel(), table([a, b]), stub_context([4, 4])
  )
  assert out.tokens_BR.tolist() == [[5] * 5 + [0] * 11, [5] * 16]
  assert out.lengths_B.tolist() == [5, 16]
  assert out.stats.eos_B.tolist() == [True, False]
  assert out.stats.forwards_B.tolist() == [2, 4]  # a stops after block 1 (EOS at 5)
  assert out.stats.tokens_B.tolist() == [8, 16]


def test_repetition_guard_stops_loops():
  loop = [(3, 0.5)] * 4 + [(t, 0.99) for t in [4, 5, 6] * 8]
  # Period 13: no 3-gram occurs a third time within the 20-token budget.
  fine = [(3, 0.5)] * 4 + [(t, 0.99) for t in range(3, 16)] * 2
  guard = RepetitionGuard(ngram=3, max_repeats=2)
  sampler = OneStepSampler(
    eos_id=1, mask_id=2, pad_id=0, block_len=4, max_new_tokens=20, repetition=guard
  )
  out = sampler(TableModel(), table([loop, fine], vocab=16), stub_context([4, 4]))
  # "4 5 6" occurs the 3rd time at tokens 6..8, in block 2: stop after it.
  assert out.stats.looped_B.tolist() == [True, False]
  assert int(out.stats.loops) == 1
  assert out.stats.forwards_B.tolist() == [3, 5]
  assert out.tokens_BR[0].tolist() == [4, 5, 6] * 4 + [0] * 8
  # Next-token logits: position 3 (the last context token) predicts the first token.
  ar = AutoregressiveSampler(eos_id=1, pad_id=0, max_new_tokens=20, repetition=guard)
  out = ar(SplitTableModel(), table([loop, fine], vocab=16), stub_context([4, 4]))
  assert out.tokens_BR[0].tolist() == [3] + [4, 5, 6] * 3 + [0] * 10
  assert out.stats.looped_B.tolist() == [True, False]
  assert out.stats.forwards_B.tolist() == [10, 20]


def test_repeats_ngram_exact():
  buf = jnp.array([[4, 5, 4, 5, 4, 5, 9, 9], [9, 4, 5, 4, 5, 4, 5, 0]])
  guard = RepetitionGuard(ngram=2, max_repeats=2)
  begin, end = jnp.array([0, 1]), jnp.array([6, 7])
  # Row 0: "4 5" ends at 1, 3, 5: the third ends in [4, 6). Row 1 the same, shifted by 1.
  assert stops.repeats_ngram(buf, begin, end, jnp.int32(4), 2, guard).tolist() == [True, False]
  assert stops.repeats_ngram(buf, begin, end, jnp.int32(5), 2, guard).tolist() == [True, True]
  assert stops.repeats_ngram(buf, begin, end, jnp.int32(0), 4, guard).tolist() == [False, False]


# ---------------------------------------------------------------- sampling
def np_filter(x, temperature, top_k, top_p):
  """The released torch code's temperature / top-k / top-p, in numpy (one row)."""
  x = x / temperature
  if top_k > 0:
    x = np.where(x < np.sort(x)[::-1][top_k - 1], -np.inf, x)
  if top_p < 1.0:
    order = np.argsort(-x, kind="stable")
    p = np.exp(x[order] - x[order].max())
    cum = np.cumsum(p / p.sum())
    drop = np.concatenate([[False], cum[:-1] > top_p])
    x = x.copy()
    x[order[drop]] = -np.inf
  return x


@pytest.mark.parametrize("k,p", [(0, 1.0), (3, 1.0), (0, 0.7), (5, 0.5)])
def test_filtered_logits_match_released_rule(k, p):
  x = np.random.default_rng(0).normal(size=(2, 3, 11)) * 2
  got = filtered_logits(jnp.asarray(x, jnp.float32), Sampling(temperature=0.7, top_k=k, top_p=p))
  want = np.stack([[np_filter(r, 0.7, k, p) for r in row] for row in x])
  np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
  np.testing.assert_allclose(
    np.where(np.isinf(want), 0, got), np.where(np.isinf(want), 0, want), rtol=1e-5
  )


def test_temperature_sampling(setup):
  model, params, prompts = setup
  ctx = rm.make_context(prompts, 8)
  greedy = MultiStepSampler(**IDS, block_len=T, steps=2, max_new_tokens=12)
  top1 = dataclasses.replace(greedy, sampling=Sampling(temperature=1.3, top_k=1))
  # top_k = 1 leaves one token, so sampling picks the argmax (its confidence differs).
  a = top1(model, params, ctx, jax.random.key(0))
  hot = dataclasses.replace(greedy, sampling=Sampling(temperature=2.0))
  b1, b2 = hot(model, params, ctx, jax.random.key(1)), hot(model, params, ctx, jax.random.key(1))
  b3 = hot(model, params, ctx, jax.random.key(2))
  assert b1.tokens_BR.tolist() == b2.tokens_BR.tolist()
  assert b1.tokens_BR.tolist() != b3.tokens_BR.tolist()
  assert a.tokens_BR.shape == greedy(model, params, ctx).tokens_BR.shape
  with pytest.raises(ValueError, match="PRNG key"):
    hot(model, params, ctx)


def test_validation_errors(setup):
  model, params, prompts = setup
  ctx = rm.make_context(prompts, 8)
  with pytest.raises(ValueError, match="multiple of block_len"):
    OneStepSampler(**IDS, block_len=4, max_new_tokens=10)(model, params, ctx)
  with pytest.raises(ValueError, match="steps"):
    MultiStepSampler(**IDS, block_len=4, steps=5)(model, params, ctx)
  with pytest.raises(ValueError, match="grid"):
    MultiStepSampler(**IDS, grid="global")(model, params, ctx)
  with pytest.raises(TypeError, match="split_context"):
    AutoregressiveSampler(eos_id=1, pad_id=0)(TableModel(), params, ctx)
  with pytest.raises(TypeError, match="DecodeModel"):
    OneStepSampler(**IDS)(object(), params, ctx)


@dataclasses.dataclass(frozen=True)
class SplitTableModel(TableModel):
  def context_lengths(self, context):
    return rm.ReferenceModel().context_lengths(context)

  def split_context(self, context, tail_len_B, *, max_tail):
    return rm.ReferenceModel().split_context(context, tail_len_B, max_tail=max_tail)
