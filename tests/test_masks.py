"""Attention masks: exact small arrays written out by hand, and invariants on random layouts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from echo_jax.models import masks


def grid(*rows: str) -> np.ndarray:
  """A mask drawn as text: '1' = may attend, '.' = may not."""
  return np.array([[c == "1" for c in row] for row in rows])


def as_np(x) -> np.ndarray:
  return np.asarray(x)


# Example 0: context P=4 with one pad on the left, response R=4, all valid.
# Example 1: context with two pads, response whose second block is invalid.
CTX_VALID = np.array([[False, True, True, True], [False, False, True, True]])
RESP_VALID = np.array([[True, True, True, True], [True, True, False, False]])


def test_causal_exact():
  got = masks.causal_mask(jnp.asarray(CTX_VALID[:1]))
  want = grid("1...", ".1..", ".11.", ".111")
  np.testing.assert_array_equal(as_np(got)[0], want)


def test_block_causal_exact_anchored_at_response_start():
  valid = jnp.asarray(np.concatenate([CTX_VALID, RESP_VALID], 1))
  got = as_np(masks.block_causal_mask(valid, 2, anchor=4))
  # Blocks: indices 0-1 -> -2, 2-3 -> -1, 4-5 -> 0, 6-7 -> 1.
  want0 = grid(
    "1.......",
    ".1......",
    ".111....",
    ".111....",
    ".11111..",
    ".11111..",
    ".1111111",
    ".1111111",
  )
  want1 = grid(
    "1.......",
    ".1......",
    "..11....",
    "..11....",
    "..1111..",
    "..1111..",
    "......1.",
    ".......1",
  )
  np.testing.assert_array_equal(got[0], want0)
  np.testing.assert_array_equal(got[1], want1)


def test_block_causal_grid_does_not_depend_on_padding():
  # Anchored at the response start, one more pad on the left shifts the mask but does not
  # change which real tokens see which.
  valid_a = jnp.ones((1, 6), bool)
  valid_b = jnp.asarray([[False, False] + [True] * 6])
  a = as_np(masks.block_causal_mask(valid_a, 4, anchor=2))
  b = as_np(masks.block_causal_mask(valid_b, 4, anchor=4))
  np.testing.assert_array_equal(a, b[:, 2:, 2:])


def test_rad_exact():
  got = as_np(masks.rad_mask(jnp.asarray(CTX_VALID), jnp.asarray(RESP_VALID), 2))
  # [context 0-3 | noisy 4-7 | clean 8-11]; context blocks -2,-2,-1,-1; response 0,0,1,1.
  want0 = grid(
    "1...........",
    ".1..........",
    ".111........",
    ".111........",
    ".11111......",
    ".11111......",
    ".111..1111..",
    ".111..1111..",
    ".111....11..",
    ".111....11..",
    ".111....1111",
    ".111....1111",
  )
  want1 = grid(
    "1...........",
    ".1..........",
    "..11........",
    "..11........",
    "..1111......",
    "..1111......",
    "......1.....",
    ".......1....",
    "..11....11..",
    "..11....11..",
    "..........1.",
    "...........1",
  )
  np.testing.assert_array_equal(got[0], want0)
  np.testing.assert_array_equal(got[1], want1)


def test_rad_complementary_exact():
  got = as_np(masks.rad_mask(jnp.ones((1, 2), bool), jnp.ones((1, 4), bool), 2, num_noisy=2))
  # [context 0-1 | noisy copy 1: 2-5 | noisy copy 2: 6-9 | clean 10-13]
  want = grid(
    "11............",
    "11............",
    "1111..........",
    "1111..........",
    "11..11....11..",
    "11..11....11..",
    "11....11......",
    "11....11......",
    "11......1111..",
    "11......1111..",
    "11........11..",
    "11........11..",
    "11........1111",
    "11........1111",
  )
  np.testing.assert_array_equal(got[0], want)


def test_bd3_exact():
  valid = jnp.asarray(np.concatenate([CTX_VALID, RESP_VALID], 1)[1:])
  got = as_np(masks.bd3_mask(valid, 2, anchor=4))
  # [noisy copy 0-7 | clean copy 8-15], each [context 4 | response 4].
  want = grid(
    "1...............",
    ".1..............",
    "..11............",
    "..11............",
    "....11....11....",
    "....11....11....",
    "......1.........",
    ".......1........",
    "........1.......",
    ".........1......",
    "..........11....",
    "..........11....",
    "..........1111..",
    "..........1111..",
    "..............1.",
    "...............1",
  )
  np.testing.assert_array_equal(got[0], want)


def random_layout(rng, batch, context_len, response_len, block_len):
  """Left-padded contexts and responses valid through a random number of whole blocks."""
  pads = rng.integers(0, context_len, batch)
  ctx = np.arange(context_len)[None] >= pads[:, None]
  num_blocks = rng.integers(0, response_len // block_len + 1, batch)
  resp = np.arange(response_len)[None] < (num_blocks * block_len)[:, None]
  return ctx, resp


@pytest.mark.parametrize(
  "context_len,response_len,block_len,num_noisy",
  [(8, 8, 4, 1), (6, 6, 3, 1), (5, 8, 4, 1), (4, 6, 1, 1), (8, 8, 2, 2)],
)
def test_rad_invariants(context_len, response_len, block_len, num_noisy):
  rng = np.random.default_rng(context_len * 100 + response_len + block_len)
  ctx, resp = random_layout(rng, 6, context_len, response_len, block_len)
  m = as_np(masks.rad_mask(jnp.asarray(ctx), jnp.asarray(resp), block_len, num_noisy))
  P, R = context_len, response_len
  L = P + (num_noisy + 1) * R
  assert m.shape == (6, L, L)
  valid = np.concatenate([ctx] + [resp] * (num_noisy + 1), 1)
  # Every row attends at least itself; invalid keys only from their own row.
  assert np.all(m.any(-1))
  assert np.all(m[:, np.arange(L), np.arange(L)])
  off_diag = m & ~np.eye(L, dtype=bool)[None]
  assert not np.any(off_diag & ~valid[:, None, :])
  assert not np.any(off_diag & ~valid[:, :, None])
  # Restricted to [context | clean] it is the block-causal mask anchored at P.
  keep = np.r_[0:P, P + num_noisy * R : L]
  bc = as_np(
    masks.block_causal_mask(jnp.asarray(np.concatenate([ctx, resp], 1)), block_len, anchor=P)
  )
  np.testing.assert_array_equal(m[:, keep][:, :, keep], bc)
  # Context and clean queries never see a noisy key.
  noisy = np.r_[P : P + num_noisy * R]
  assert not m[:, keep][:, :, noisy].any()
  g = np.arange(R) // block_len
  for c in range(num_noisy):
    rows = P + c * R + np.arange(R)
    for other in range(num_noisy):
      cols = P + other * R + np.arange(R)
      # Noisy <-> noisy: own block of own copy only (for valid queries and keys).
      want = (g[:, None] == g[None, :]) & (c == other)
      want = want[None] & resp[:, :, None] & resp[:, None, :]
      np.testing.assert_array_equal(
        m[:, rows][:, :, cols] & ~np.eye(R, dtype=bool)[None], want & ~np.eye(R, dtype=bool)[None]
      )
    # Noisy -> clean: strictly earlier blocks; noisy -> context: every valid token.
    clean_cols = P + num_noisy * R + np.arange(R)
    want = (g[None, :] < g[:, None])[None] & resp[:, :, None] & resp[:, None, :]
    np.testing.assert_array_equal(m[:, rows][:, :, clean_cols], want)
    np.testing.assert_array_equal(m[:, rows, :P], resp[:, :, None] & ctx[:, None, :])


@pytest.mark.parametrize("num_noisy", [1, 2])
def test_bd3_matches_rad_for_response_queries(num_noisy):
  rng = np.random.default_rng(7)
  P, R, B = 8, 8, 4
  ctx, resp = random_layout(rng, 5, P, R, B)
  rad = as_np(masks.rad_mask(jnp.asarray(ctx), jnp.asarray(resp), B, num_noisy))
  full = np.concatenate([ctx, resp], 1)
  bd3 = as_np(masks.bd3_mask(jnp.asarray(full), B, anchor=P, num_noisy=num_noisy))
  N = P + R
  assert bd3.shape == (5, (num_noisy + 1) * N, (num_noisy + 1) * N)
  assert np.all(bd3.any(-1))
  # Clean copy: block-causal.
  bc = as_np(masks.block_causal_mask(jnp.asarray(full), B, anchor=P))
  np.testing.assert_array_equal(bd3[:, num_noisy * N :, num_noisy * N :], bc)
  # A noisy response query of copy c sees, by identity, the same tokens in both layouts:
  # RAD [context | noisy copies | clean] <-> BD3 [clean context | noisy responses | clean].
  rad_cols = np.r_[0:P, P : P + num_noisy * R, P + num_noisy * R : P + (num_noisy + 1) * R]
  bd3_cols = np.concatenate(
    [num_noisy * N + np.arange(P)]
    + [c * N + P + np.arange(R) for c in range(num_noisy)]
    + [num_noisy * N + P + np.arange(R)]
  )
  for c in range(num_noisy):
    rad_rows = P + c * R + np.arange(R)
    bd3_rows = c * N + P + np.arange(R)
    np.testing.assert_array_equal(
      bd3[:, bd3_rows][:, :, bd3_cols], rad[:, rad_rows][:, :, rad_cols]
    )
    # ...and nothing else: never a noisy context copy.
    for c2 in range(num_noisy):
      assert not bd3[:, bd3_rows][:, :, c2 * N + np.arange(P)].any()


def test_causal_is_block_causal_with_block_1():
  valid = jnp.asarray(np.random.default_rng(0).random((3, 7)) > 0.3)
  np.testing.assert_array_equal(
    as_np(masks.causal_mask(valid)), as_np(masks.block_causal_mask(valid, 1, anchor=3))
  )


def test_masks_jit():
  ctx, resp = jnp.asarray(CTX_VALID), jnp.asarray(RESP_VALID)
  jitted = jax.jit(masks.rad_mask, static_argnums=(2, 3))
  np.testing.assert_array_equal(as_np(jitted(ctx, resp, 2, 1)), as_np(masks.rad_mask(ctx, resp, 2)))


def test_mask_argument_errors():
  ctx, resp = jnp.asarray(CTX_VALID), jnp.asarray(RESP_VALID)
  with pytest.raises(ValueError, match="multiple of block_len=3"):
    masks.rad_mask(ctx, resp, 3)
  with pytest.raises(ValueError, match="batch sizes differ"):
    masks.rad_mask(ctx[:1], resp, 2)
  with pytest.raises(ValueError, match="must be a bool array"):
    masks.causal_mask(jnp.ones((1, 4), jnp.int32))
  with pytest.raises(ValueError, match="rank 2"):
    masks.block_causal_mask(jnp.ones((4,), bool), 2)
  with pytest.raises(ValueError, match="block_len must be a positive int"):
    masks.block_causal_mask(jnp.ones((1, 4), bool), 0)
  with pytest.raises(ValueError, match="num_noisy must be >= 1"):
    masks.bd3_mask(jnp.ones((1, 4), bool), 2, num_noisy=0)
