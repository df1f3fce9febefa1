"""EchoVLM: the Qwen2.5-VL-shaped diffusion VLM (vision tower + Qwen2 decoder).

Three ways to run it, all pure (no jit inside; the caller jits):
  * `model(tokens_BL, positions_3BL, mask_BLL, vision)`: full forward under an
    arbitrary attention mask (training, evaluation), float32 logits.
  * `model.prefill(...)`: run a left-padded context into a KV cache, attending
    block-causally on the grid anchored at the context end, block(i) =
    floor((i - P) / block_len), exactly as in training (masks.py).
  * `model.extend(...)`: run T new text tokens against the cache (the sampler
    protocol, sampling/protocol.py): cache slots plus block-causal among the new
    tokens; the first `num_append` are stored.
No token shift: logit i scores the token at position i.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from echo_jax.models import rope
from echo_jax.models.config import ModelConfig
from echo_jax.models.decoder import KVCache, Qwen2Decoder, write_cache
from echo_jax.models.vision import VisionInputs, VisionTower


def anchored_block_causal_BPP(valid_BP: jax.Array, block_len: int) -> jax.Array:
  """Context mask: key k visible to query q iff valid(k) and block(k) <= block(q), with
  block(i) = floor((i - P) / block_len); every query also sees itself (no empty rows)."""
  p = valid_BP.shape[1]
  block_P = np.floor_divide(np.arange(p) - p, block_len)
  rule_PP = block_P[None, :] <= block_P[:, None]
  mask = valid_BP[:, None, :] & jnp.asarray(rule_PP)[None]
  return mask | jnp.eye(p, dtype=bool)[None]


def new_tokens_mask_TT(num_new: int, block_len: int) -> np.ndarray:
  """Among new tokens i (query) and j (key): j // block_len <= i // block_len."""
  block_T = np.arange(num_new) // block_len
  return block_T[None, :] <= block_T[:, None]


class EchoVLM(nnx.Module):
  """`.vision` (VisionTower) and `.text` (Qwen2Decoder) of one ModelConfig."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    config.validate()
    self.config = config
    dtype, param_dtype = jnp.dtype(config.dtype), jnp.dtype(config.param_dtype)
    # Parameters only carry logical axis names here; placing them on a mesh is the
    # caller's job (sharding.param_shardings), so the model builds without one.
    with nnx.use_eager_sharding(False):
      self.vision = VisionTower(
        config.vision, dtype=dtype, param_dtype=param_dtype, remat=config.remat, rngs=rngs
      )
      self.text = Qwen2Decoder(
        config.text, dtype=dtype, param_dtype=param_dtype, remat=config.remat, rngs=rngs
      )

  def embed(self, tokens_BL: jax.Array, vision: VisionInputs | None = None) -> jax.Array:
    """Token embeddings with the merged vision tokens placed at the <|image_pad|> tokens.

    The k-th <|image_pad|> token of an example takes its k-th vision feature; an example
    must not have more <|image_pad|> tokens than real vision features (not checkable
    under jit; `positions.rope_positions` checks it on the host).
    """
    x_BLD = self.text.embed(tokens_BL)
    if vision is None:
      return x_BLD
    features_BMD, _ = self.vision(vision)
    is_image_BL = tokens_BL == self.config.tokens.image_pad
    rank_BL = jnp.clip(jnp.cumsum(is_image_BL, axis=1) - 1, 0, features_BMD.shape[1] - 1)
    placed_BLD = jnp.take_along_axis(features_BMD, rank_BL[..., None], axis=1)
    return jnp.where(is_image_BL[..., None], placed_BLD.astype(x_BLD.dtype), x_BLD)

  def __call__(
    self,
    tokens_BL: jax.Array,
    positions_3BL: jax.Array,
    mask_BLL: jax.Array,
    vision: VisionInputs | None = None,
    logits_span: tuple[int, int] | None = None,
  ) -> jax.Array:
    """Float32 logits (B, L, V) under `mask_BLL` (bool, True = may attend).

    `logits_span=(start, stop)` scores only those positions (B, stop - start, V): the
    training objectives weigh only the response copies, and at a 150k vocabulary the
    logits of the whole packed sequence would dominate activation memory.
    """
    _check_mask(mask_BLL, tokens_BL.shape)
    hidden_BLD, _, _ = self.text(self.embed(tokens_BL, vision), positions_3BL, mask_BLL)
    if logits_span is not None:
      hidden_BLD = hidden_BLD[:, logits_span[0] : logits_span[1]]
    return self.text.logits(hidden_BLD)

  def prefill(
    self,
    tokens_BP: jax.Array,
    positions_3BP: jax.Array,
    valid_BP: jax.Array,
    vision: VisionInputs | None,
    *,
    cache_length: int,
    block_len: int,
  ) -> tuple[KVCache, jax.Array]:
    """Run the context into a new cache of `cache_length` slots.

    Returns (cache with length P, next_position_B int32 = max real position + 1).
    """
    b, p = tokens_BP.shape
    if cache_length < p:
      raise ValueError(f"cache_length={cache_length} is smaller than the context length {p}")
    if block_len < 1:
      raise ValueError(f"block_len must be >= 1, got {block_len}")
    valid_BP = valid_BP.astype(bool)
    mask_BPP = anchored_block_causal_BPP(valid_BP, block_len)
    _, k, v = self.text(self.embed(tokens_BP, vision), positions_3BP, mask_BPP)
    cache = write_cache(self.text.empty_cache(b, cache_length), k, v, valid_BP)
    real_pos = jnp.where(valid_BP[None], positions_3BP, -1)
    next_position_B = (jnp.max(real_pos, axis=(0, 2)) + 1).astype(jnp.int32)
    return cache, next_position_B

  def extend(
    self,
    cache: KVCache,
    tokens_BT: jax.Array,
    positions_BT: jax.Array,
    *,
    block_len: int,
    num_append: int,
  ) -> tuple[jax.Array, KVCache]:
    """Run T new text tokens against the cache; store the first `num_append` of them.

    Returns (logits_BTV float32, cache). The caller keeps length + num_append <= slots.
    """
    b, t = tokens_BT.shape
    if not 0 <= num_append <= t:
      raise ValueError(f"num_append={num_append} must be in [0, T={t}]")
    if block_len < 1:
      raise ValueError(f"block_len must be >= 1, got {block_len}")
    if num_append > cache.num_slots:
      raise ValueError(f"num_append={num_append} exceeds the cache size {cache.num_slots}")
    mask_BTT = jnp.broadcast_to(jnp.asarray(new_tokens_mask_TT(t, block_len)), (b, t, t))
    positions_3BT = rope.text_positions(positions_BT)
    x_BTD = self.text.embed(tokens_BT)
    hidden_BTD, cache = self.text.extend(x_BTD, positions_3BT, mask_BTT, cache, num_append)
    return self.text.logits(hidden_BTD), cache


def _check_mask(mask_BLL: jax.Array, tokens_shape: tuple[int, ...]) -> None:
  b, length = tokens_shape
  if mask_BLL.shape != (b, length, length):
    raise ValueError(f"mask_BLL has shape {mask_BLL.shape}, expected {(b, length, length)}")
  if mask_BLL.dtype != jnp.bool_:
    raise ValueError(f"mask_BLL must be bool (True = may attend), got {mask_BLL.dtype}")
