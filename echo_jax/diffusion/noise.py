"""Masked-diffusion corruption of the response: noise levels and which tokens get <|MASK|>.

For each example (or each block) a noise level t ~ U(eps, 1) is drawn and each valid
response token is masked with probability t, with at least one masked token in every
valid block. Complementary masking adds a second noisy copy that masks
exactly the tokens the first copy left visible, so every valid token is trained once per
example; then t ~ U(eps, 1 - eps), the second copy's level is 1 - t, and each copy also
keeps at least one token visible per valid block (so the other copy masks at least one).

The corruption depends only on the response validity, never on the tokens, so one
`Corruption` can be packed both as RAD and as full duplication (the two losses agree).
Callers derive the key as `jax.random.fold_in(seed_key, step)` so that a resumed run
draws the same masks.

Shapes: C noisy copies (1, or 2 with complementary masking), B batch, R response length.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class NoiseConfig:
  """How the response is corrupted. Frozen and hashable: safe as a static jit argument."""

  eps: float = 1e-3  # smallest noise level; the loss weight 1/t is at most 1/eps
  per_block: bool = False  # one t per block instead of one per example
  complementary: bool = False  # add a second noisy copy with the complement mask

  def __post_init__(self):
    if not 0.0 < self.eps < 1.0:
      raise ValueError(f"NoiseConfig.eps={self.eps} must be in (0, 1)")
    if self.complementary and not self.eps < 0.5:
      raise ValueError(
        f"NoiseConfig.eps={self.eps} must be < 0.5 with complementary masking "
        "(t ~ U(eps, 1 - eps) so that both copies have a level in [eps, 1 - eps])"
      )

  @property
  def num_noisy(self) -> int:
    """Number of noisy copies of the response."""
    return 2 if self.complementary else 1


@flax.struct.dataclass
class Corruption:
  """Which response tokens each noisy copy masks, and at which noise level."""

  masked_CBR: jax.Array  # bool: replaced by <|MASK|> in copy c (never at invalid tokens)
  t_CBR: jax.Array  # float32: the noise level copy c was drawn at, per token (loss weight 1/t)

  @property
  def num_noisy(self) -> int:
    return self.masked_CBR.shape[0]


def check_response(
  valid_BR: jax.Array, block_len: int, name: str = "response_valid_BR"
) -> jax.Array:
  """Validate a response validity mask against the block length; returns it."""
  if not isinstance(block_len, (int, np.integer)) or block_len < 1:
    raise ValueError(f"block_len must be a positive int, got {block_len!r}")
  valid_BR = jnp.asarray(valid_BR)
  if valid_BR.ndim != 2:
    raise ValueError(f"{name} must have shape (batch, response_len), got {valid_BR.shape}")
  if valid_BR.dtype != jnp.bool_:
    raise ValueError(f"{name} must be bool, got {valid_BR.dtype}; use `.astype(bool)`")
  if valid_BR.shape[1] % block_len:
    raise ValueError(
      f"response length R={valid_BR.shape[1]} in {name} must be a multiple of "
      f"block_len={block_len}; pad the response up to a whole number of blocks"
    )
  return valid_BR


def _check_key(key: jax.Array) -> None:
  key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
  is_typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
  if not (is_typed and key.shape == ()) and not (key.dtype == jnp.uint32 and key.shape == (2,)):
    raise ValueError(
      f"key must be one PRNG key (jax.random.key(...) or PRNGKey(...)), got dtype {key.dtype} "
      f"shape {key.shape}; derive it per step with jax.random.fold_in(seed_key, step)"
    )


def noise_levels(
  key: jax.Array, batch: int, response_len: int, block_len: int, config: NoiseConfig
) -> jax.Array:
  """t_BR: one level per example (or per block, per `config`) broadcast to every token."""
  high = 1.0 - config.eps if config.complementary else 1.0
  num_blocks = response_len // block_len
  shape = (batch, num_blocks) if config.per_block else (batch, 1)
  t = jax.random.uniform(key, shape, jnp.float32, minval=config.eps, maxval=high)
  t_BN = jnp.broadcast_to(t, (batch, num_blocks))
  return jnp.repeat(t_BN, block_len, axis=1)


def _fix_block_extreme(
  masked_BR: jax.Array, u_BR: jax.Array, valid_BR: jax.Array, block_len: int, value: bool
) -> jax.Array:
  """In each valid block where no valid token has mask state `value`, give it to one.

  The token chosen is the valid one with the smallest u (value=True: it was the nearest
  to being masked) or the largest u (value=False), i.e. a uniformly random one.
  """
  batch, response_len = masked_BR.shape
  shape_BNK = (batch, response_len // block_len, block_len)
  masked, u, valid = (x.reshape(shape_BNK) for x in (masked_BR, u_BR, valid_BR))
  score = jnp.where(valid, u if value else -u, jnp.inf)
  pick = jax.nn.one_hot(jnp.argmin(score, axis=-1), block_len, dtype=bool)
  lacking = jnp.any(valid, -1, keepdims=True) & ~jnp.any(
    valid & (masked == value), -1, keepdims=True
  )
  fixed = jnp.where(lacking & pick, value, masked)
  return fixed.reshape(batch, response_len)


def corrupt(
  key: jax.Array, valid_BR: jax.Array, *, block_len: int, config: NoiseConfig | None = None
) -> Corruption:
  """Draw which valid response tokens to mask, per `config` (see the module docstring)."""
  config = NoiseConfig() if config is None else config
  valid_BR = check_response(valid_BR, block_len)
  _check_key(key)
  batch, response_len = valid_BR.shape
  key_t, key_u = jax.random.split(key)
  t_BR = noise_levels(key_t, batch, response_len, block_len, config)
  u_BR = jax.random.uniform(key_u, (batch, response_len), jnp.float32)
  masked_BR = (u_BR < t_BR) & valid_BR
  masked_BR = _fix_block_extreme(masked_BR, u_BR, valid_BR, block_len, True)
  if not config.complementary:
    return Corruption(masked_CBR=masked_BR[None], t_CBR=t_BR[None])
  masked_BR = _fix_block_extreme(masked_BR, u_BR, valid_BR, block_len, False)
  return Corruption(
    masked_CBR=jnp.stack([masked_BR, ~masked_BR & valid_BR]),
    t_CBR=jnp.stack([t_BR, 1.0 - t_BR]),
  )


def mask_all(valid_BR: jax.Array) -> Corruption:
  """Every valid response token masked at level t = 1 (one-step distillation, DCD)."""
  valid_BR = jnp.asarray(valid_BR, bool)
  return Corruption(masked_CBR=valid_BR[None], t_CBR=jnp.ones((1, *valid_BR.shape), jnp.float32))
