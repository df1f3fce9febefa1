"""Decoder invariants: masks, KV-cache prefill/extend against the full forward, left padding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from echo_jax.models.config import ModelConfig, TextConfig, VisionConfig
from echo_jax.models.decode_model import DecodeContext, EchoDecodeModel
from echo_jax.models.positions import rope_positions
from echo_jax.models.presets import TINY_TOKEN_IDS
from echo_jax.models.vlm import EchoVLM, anchored_block_causal_BPP
from echo_jax.sampling.protocol import DecodeModel

CONFIG = ModelConfig(
  vision=VisionConfig(
    depth=1,
    hidden_size=16,
    intermediate_size=16,
    num_heads=2,
    window_size=56,
    fullatt_block_indexes=(0,),
    out_hidden_size=32,
  ),
  text=TextConfig(
    vocab_size=48,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    rope_theta=10000.0,
    mrope_section=(1, 1, 2),
  ),
  tokens=TINY_TOKEN_IDS,
)
BLOCK = 2


@pytest.fixture(scope="module")
def model():
  return EchoDecodeModel.from_model(EchoVLM(CONFIG, rngs=nnx.Rngs(0)))


def _context(pads, length, seed=0):
  """Left-padded text contexts (B, P) with their 3-row positions and next positions."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(8, CONFIG.text.vocab_size, (len(pads), length)).astype(np.int32)
  valid = np.arange(length)[None] >= np.array(pads)[:, None]
  tokens[~valid] = CONFIG.tokens.pad
  pos = [rope_positions(t, None, v, CONFIG) for t, v in zip(tokens, valid)]
  return tokens, valid, np.stack([p for p, _ in pos], 1), np.array([n for _, n in pos])


@jax.jit
def _full(graphdef, state, tokens, positions, mask):
  return nnx.merge(graphdef, state)(tokens, positions, mask)


def test_block_len_one_is_causal():
  valid = jnp.asarray([[False, False, True, True, True, True], [True] * 6])
  causal = np.tril(np.ones((6, 6), bool))[None] & np.asarray(valid)[:, None, :]
  causal |= np.eye(6, dtype=bool)[None]
  np.testing.assert_array_equal(anchored_block_causal_BPP(valid, 1), causal)
  # block_len 2 on a grid anchored at the end (P=6): blocks (-3,-3,-2,-2,-1,-1).
  expected = np.kron(np.tril(np.ones((3, 3), bool)), np.ones((2, 2), bool))
  np.testing.assert_array_equal(anchored_block_causal_BPP(valid[1:], 2)[0], expected)


def test_prefill_extend_matches_full_forward(model):
  """prefill, extend(append 2), extend(4 new, append first 2), extend(2, append 0)."""
  decode, params = model
  assert isinstance(decode, DecodeModel)
  pads, p = [0, 3], 6
  tokens, valid, positions, next_pos = _context(pads, p)
  ctx = DecodeContext(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(valid), None)
  cache, nxt = jax.jit(decode.prefill, static_argnames=("cache_length", "block_len"))(
    params, ctx, cache_length=16, block_len=BLOCK
  )
  np.testing.assert_array_equal(nxt, next_pos)
  assert int(cache.length) == p
  extend = jax.jit(decode.extend, static_argnames=("block_len", "num_append"))

  rng = np.random.default_rng(1)
  steps = [(2, 2), (4, 2), (2, 0)]  # (new tokens, appended)
  new_tokens = [rng.integers(8, 48, (2, t)).astype(np.int32) for t, _ in steps]
  # The full sequence: context, then every step's tokens; `kept` marks stored ones.
  all_tokens = np.concatenate([tokens, *new_tokens], 1)
  total = all_tokens.shape[1]
  all_pos = np.zeros((3, 2, total), np.int32)
  all_pos[:, :, :p] = positions
  mask = np.zeros((2, total, total), bool)
  mask[:, :p, :p] = anchored_block_causal_BPP(jnp.asarray(valid), BLOCK)
  stored = np.concatenate([valid, np.zeros((2, total - p), bool)], 1)
  start, filled, got = p, next_pos.copy(), []
  for (t, n_app), new in zip(steps, new_tokens):
    idx = np.arange(start, start + t)
    pos_BT = filled[:, None] + np.arange(t)[None]
    all_pos[:, :, idx] = pos_BT[None]
    mask[:, idx] = stored[:, None, :]
    own = (np.arange(t)[None] // BLOCK) <= (np.arange(t)[:, None] // BLOCK)
    mask[:, idx[:, None], idx[None]] = own
    logits, cache = extend(
      params, cache, jnp.asarray(new), jnp.asarray(pos_BT), block_len=BLOCK, num_append=n_app
    )
    got.append((idx, np.asarray(logits)))
    stored[:, idx[:n_app]] = True
    filled = filled + n_app
    start += t
  assert int(cache.length) == p + sum(a for _, a in steps)
  # One full forward holds every step: each row only sees what was stored before it.
  full = np.asarray(_full(decode.graphdef, params, all_tokens, all_pos, jnp.asarray(mask)))
  for idx, logits in got:
    np.testing.assert_allclose(logits, full[:, idx], rtol=1e-5, atol=1e-5)
  first = got[0][1]
  # Rewinding: slots past `length` (now holding later tokens) are never attended.
  again, _ = extend(
    params,
    cache.replace(length=jnp.int32(p)),
    jnp.asarray(new_tokens[0]),
    jnp.asarray(next_pos[:, None] + np.arange(2)),
    block_len=BLOCK,
    num_append=0,
  )
  np.testing.assert_allclose(again, first, rtol=1e-6, atol=1e-6)


def test_left_padding_invariance(model):
  """Extra left padding changes neither the next position nor any logit after prefill.

  P=5 and P=9 are not multiples of the block length: the adapter pads them to 6 and 10.
  """
  decode, params = model
  prefill = jax.jit(decode.prefill, static_argnames=("cache_length", "block_len"))
  extend = jax.jit(decode.extend, static_argnames=("block_len", "num_append"))
  tokens, valid, positions, _ = _context([0], 5, seed=3)
  padded = np.concatenate([np.zeros((1, 4), np.int32), tokens], 1)
  pvalid = np.concatenate([np.zeros((1, 4), bool), valid], 1)
  ppos = np.concatenate([np.zeros((3, 1, 4), np.int32), positions], 2)
  new = jnp.asarray([[9, 10, 11, 12]])
  outs = []
  for tok, val, pos in [(tokens, valid, positions), (padded, pvalid, ppos)]:
    ctx = DecodeContext(jnp.asarray(tok), jnp.asarray(pos), jnp.asarray(val), None)
    cache, nxt = prefill(params, ctx, cache_length=14, block_len=BLOCK)
    assert int(cache.length) == decode.context_slots(ctx, block_len=BLOCK) == tok.shape[1] + 1
    logits, _ = extend(
      params, cache, new, nxt[:, None] + jnp.arange(4), block_len=BLOCK, num_append=4
    )
    outs.append((np.asarray(nxt), np.asarray(logits)))
  (n0, l0), (n1, l1) = outs
  np.testing.assert_array_equal(n0, n1)
  np.testing.assert_allclose(l0, l1, rtol=1e-5, atol=1e-5)


def test_bad_arguments_raise(model):
  decode, params = model
  tokens, valid, positions, _ = _context([0], 4)
  ctx = DecodeContext(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(valid), None)
  with pytest.raises(ValueError, match="cache_length"):
    decode.prefill(params, ctx, cache_length=2, block_len=BLOCK)
  m = decode.model(params)
  with pytest.raises(ValueError, match="mask_BLL"):
    m(jnp.asarray(tokens), jnp.asarray(positions), jnp.ones((1, 4, 4), jnp.float32))


def test_bfloat16_and_remat_run():
  """bfloat16 compute with float32 params and remat: finite grads, logits close to float32."""
  base = EchoVLM(CONFIG, rngs=nnx.Rngs(0))
  bf = EchoVLM(CONFIG.replace(dtype="bfloat16", remat=True), rngs=nnx.Rngs(0))
  tokens, valid, positions, _ = _context([0], 6)
  mask = anchored_block_causal_BPP(jnp.asarray(valid), BLOCK)
  args = (jnp.asarray(tokens), jnp.asarray(positions), mask)

  @nnx.jit
  def run(bf, base):
    out_bf, grads = nnx.value_and_grad(lambda m: m(*args).mean())(bf)
    return bf(*args), grads, base(*args)

  out_bf, grads, out = run(bf, base)
  assert out_bf.dtype == jnp.float32
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  assert jax.tree.leaves(grads)[0].dtype == jnp.float32  # param dtype stays float32
  np.testing.assert_allclose(out_bf, out, atol=5e-2)


def test_protocol_padding_and_split_context(model):
  """context_slots pads P up to the block grid; split_context + extend == the whole context."""
  decode, params = model
  assert isinstance(decode, DecodeModel)
  prefill = jax.jit(decode.prefill, static_argnames=("cache_length", "block_len"))
  extend = jax.jit(decode.extend, static_argnames=("block_len", "num_append"))
  tokens, valid, positions, _ = _context([1, 0], 5, seed=5)
  ctx = DecodeContext(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(valid), None)
  assert decode.context_slots(ctx, block_len=2) == 6
  np.testing.assert_array_equal(decode.context_lengths(ctx), [4, 5])
  probe = jnp.asarray([[9, 10], [11, 12]])

  def probe_logits(cache, nxt):
    out, _ = extend(params, cache, probe, nxt[:, None] + jnp.arange(2), block_len=1, num_append=0)
    return np.asarray(out)

  # Causal (block_len 1): moving the last token from the context to extend changes nothing.
  cache, nxt = prefill(params, ctx, cache_length=10, block_len=1)
  whole = probe_logits(cache, nxt)
  head, tail = decode.split_context(ctx, jnp.asarray([2, 1]), max_tail=3)
  np.testing.assert_array_equal(
    tail[:, 0], tokens[:, -2:-1].ravel() * [1, 0] + tokens[:, -1] * [0, 1]
  )
  np.testing.assert_array_equal(tail[0, :2], tokens[0, -2:])
  np.testing.assert_array_equal(decode.context_lengths(head), [2, 4])
  np.testing.assert_array_equal(head.tokens_BP[1, 1:], tokens[1, :4])
  np.testing.assert_array_equal(head.positions_3BP[:, 1, 1:], positions[:, 1, :4])
  # Same tail length for all: prefill(head) + extend(tail) == prefill(whole).
  head, tail = decode.split_context(ctx, jnp.asarray([1, 1]), max_tail=2)
  cache, nxt_head = prefill(params, head, cache_length=10, block_len=1)
  _, cache = extend(params, cache, tail[:, :1], nxt_head[:, None], block_len=1, num_append=1)
  np.testing.assert_array_equal(nxt_head + 1, nxt)
  np.testing.assert_allclose(probe_logits(cache, nxt), whole, rtol=1e-5, atol=1e-5)
