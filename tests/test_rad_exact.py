"""RAD is exact: with the real EchoVLM (tiny random weights, text only), the logits of noisy
block n in one packed forward equal those of a forward over [context | clean blocks < n |
noisy block n] alone, and of the KV-cached inference path; full duplication gives the
same loss for the same noise."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from echo_jax.diffusion import bd3, noise, rad
from echo_jax.models import masks
from echo_jax.models.config import TextConfig, VisionConfig
from echo_jax.models.presets import get_preset
from echo_jax.models.vlm import EchoVLM

EOS, MASK = 2, 7
BATCH, P, R, BLOCK, VOCAB = 3, 8, 8, 4, 64
ATOL = 2e-5


def tiny_config():
  return get_preset("tiny").replace(
    vision=VisionConfig(
      depth=1,
      hidden_size=32,
      intermediate_size=64,
      num_heads=2,
      window_size=56,
      fullatt_block_indexes=(0,),
      out_hidden_size=32,
    ),
    text=TextConfig(
      vocab_size=VOCAB,
      hidden_size=32,
      intermediate_size=64,
      num_hidden_layers=2,
      num_attention_heads=2,
      num_key_value_heads=1,
      rope_theta=10_000.0,
      mrope_section=(2, 3, 3),
      tie_word_embeddings=False,
    ),
  )


@pytest.fixture(scope="module")
def model():
  return EchoVLM(tiny_config(), rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def jitted(model):
  """Jitted full forward, prefill and extend of the module's model."""
  graphdef, state = nnx.split(model)

  @jax.jit
  def forward(state, tokens_BL, positions_3BL, mask_BLL):
    return nnx.merge(graphdef, state)(tokens_BL, positions_3BL, mask_BLL)

  @jax.jit
  def prefill(state, tokens_BP, positions_3BP, valid_BP):
    m = nnx.merge(graphdef, state)
    return m.prefill(tokens_BP, positions_3BP, valid_BP, None, cache_length=P + R, block_len=BLOCK)

  @functools.partial(jax.jit, static_argnames="num_append")
  def extend(state, cache, tokens_BT, positions_BT, num_append):
    m = nnx.merge(graphdef, state)
    return m.extend(cache, tokens_BT, positions_BT, block_len=BLOCK, num_append=num_append)

  return dict(
    forward=functools.partial(forward, state),
    prefill=functools.partial(prefill, state),
    extend=functools.partial(extend, state),
  )


@pytest.fixture(scope="module")
def forward(jitted):
  return jitted["forward"]


@pytest.fixture(scope="module")
def example():
  """Left-padded contexts (0, 3 and 5 pads) and responses valid for 2, 1 and 2 blocks."""
  rng = np.random.default_rng(0)
  pads = np.array([0, 3, 5])
  ctx_valid = np.arange(P)[None] >= pads[:, None]
  ctx_tokens = np.where(ctx_valid, rng.integers(8, VOCAB, (BATCH, P)), 0)
  pos = np.where(ctx_valid, np.cumsum(ctx_valid, 1) - 1, 0)
  # Rows differ inside the context, as they do over an image.
  ctx_pos = np.stack([pos, pos + ctx_valid * rng.integers(0, 3, (BATCH, P)), pos])
  next_pos = ctx_pos.max(axis=(0, 2)) + 1
  resp = rng.integers(8, VOCAB, (BATCH, R))
  for b, eos_at in enumerate([6, 1, 7]):
    resp[b, eos_at] = EOS
    resp[b, eos_at + 1 :] = 0
  resp_tokens = jnp.asarray(resp)
  return dict(
    context=(jnp.asarray(ctx_tokens), jnp.asarray(ctx_pos), jnp.asarray(ctx_valid)),
    response=(resp_tokens, rad.response_valid_mask(resp_tokens, EOS, BLOCK), jnp.asarray(next_pos)),
  )


@pytest.mark.parametrize("complementary", [False, True])
def test_noisy_block_logits_equal_separate_forward(forward, example, complementary):
  ctx_tokens, ctx_pos, ctx_valid = example["context"]
  resp_tokens, resp_valid, next_pos = example["response"]
  config = noise.NoiseConfig(complementary=complementary)
  batch = rad.pack_rad(
    *example["context"],
    *example["response"],
    jax.random.key(1),
    block_len=BLOCK,
    mask_id=MASK,
    noise=config,
  )
  logits = forward(batch.tokens_BL, batch.positions_3BL, batch.mask_BLL)
  resp_pos = next_pos[:, None] + jnp.arange(R)
  compared = 0
  for c in range(config.num_noisy):
    noisy_start = P + c * R
    noisy_BR = batch.tokens_BL[:, noisy_start : noisy_start + R]
    for n in range(R // BLOCK):
      blk = slice(n * BLOCK, (n + 1) * BLOCK)
      tokens = jnp.concatenate([ctx_tokens, resp_tokens[:, : n * BLOCK], noisy_BR[:, blk]], 1)
      pos_BT = jnp.concatenate([resp_pos[:, : n * BLOCK], resp_pos[:, blk]], 1)
      positions = jnp.concatenate([ctx_pos, jnp.broadcast_to(pos_BT[None], (3, *pos_BT.shape))], 2)
      valid = jnp.concatenate([ctx_valid, resp_valid[:, : (n + 1) * BLOCK]], 1)
      alone = forward(tokens, positions, masks.block_causal_mask(valid, BLOCK, anchor=P))
      rows = np.asarray(resp_valid[:, blk])  # only real blocks; invalid ones see only themselves
      got = np.asarray(logits[:, noisy_start + n * BLOCK : noisy_start + (n + 1) * BLOCK])
      want = np.asarray(alone[:, -BLOCK:])
      np.testing.assert_allclose(got[rows], want[rows], atol=ATOL, rtol=0)
      compared += rows.sum()
  assert compared == config.num_noisy * int(resp_valid.sum())
  # Some of those tokens really were masked, so the comparison covered the diffusion inputs.
  assert int(jnp.sum(batch.tokens_BL == MASK)) > 0


def test_clean_copy_logits_equal_block_causal_prefix(forward, example):
  ctx_tokens, ctx_pos, ctx_valid = example["context"]
  resp_tokens, resp_valid, next_pos = example["response"]
  batch = rad.pack_rad(
    *example["context"], *example["response"], jax.random.key(2), block_len=BLOCK, mask_id=MASK
  )
  logits = np.asarray(forward(batch.tokens_BL, batch.positions_3BL, batch.mask_BLL))
  tokens = jnp.concatenate([ctx_tokens, resp_tokens], 1)
  positions = jnp.concatenate([ctx_pos, batch.positions_3BL[:, :, P + R :]], 2)
  valid = jnp.concatenate([ctx_valid, resp_valid], 1)
  prefix = np.asarray(forward(tokens, positions, masks.block_causal_mask(valid, BLOCK, anchor=P)))
  rows = np.asarray(valid)
  keep = np.r_[0:P, P + R : P + 2 * R]
  np.testing.assert_allclose(logits[:, keep][rows], prefix[rows], atol=ATOL, rtol=0)


def test_noisy_block_logits_equal_cached_inference(jitted, example):
  """Training (one RAD forward) and inference (prefill + extend) agree block by block."""
  ctx_tokens, ctx_pos, ctx_valid = example["context"]
  resp_tokens, resp_valid, next_pos = example["response"]
  batch = rad.pack_rad(
    *example["context"], *example["response"], jax.random.key(3), block_len=BLOCK, mask_id=MASK
  )
  logits = np.asarray(jitted["forward"](batch.tokens_BL, batch.positions_3BL, batch.mask_BLL))
  cache, next_position = jitted["prefill"](ctx_tokens, ctx_pos, ctx_valid)
  np.testing.assert_array_equal(next_position, next_pos)
  resp_pos = next_pos[:, None] + jnp.arange(R)
  for n in range(R // BLOCK):
    blk = slice(n * BLOCK, (n + 1) * BLOCK)
    noisy = batch.tokens_BL[:, P + n * BLOCK : P + (n + 1) * BLOCK]
    step_logits, _ = jitted["extend"](cache, noisy, resp_pos[:, blk], num_append=0)
    rows = np.asarray(resp_valid[:, blk])
    got = logits[:, P + n * BLOCK : P + (n + 1) * BLOCK]
    np.testing.assert_allclose(got[rows], np.asarray(step_logits)[rows], atol=ATOL, rtol=0)
    _, cache = jitted["extend"](cache, resp_tokens[:, blk], resp_pos[:, blk], num_append=BLOCK)


@pytest.mark.parametrize("complementary", [False, True])
def test_rad_and_full_duplication_losses_agree(forward, example, complementary):
  config = noise.NoiseConfig(complementary=complementary, per_block=True)
  args = (*example["context"], *example["response"], jax.random.key(4))
  kwargs = dict(block_len=BLOCK, mask_id=MASK, noise=config)
  packed_rad = rad.pack_rad(*args, **kwargs)
  packed_bd3 = bd3.pack_bd3(*args, **kwargs)
  assert packed_rad.tokens_BL.shape[1] == P + (config.num_noisy + 1) * R
  assert packed_bd3.tokens_BL.shape[1] == (config.num_noisy + 1) * (P + R)
  logits_rad = forward(packed_rad.tokens_BL, packed_rad.positions_3BL, packed_rad.mask_BLL)
  logits_bd3 = forward(packed_bd3.tokens_BL, packed_bd3.positions_3BL, packed_bd3.mask_BLL)
  out_rad = rad.rad_loss(logits_rad, packed_rad)
  out_bd3 = bd3.bd3_loss(logits_bd3, packed_bd3)
  assert float(out_rad["num_masked"]) > 0
  for k in ("num_tokens", "num_masked"):
    assert float(out_rad[k]) == float(out_bd3[k])
  for k in ("loss", "accuracy", "ce_masked"):
    np.testing.assert_allclose(out_rad[k], out_bd3[k], rtol=1e-5)
  # The noisy response logits themselves agree, copy by copy.
  valid = np.asarray(example["response"][1])
  for c in range(config.num_noisy):
    a = np.asarray(logits_rad[:, P + c * R : P + (c + 1) * R])
    b = np.asarray(logits_bd3[:, c * (P + R) + P : (c + 1) * (P + R)])
    np.testing.assert_allclose(a[valid], b[valid], atol=ATOL, rtol=0)
