"""Attention masks: pure, jit-friendly functions returning bool `mask_BLL` (True = may attend).

Every mask here is one rule over two per-index labels, in the spirit of big_vision's
`make_attn_mask`:
  block(i)    the block id on a grid anchored at index `anchor`:
              floor((i - anchor) / block_len); tokens before the anchor (the context)
              get negative ids, so the grid does not depend on how much left padding the
              context has and training and inference agree exactly.
  segment(i)  0 for the clean stream (context and clean response), c >= 1 for the
              c-th noisy copy of the response.
Rule (query q, key k):
  segment(q) == 0: segment(k) == 0 and block(k) <= block(q)          (block-causal)
  segment(q) == c: (segment(k) == 0 and block(k) <  block(q))        (earlier clean blocks)
                   or (segment(k) == c and block(k) == block(q))     (own noisy block)
Invalid keys are never attended; an invalid query attends only itself, so no row is
all False (no NaN from a softmax over nothing).

Labels depend only on static shapes (length-L numpy vectors); only validity is traced.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _check_valid(name: str, valid: jax.Array, ndim: int = 2) -> jax.Array:
  """`valid` as a bool array of rank `ndim`, or a ValueError naming it."""
  valid = jnp.asarray(valid)
  if valid.ndim != ndim:
    raise ValueError(f"{name} must have rank {ndim} (batch-leading), got shape {valid.shape}")
  if valid.dtype != jnp.bool_:
    raise ValueError(
      f"{name} must be a bool array (True = a real token), got dtype {valid.dtype}; "
      "convert it with `.astype(bool)`"
    )
  return valid


def _check_block_len(block_len: int) -> None:
  if not isinstance(block_len, (int, np.integer)) or block_len < 1:
    raise ValueError(f"block_len must be a positive int, got {block_len!r}")


def block_ids(length: int, block_len: int, anchor: int) -> np.ndarray:
  """Block id of each index on the grid anchored at `anchor` (negative before it)."""
  _check_block_len(block_len)
  return np.floor_divide(np.arange(length) - anchor, block_len).astype(np.int32)


def _labelled_mask(valid_BL: jax.Array, segment_L: np.ndarray, block_L: np.ndarray) -> jax.Array:
  """The rule of the module docstring for per-index labels (static) and validity (traced).

  Built from the length-L label vectors with broadcast comparisons, so under jit the
  (L, L) rule is fused into the mask computation instead of being an L*L constant.
  """
  segment_L, block_L = jnp.asarray(segment_L), jnp.asarray(block_L)
  seg_q, seg_k = segment_L[:, None], segment_L[None, :]
  blk_q, blk_k = block_L[:, None], block_L[None, :]
  clean_k = seg_k == 0
  allowed_LL = jnp.where(
    seg_q == 0,
    clean_k & (blk_k <= blk_q),
    (clean_k & (blk_k < blk_q)) | ((seg_k == seg_q) & (blk_k == blk_q)),
  )
  index_L = jnp.arange(segment_L.shape[0])
  eye_LL = index_L[:, None] == index_L[None, :]
  mask_BLL = allowed_LL[None] & valid_BL[:, None, :]
  # An invalid query attends only itself.
  return jnp.where(valid_BL[:, :, None], mask_BLL, eye_LL[None])


def causal_mask(valid_BL: jax.Array) -> jax.Array:
  """Causal mask: q attends valid k <= q. Returns bool (B, L, L)."""
  valid_BL = _check_valid("valid_BL", valid_BL)
  length = valid_BL.shape[1]
  return _labelled_mask(valid_BL, np.zeros(length, np.int32), np.arange(length, dtype=np.int32))


def block_causal_mask(valid_BL: jax.Array, block_len: int, anchor: int = 0) -> jax.Array:
  """Block-causal mask on the grid anchored at index `anchor`.

  q attends every valid k with block(k) <= block(q), block(i) = floor((i - anchor) /
  block_len). With a context left-padded to P, use anchor=P so that the response starts
  a block. Returns bool (B, L, L).
  """
  valid_BL = _check_valid("valid_BL", valid_BL)
  length = valid_BL.shape[1]
  return _labelled_mask(valid_BL, np.zeros(length, np.int32), block_ids(length, block_len, anchor))


def rad_layout(
  context_len: int, response_len: int, block_len: int, num_noisy: int = 1
) -> tuple[np.ndarray, np.ndarray]:
  """(segment_L, block_L) labels of the RAD sequence [context | noisy x num_noisy | clean]."""
  _check_block_len(block_len)
  if response_len % block_len:
    raise ValueError(
      f"response length R={response_len} must be a multiple of block_len={block_len}; "
      "pad the response up to a whole number of blocks"
    )
  if num_noisy < 1:
    raise ValueError(f"num_noisy must be >= 1, got {num_noisy}")
  response_blocks = block_ids(response_len, block_len, 0)
  segment = [np.zeros(context_len, np.int32)]
  block = [block_ids(context_len, block_len, context_len)]
  for c in range(1, num_noisy + 1):
    segment.append(np.full(response_len, c, np.int32))
    block.append(response_blocks)
  segment.append(np.zeros(response_len, np.int32))
  block.append(response_blocks)
  return np.concatenate(segment), np.concatenate(block)


def rad_mask(
  context_valid_BP: jax.Array,
  response_valid_BR: jax.Array,
  block_len: int,
  num_noisy: int = 1,
) -> jax.Array:
  """The Response-Asymmetric Diffusion (RAD) mask of the ECHO paper.

  Sequence: [context (P) | noisy response (R) x num_noisy | clean response (R)], so
  L = P + (num_noisy + 1) R; num_noisy=2 is complementary masking. The context is
  block-causal on the grid anchored at P; a noisy token attends all valid context, the
  clean blocks before its own and its own block of its own noisy copy; a clean token
  attends all valid context and the clean blocks up to its own, never a noisy one.
  `response_valid_BR` holds for both copies. Returns bool (B, L, L).
  """
  context_valid_BP = _check_valid("context_valid_BP", context_valid_BP)
  response_valid_BR = _check_valid("response_valid_BR", response_valid_BR)
  if context_valid_BP.shape[0] != response_valid_BR.shape[0]:
    raise ValueError(
      f"batch sizes differ: context_valid_BP {context_valid_BP.shape} vs "
      f"response_valid_BR {response_valid_BR.shape}"
    )
  context_len, response_len = context_valid_BP.shape[1], response_valid_BR.shape[1]
  segment_L, block_L = rad_layout(context_len, response_len, block_len, num_noisy)
  valid_BL = jnp.concatenate([context_valid_BP] + [response_valid_BR] * (num_noisy + 1), axis=1)
  return _labelled_mask(valid_BL, segment_L, block_L)


def bd3_layout(
  length: int, block_len: int, anchor: int, num_noisy: int = 1
) -> tuple[np.ndarray, np.ndarray]:
  """(segment_L, block_L) labels of the full duplication [noisy x num_noisy | clean]."""
  if num_noisy < 1:
    raise ValueError(f"num_noisy must be >= 1, got {num_noisy}")
  block = block_ids(length, block_len, anchor)
  segment = [np.full(length, c, np.int32) for c in range(1, num_noisy + 1)]
  segment.append(np.zeros(length, np.int32))
  return np.concatenate(segment), np.tile(block, num_noisy + 1)


def bd3_mask(valid_BL: jax.Array, block_len: int, anchor: int = 0, num_noisy: int = 1) -> jax.Array:
  """The full-duplication mask of BD3-LM / SDAR over [noisy (L) x num_noisy | clean (L)].

  `valid_BL` describes one copy of the whole sequence (L = P + R, context included) and
  holds for every copy; the grid is anchored at `anchor` (P for a left-padded context).
  A noisy token attends its own block of its own noisy copy and the clean blocks before
  it; a clean token is block-causal. The context is duplicated like the response (it is
  never noised): a noisy copy of a context block attends the same keys with the same
  values as its clean twin, so it computes the same thing, and noisy response blocks read
  the context from the clean copy (every context block is earlier than every response
  block). That makes it exactly equivalent to `rad_mask`, at the cost of the duplicated
  context. Returns bool (B, (num_noisy + 1) L, (num_noisy + 1) L).
  """
  valid_BL = _check_valid("valid_BL", valid_BL)
  segment_L, block_L = bd3_layout(valid_BL.shape[1], block_len, anchor, num_noisy)
  return _labelled_mask(jnp.tile(valid_BL, (1, num_noisy + 1)), segment_L, block_L)
