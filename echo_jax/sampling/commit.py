"""Token choice and the confidence commit rule of block diffusion.

`choose_tokens` draws one token per position (greedy, or temperature / top-k /
top-p) and returns its confidence; `commit_mask` decides which masked
positions of a block are committed at a denoising step. Both follow the
authors' released inference code exactly (`sample_with_temperature_topk_topp`
and the `low_confidence_dynamic` remasking strategy), written for batches
without host synchronisation.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sampling:
  """How a token is drawn from logits. temperature == 0 is greedy."""

  temperature: float = 0.0
  top_k: int = 0  # 0 = off; else keep the k largest logits (ties with the k-th kept)
  top_p: float = 1.0  # 1.0 = off; else the smallest prefix whose mass exceeds top_p

  def validate(self) -> None:
    if self.temperature < 0:
      raise ValueError(f"temperature={self.temperature} must be >= 0 (0 = greedy)")
    if self.top_k < 0:
      raise ValueError(f"top_k={self.top_k} must be >= 0 (0 = off)")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p={self.top_p} must be in (0, 1] (1 = off)")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0.0


def filtered_logits(logits_BTV: jax.Array, sampling: Sampling) -> jax.Array:
  """Temperature, then top-k, then top-p; removed entries become -inf."""
  x = logits_BTV.astype(jnp.float32) / sampling.temperature
  if sampling.top_k > 0:
    kth = jax.lax.top_k(x, min(sampling.top_k, x.shape[-1]))[0][..., -1:]
    x = jnp.where(x < kth, -jnp.inf, x)
  if sampling.top_p < 1.0:
    order = jnp.argsort(-x, axis=-1)
    sorted_x = jnp.take_along_axis(x, order, axis=-1)
    cum = jnp.cumsum(jax.nn.softmax(sorted_x, axis=-1), axis=-1)
    # Drop a token when the mass *before* it already exceeds top_p, so the
    # token that crosses the threshold is kept (and the first always is).
    drop_sorted = jnp.concatenate(
      [jnp.zeros_like(cum[..., :1], bool), cum[..., :-1] > sampling.top_p], axis=-1
    )
    drop = jnp.take_along_axis(drop_sorted, jnp.argsort(order, axis=-1), axis=-1)
    x = jnp.where(drop, -jnp.inf, x)
  return x


def _scores(logits_BTV: jax.Array, sampling: Sampling) -> jax.Array:
  """float32 logits the token is drawn from: as they are (greedy) or filtered."""
  if sampling.greedy:
    return logits_BTV.astype(jnp.float32)
  return filtered_logits(logits_BTV, sampling)


def _draw(scores_BTV: jax.Array, sampling: Sampling, key: jax.Array | None) -> jax.Array:
  if sampling.greedy:
    return jnp.argmax(scores_BTV, axis=-1).astype(jnp.int32)
  if key is None:
    raise ValueError("temperature > 0 needs a PRNG key: pass key=jax.random.key(seed)")
  return jax.random.categorical(key, scores_BTV, axis=-1).astype(jnp.int32)


def draw_tokens(logits_BTV: jax.Array, sampling: Sampling, key: jax.Array | None) -> jax.Array:
  """int32 [B, T]: the tokens `choose_tokens` draws, without their confidence."""
  return _draw(_scores(logits_BTV, sampling), sampling, key)


def choose_tokens(
  logits_BTV: jax.Array, sampling: Sampling, key: jax.Array | None
) -> tuple[jax.Array, jax.Array]:
  """Returns (tokens_BT int32, confidence_BT float32).

  Greedy: the argmax and its softmax probability. Otherwise a draw from the
  filtered distribution and its probability under that distribution.
  """
  scores = _scores(logits_BTV, sampling)
  tokens = _draw(scores, sampling, key)
  probs = jax.nn.softmax(scores, axis=-1)
  conf = jnp.take_along_axis(probs, tokens[..., None], axis=-1)[..., 0]
  return tokens, conf


def transfer_schedule(block_len: int, steps: int) -> tuple[int, ...]:
  """Tokens due at each step: block_len // steps, the remainder on the first steps."""
  base, rem = divmod(block_len, steps)
  return tuple(base + (1 if s < rem else 0) for s in range(steps))


def commit_mask(
  confidence_BT: jax.Array, is_mask_BT: jax.Array, due: jax.Array, threshold: float
) -> jax.Array:
  """bool [B, T]: the masked positions committed at this step.

  Every masked position with confidence strictly above `threshold` if there
  are at least `due` of them; else the min(due, #masked) most confident
  masked positions (ties: the lower index first).
  """
  conf = jnp.where(is_mask_BT, confidence_BT, -jnp.inf)
  high = conf > threshold
  enough = jnp.sum(high, axis=-1, keepdims=True) >= due
  k = jnp.minimum(due, jnp.sum(is_mask_BT, axis=-1, keepdims=True))
  order = jnp.argsort(-conf, axis=-1, stable=True)
  rank = jnp.argsort(order, axis=-1)
  top = (rank < k) & is_mask_BT
  return jnp.where(enough, high, top)
