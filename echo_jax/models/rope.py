"""Multimodal rotary position embedding (M-RoPE) of the Qwen2-VL / Qwen2.5-VL decoder.

Each token has three position ids (time, height, width). The head dimension K
holds K/2 rotary frequencies; the first `mrope_section[0]` frequencies rotate by
the time id, the next `mrope_section[1]` by the height id and the last
`mrope_section[2]` by the width id. Text tokens carry the same id in all three
rows, which makes M-RoPE reduce to ordinary 1-D RoPE for them.

The layout is the "rotate half" one of Hugging Face transformers: cos/sin are
`concat(freqs, freqs)` and `rotate_half(x) = concat(-x[K/2:], x[:K/2])`.
Pure functions; the angles are always computed in float32 because positions up
to ~10^5 times a frequency lose too much precision in bfloat16.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def inverse_frequencies(head_dim: int, theta: float) -> np.ndarray:
  """The K/2 rotary frequencies theta^(-2i/K), float32 (as transformers computes them)."""
  if head_dim % 2:
    raise ValueError(f"rotary head_dim must be even, got {head_dim}")
  exponents = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
  return (1.0 / (np.float32(theta) ** exponents)).astype(np.float32)


def section_of_frequency(mrope_section: tuple[int, ...]) -> np.ndarray:
  """For each of the K/2 frequencies, which position row (0 time, 1 height, 2 width) drives it."""
  return np.repeat(np.arange(len(mrope_section)), np.asarray(mrope_section))


def mrope_cos_sin(
  positions_3BL: jax.Array, head_dim: int, theta: float, mrope_section: tuple[int, ...]
) -> tuple[jax.Array, jax.Array]:
  """cos and sin tables, each float32 (B, L, K), for 3-row positions (3, B, L).

  A (B, L) array is accepted too and treated as text positions (same id in all rows).
  """
  if 2 * sum(mrope_section) != head_dim:
    raise ValueError(f"2 * sum(mrope_section={mrope_section}) must equal head_dim={head_dim}")
  if positions_3BL.ndim == 2:
    positions_3BL = jnp.broadcast_to(positions_3BL[None], (3, *positions_3BL.shape))
  if positions_3BL.ndim != 3 or positions_3BL.shape[0] != len(mrope_section):
    raise ValueError(
      f"positions must have shape ({len(mrope_section)}, B, L), got {positions_3BL.shape}"
    )
  inv_freq_F = jnp.asarray(inverse_frequencies(head_dim, theta))
  # Pick, for every frequency f, the position row of its section, then scale.
  rows_F = section_of_frequency(mrope_section)
  pos_FBL = positions_3BL.astype(jnp.float32)[rows_F]
  angles_BLF = jnp.moveaxis(pos_FBL, 0, -1) * inv_freq_F
  angles_BLK = jnp.concatenate([angles_BLF, angles_BLF], axis=-1)
  return jnp.cos(angles_BLK), jnp.sin(angles_BLK)


def rotate_half(x: jax.Array) -> jax.Array:
  """concat(-second half, first half) along the last axis."""
  half = x.shape[-1] // 2
  return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x_BLHK: jax.Array, cos_BLK: jax.Array, sin_BLK: jax.Array) -> jax.Array:
  """Rotate queries or keys (B, L, heads, K); computed in float32, returned in x's dtype."""
  x32 = x_BLHK.astype(jnp.float32)
  cos = cos_BLK[:, :, None, :]
  sin = sin_BLK[:, :, None, :]
  return (x32 * cos + rotate_half(x32) * sin).astype(x_BLHK.dtype)


def text_positions(positions_BT: jax.Array) -> jax.Array:
  """(B, T) text position ids -> (3, B, T) with the same id in the three rows."""
  return jnp.broadcast_to(positions_BT[None], (3, *positions_BT.shape))
