"""Corruption invariants, exact packings (RAD, full duplication, AR) and losses against numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from echo_jax.diffusion import ar, bd3, noise, rad
from echo_jax.diffusion.packed import packed_loss
from echo_jax.models import masks

EOS, MASK = 2, 7


def block_prefix_valid(rng, batch, response_len, block_len):
  """Responses valid through a random number (>= 0) of whole blocks."""
  num_blocks = rng.integers(0, response_len // block_len + 1, batch)
  return np.arange(response_len)[None] < (num_blocks * block_len)[:, None]


# --- noise ---------------------------------------------------------------------------


@pytest.mark.parametrize("per_block", [False, True])
def test_corrupt_invariants(per_block):
  B = 4
  valid = block_prefix_valid(np.random.default_rng(0), 64, 16, B)
  config = noise.NoiseConfig(eps=0.05, per_block=per_block)
  c = noise.corrupt(jax.random.key(1), jnp.asarray(valid), block_len=B, config=config)
  masked, t = np.asarray(c.masked_CBR), np.asarray(c.t_CBR)
  assert masked.shape == t.shape == (1, 64, 16) and c.num_noisy == 1
  masked, t = masked[0], t[0]
  assert not np.any(masked & ~valid)
  valid_blocks = valid.reshape(64, 4, B).any(-1)
  masked_blocks = masked.reshape(64, 4, B).sum(-1)
  assert np.all(masked_blocks[valid_blocks] >= 1)
  assert np.all((t >= 0.05) & (t <= 1.0))
  t_blocks = t.reshape(64, 4, B)
  assert np.all(t_blocks == t_blocks[..., :1])  # constant inside a block
  if per_block:
    assert np.any(t_blocks[:, 0, 0] != t_blocks[:, 1, 0])
  else:
    assert np.all(t == t[:, :1])  # one level per example


def test_corrupt_complementary_invariants():
  B = 4
  valid = block_prefix_valid(np.random.default_rng(2), 64, 16, B)
  config = noise.NoiseConfig(eps=0.05, complementary=True)
  c = noise.corrupt(jax.random.key(3), jnp.asarray(valid), block_len=B, config=config)
  m, t = np.asarray(c.masked_CBR), np.asarray(c.t_CBR)
  assert m.shape == (2, 64, 16) and c.num_noisy == 2
  assert not np.any(m[0] & m[1])
  np.testing.assert_array_equal(m[0] | m[1], valid)
  np.testing.assert_allclose(t[1], 1.0 - t[0], rtol=0, atol=1e-6)
  assert np.all((t >= 0.05 - 1e-6) & (t <= 0.95 + 1e-6))
  valid_blocks = valid.reshape(64, 4, B).any(-1)
  for copy in m:
    assert np.all(copy.reshape(64, 4, B).sum(-1)[valid_blocks] >= 1)


def test_corrupt_rate_follows_t():
  # One long block, so the at-least-one rule hardly matters: masked fraction ~ t.
  valid = jnp.ones((128, 256), bool)
  c = noise.corrupt(jax.random.key(4), valid, block_len=256)
  frac = np.asarray(c.masked_CBR[0]).mean(-1)
  t = np.asarray(c.t_CBR[0, :, 0])
  assert np.mean(np.abs(frac - t)) < 0.05
  assert t.min() < 0.2 and t.max() > 0.8  # t really spreads over (eps, 1)


def test_corrupt_is_reproducible_per_step():
  valid = jnp.ones((2, 8), bool)
  seed = jax.random.key(0)
  a = noise.corrupt(jax.random.fold_in(seed, 5), valid, block_len=4)
  b = noise.corrupt(jax.random.fold_in(seed, 5), valid, block_len=4)
  c = noise.corrupt(jax.random.fold_in(seed, 6), valid, block_len=4)
  np.testing.assert_array_equal(a.masked_CBR, b.masked_CBR)
  assert not np.array_equal(np.asarray(a.t_CBR), np.asarray(c.t_CBR))
  legacy = noise.corrupt(jax.random.PRNGKey(0), valid, block_len=4)  # raw uint32 keys work too
  assert legacy.masked_CBR.shape == (1, 2, 8)


def test_mask_all():
  c = noise.mask_all(jnp.asarray([[True, True, False, False]]))
  np.testing.assert_array_equal(c.masked_CBR, [[[True, True, False, False]]])
  np.testing.assert_array_equal(c.t_CBR, np.ones((1, 1, 4)))


def test_noise_argument_errors():
  with pytest.raises(ValueError, match=r"eps=0.0 must be in \(0, 1\)"):
    noise.NoiseConfig(eps=0.0)
  with pytest.raises(ValueError, match="must be < 0.5 with complementary"):
    noise.NoiseConfig(eps=0.5, complementary=True)
  valid = jnp.ones((2, 6), bool)
  with pytest.raises(ValueError, match="R=6 .* multiple of block_len=4"):
    noise.corrupt(jax.random.key(0), valid, block_len=4)
  with pytest.raises(ValueError, match="must be bool"):
    noise.corrupt(jax.random.key(0), jnp.ones((2, 8), jnp.int32), block_len=4)
  with pytest.raises(ValueError, match="key must be one PRNG key"):
    noise.corrupt(jax.random.split(jax.random.key(0), 2), jnp.ones((2, 8), bool), block_len=4)


# --- response validity --------------------------------------------------------------


def test_report_and_response_valid_masks():
  tokens = jnp.asarray(
    [
      [5, 6, EOS, 0, 0, 0, 0, 0],  # EOS inside block 0
      [5, 6, 7, EOS, 0, 0, 0, 0],  # EOS closing block 0
      [5, 6, 7, 8, 9, EOS, 0, 0],  # EOS inside block 1
      [5, 5, 5, 5, 5, 5, 5, 5],  # cut report, no EOS
    ]
  )
  T, F = True, False
  np.testing.assert_array_equal(
    rad.report_mask(tokens, EOS),
    [[T, T, T, F, F, F, F, F], [T, T, T, T, F, F, F, F], [T] * 6 + [F, F], [T] * 8],
  )
  np.testing.assert_array_equal(
    rad.response_valid_mask(tokens, EOS, 4),
    [[T, T, T, T, F, F, F, F], [T, T, T, T, F, F, F, F], [T] * 8, [T] * 8],
  )
  with pytest.raises(ValueError, match="multiple of block_len=3"):
    rad.response_valid_mask(tokens, EOS, 3)


# --- packing ------------------------------------------------------------------------

# One example: context P=4 with one pad; response R=4, B=2: [20, EOS, pad, pad] -> block 0
# valid, block 1 invalid. Context positions differ per rotary row, as for an image.
CTX_TOKENS = jnp.asarray([[0, 10, 11, 12]])
CTX_POS = jnp.asarray([[[0, 0, 1, 2]], [[0, 0, 1, 1]], [[0, 0, 1, 3]]])
CTX_VALID = jnp.asarray([[False, True, True, True]])
RESP_TOKENS = jnp.asarray([[20, EOS, 0, 0]])
RESP_VALID = rad.response_valid_mask(RESP_TOKENS, EOS, 2)
NEXT_POS = jnp.asarray([4])
# Hand-made corruption: masks response tokens 0 and 3 (3 is invalid, so ignored) at t=0.5.
CORRUPTION = noise.Corruption(
  masked_CBR=jnp.asarray([[[True, False, False, True]]]), t_CBR=jnp.full((1, 1, 4), 0.5)
)
CONTEXT = (CTX_TOKENS, CTX_POS, CTX_VALID)
RESPONSE = (RESP_TOKENS, RESP_VALID, NEXT_POS)


def test_pack_rad_exact():
  b = rad.pack_rad_corrupted(*CONTEXT, *RESPONSE, CORRUPTION, block_len=2, mask_id=MASK)
  np.testing.assert_array_equal(b.tokens_BL, [[0, 10, 11, 12, MASK, EOS, 0, 0, 20, EOS, 0, 0]])
  np.testing.assert_array_equal(
    b.positions_3BL,
    [
      [[0, 0, 1, 2, 4, 5, 6, 7, 4, 5, 6, 7]],
      [[0, 0, 1, 1, 4, 5, 6, 7, 4, 5, 6, 7]],
      [[0, 0, 1, 3, 4, 5, 6, 7, 4, 5, 6, 7]],
    ],
  )
  np.testing.assert_array_equal(b.targets_BL, [[0, 10, 11, 12, 20, EOS, 0, 0, 20, EOS, 0, 0]])
  np.testing.assert_array_equal(b.weights_BL, [[0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(b.num_tokens_B, [2.0])
  np.testing.assert_array_equal(b.mask_BLL, masks.rad_mask(CTX_VALID, RESP_VALID, 2))
  assert (b.target_start, b.target_stop) == (4, 8)


def test_pack_rad_complementary_exact():
  c = noise.Corruption(
    masked_CBR=jnp.asarray([[[True, False, False, False]], [[False, True, False, False]]]),
    t_CBR=jnp.asarray([[[0.25] * 4], [[0.75] * 4]]),
  )
  b = rad.pack_rad_corrupted(*CONTEXT, *RESPONSE, c, block_len=2, mask_id=MASK)
  np.testing.assert_array_equal(
    b.tokens_BL, [[0, 10, 11, 12, MASK, EOS, 0, 0, 20, MASK, 0, 0, 20, EOS, 0, 0]]
  )
  # Weight 1 / (t * C): 1 / (0.25 * 2) = 2 and 1 / (0.75 * 2) = 2/3.
  np.testing.assert_allclose(b.weights_BL, [[0, 0, 0, 0, 2, 0, 0, 0, 0, 2 / 3, 0, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(b.positions_3BL[0, 0, 4:], [4, 5, 6, 7] * 3)
  np.testing.assert_array_equal(b.mask_BLL, masks.rad_mask(CTX_VALID, RESP_VALID, 2, 2))
  assert (b.target_start, b.target_stop) == (4, 12)


def test_pack_bd3_exact():
  b = bd3.pack_bd3_corrupted(*CONTEXT, *RESPONSE, CORRUPTION, block_len=2, mask_id=MASK)
  np.testing.assert_array_equal(
    b.tokens_BL, [[0, 10, 11, 12, MASK, EOS, 0, 0, 0, 10, 11, 12, 20, EOS, 0, 0]]
  )
  np.testing.assert_array_equal(b.positions_3BL[:, 0, 8:], b.positions_3BL[:, 0, :8])
  np.testing.assert_array_equal(b.positions_3BL[1, 0, :8], [0, 0, 1, 1, 4, 5, 6, 7])
  np.testing.assert_array_equal(b.targets_BL, [[0, 10, 11, 12, 20, EOS, 0, 0] * 2])
  np.testing.assert_array_equal(b.weights_BL, [[0, 0, 0, 0, 2, 0, 0, 0] + [0] * 8])
  valid = jnp.concatenate([CTX_VALID, RESP_VALID], 1)
  np.testing.assert_array_equal(b.mask_BLL, masks.bd3_mask(valid, 2, anchor=4))
  assert (b.target_start, b.target_stop) == (4, 8)


def test_pack_ar_exact():
  report = rad.report_mask(RESP_TOKENS, EOS)
  b = ar.pack_ar(*CONTEXT, RESP_TOKENS, report, NEXT_POS)
  np.testing.assert_array_equal(b.tokens_BL, [[0, 10, 11, 12, 20, EOS, 0, 0]])
  np.testing.assert_array_equal(b.targets_BL, [[10, 11, 12, 20, EOS, 0, 0, 0]])
  np.testing.assert_array_equal(b.weights_BL, [[0, 0, 0, 1, 1, 0, 0, 0]])
  np.testing.assert_array_equal(b.num_tokens_B, [2.0])
  np.testing.assert_array_equal(b.positions_3BL[2, 0], [0, 0, 1, 3, 4, 5, 6, 7])
  np.testing.assert_array_equal(
    b.mask_BLL,
    masks.causal_mask(jnp.asarray([[False, True, True, True, True, True, False, False]])),
  )
  assert (b.target_start, b.target_stop) == (3, 7)


def test_pack_argument_errors():
  with pytest.raises(ValueError, match="positions_3BP"):
    rad.pack_rad_corrupted(
      CTX_TOKENS, CTX_POS[0], CTX_VALID, *RESPONSE, CORRUPTION, block_len=2, mask_id=MASK
    )
  with pytest.raises(ValueError, match="next_position_B must have shape"):
    rad.pack_rad_corrupted(
      *CONTEXT, RESP_TOKENS, RESP_VALID, jnp.asarray([1, 2]), CORRUPTION, block_len=2, mask_id=MASK
    )
  with pytest.raises(ValueError, match="multiple of block_len=3"):
    bd3.pack_bd3_corrupted(*CONTEXT, *RESPONSE, CORRUPTION, block_len=3, mask_id=MASK)
  with pytest.raises(ValueError, match="corruption.masked_CBR"):
    bad = noise.Corruption(masked_CBR=jnp.ones((1, 1, 2), bool), t_CBR=jnp.ones((1, 1, 2)))
    rad.pack_rad_corrupted(*CONTEXT, *RESPONSE, bad, block_len=2, mask_id=MASK)


# --- losses -------------------------------------------------------------------------


def np_ce(logits_LV: np.ndarray, targets_L: np.ndarray) -> np.ndarray:
  z = logits_LV.astype(np.float64)
  logz = np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1)
  return logz - z[np.arange(len(targets_L)), targets_L]


def test_rad_loss_against_numpy():
  b = rad.pack_rad_corrupted(*CONTEXT, *RESPONSE, CORRUPTION, block_len=2, mask_id=MASK)
  logits = jax.random.normal(jax.random.key(0), (1, 12, 32)) * 3
  out = rad.rad_loss(logits, b)
  ce = np_ce(np.asarray(logits[0]), np.asarray(b.targets_BL[0]))
  # One masked token (response index 0, target 20) at t=0.5, two valid response tokens.
  np.testing.assert_allclose(out["loss"], 2.0 * ce[4] / 2.0, rtol=1e-5)
  np.testing.assert_allclose(out["ce_masked"], ce[4], rtol=1e-5)
  assert float(out["num_tokens"]) == 2 and float(out["num_masked"]) == 1
  assert float(out["accuracy"]) == float(np.argmax(logits[0, 4]) == 20)
  # Logits over the target slice only give the same result.
  sliced = rad.rad_loss(logits[:, b.target_start : b.target_stop], b)
  for k in out:
    np.testing.assert_allclose(sliced[k], out[k], rtol=1e-6)
  with pytest.raises(ValueError, match="target slice"):
    rad.rad_loss(logits[:, :5], b)


def test_ar_loss_against_numpy():
  b = ar.pack_ar(*CONTEXT, RESP_TOKENS, rad.report_mask(RESP_TOKENS, EOS), NEXT_POS)
  logits = jax.random.normal(jax.random.key(1), (1, 8, 32)) * 3
  out = ar.ar_loss(logits, b)
  ce = np_ce(np.asarray(logits[0]), np.asarray(b.targets_BL[0]))
  np.testing.assert_allclose(out["loss"], (ce[3] + ce[4]) / 2, rtol=1e-5)
  acc = (int(np.argmax(logits[0, 3]) == 20) + int(np.argmax(logits[0, 4]) == EOS)) / 2
  np.testing.assert_allclose(out["accuracy"], acc)


def test_perfect_logits_give_zero_loss_and_full_accuracy():
  rng = np.random.default_rng(3)
  B, P, R, V = 3, 8, 8, 40
  ctx_tokens = jnp.asarray(rng.integers(8, V, (B, P)))
  resp = rng.integers(8, V, (B, R))
  resp[:, 5] = EOS
  resp[:, 6:] = 0
  resp_tokens = jnp.asarray(resp)
  valid = rad.response_valid_mask(resp_tokens, EOS, 4)
  ctx_pos = jnp.broadcast_to(jnp.arange(P), (3, B, P))
  b = rad.pack_rad(
    ctx_tokens,
    ctx_pos,
    jnp.ones((B, P), bool),
    resp_tokens,
    valid,
    jnp.full((B,), P),
    jax.random.key(2),
    block_len=4,
    mask_id=MASK,
    noise=noise.NoiseConfig(complementary=True),
  )
  logits = jax.nn.one_hot(b.targets_BL, V) * 50.0
  out = packed_loss(logits, b)
  assert float(out["loss"]) < 1e-6 and float(out["accuracy"]) == 1.0
  # Complementary masking trains every valid response token exactly once.
  assert float(out["num_masked"]) == float(out["num_tokens"]) == B * R


def test_pack_rad_jit_matches_eager():
  key = jax.random.key(9)
  kwargs = dict(block_len=2, mask_id=MASK, noise=noise.NoiseConfig(per_block=True))
  eager = rad.pack_rad(*CONTEXT, *RESPONSE, key, **kwargs)
  jitted = jax.jit(lambda *a: rad.pack_rad(*a, **kwargs))(*CONTEXT, *RESPONSE, key)
  for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
    np.testing.assert_array_equal(a, b)
  assert jitted.target_stop == eager.target_stop == 8
