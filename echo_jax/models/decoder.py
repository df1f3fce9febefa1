"""The Qwen2 decoder (the LLM of Qwen2.5-VL) in Flax NNX, with a static-size KV cache.

Layer: x + Attn(RMSNorm(x)), then h + SwiGLU(RMSNorm(h)). Attention is grouped-query
(G key/value heads serve H query heads; query head h uses kv head h // (H // G), as
transformers' `repeat_kv` does), with bias on q/k/v and none on o, multimodal RoPE
(rope.py) and an arbitrary boolean mask (True = may attend). Scores and softmax are
float32 whatever the compute dtype.

Parameters carry logical axis names (see sharding.py): "embed" model width, "heads"
query heads*head_dim, "kv" key/value heads*head_dim, "mlp" MLP hidden, "vocab"; norms
are replicated. Kernels are stored (in, out), i.e. transposed from torch's Linear.

Extra shape letters: N layers, R query heads per kv head.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from echo_jax.models import rope
from echo_jax.models.config import TextConfig

# Large finite negative score for masked keys: exp underflows to exactly 0, and a
# (never produced) all-masked row would give a uniform average instead of NaN.
_MASKED = -1e30
_INIT_STD = 0.02  # transformers' initializer_range for Qwen2


def partitioned(init: nnx.Initializer, names: tuple[str | None, ...]) -> nnx.Initializer:
  """`init` tagged with logical axis names; no eager sharding (the model is built mesh-free)."""
  return nnx.with_partitioning(init, names, eager_sharding=False)


class RMSNorm(nnx.Module):
  """RMSNorm as in transformers: normalize in float32, cast back, then scale."""

  def __init__(self, dim: int, *, eps: float, dtype, param_dtype, rngs: nnx.Rngs | None = None):
    del rngs
    self.eps = eps
    self.dtype = dtype
    self.weight = nnx.Param(partitioned(nnx.initializers.ones, (None,))(None, (dim,), param_dtype))

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return self.weight[...].astype(self.dtype) * x32.astype(self.dtype)


def _linear(
  din: int, dout: int, names: tuple[str, str], *, bias: bool, dtype, param_dtype, rngs
) -> nnx.Linear:
  return nnx.Linear(
    din,
    dout,
    use_bias=bias,
    dtype=dtype,
    param_dtype=param_dtype,
    kernel_init=partitioned(nnx.initializers.normal(_INIT_STD), names),
    bias_init=partitioned(nnx.initializers.zeros, (names[1],)),
    rngs=rngs,
  )


def attend(
  q_BTHK: jax.Array, segments: Sequence[tuple[jax.Array, jax.Array, jax.Array]]
) -> jax.Array:
  """Grouped-query attention of T queries over one or more key/value segments.

  `segments` is a list of (k_BSGK, v_BSGK, mask_BTS); the softmax runs jointly over
  all of them, so a cache and the new tokens are attended without concatenating
  (copying) the cache. Returns (B, T, H, K) in q's dtype.
  """
  b, t, h, k = q_BTHK.shape
  g = segments[0][0].shape[2]
  q_BTGRK = q_BTHK.reshape(b, t, g, h // g, k)
  scale = k**-0.5
  scores = []
  for k_BSGK, _, mask_BTS in segments:
    s_BGRTS = jnp.einsum("btgrk,bsgk->bgrts", q_BTGRK, k_BSGK, preferred_element_type=jnp.float32)
    scores.append(jnp.where(mask_BTS[:, None, None], s_BGRTS * scale, _MASKED))
  weights = jax.nn.softmax(jnp.concatenate(scores, axis=-1), axis=-1)
  out_BTGRK = jnp.zeros((b, t, g, h // g, k), jnp.float32)
  start = 0
  for k_BSGK, v_BSGK, _ in segments:
    w = weights[..., start : start + k_BSGK.shape[1]].astype(v_BSGK.dtype)
    out_BTGRK += jnp.einsum("bgrts,bsgk->btgrk", w, v_BSGK, preferred_element_type=jnp.float32)
    start += k_BSGK.shape[1]
  return out_BTGRK.reshape(b, t, h, k).astype(q_BTHK.dtype)


class Attention(nnx.Module):
  """GQA self-attention with M-RoPE; can also attend a block of cached keys/values."""

  def __init__(self, config: TextConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    d, kd = config.hidden_size, config.head_dim
    self.num_heads, self.num_kv_heads, self.head_dim = (
      config.num_attention_heads,
      config.num_key_value_heads,
      kd,
    )
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.q_proj = _linear(d, self.num_heads * kd, ("embed", "heads"), bias=True, **kw)
    self.k_proj = _linear(d, self.num_kv_heads * kd, ("embed", "kv"), bias=True, **kw)
    self.v_proj = _linear(d, self.num_kv_heads * kd, ("embed", "kv"), bias=True, **kw)
    self.o_proj = _linear(self.num_heads * kd, d, ("heads", "embed"), bias=False, **kw)

  def __call__(
    self,
    x_BTD: jax.Array,
    cos_BTK: jax.Array,
    sin_BTK: jax.Array,
    mask_BTT: jax.Array,
    past: tuple[jax.Array, jax.Array, jax.Array] | None = None,
  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns (out_BTD, k_BTGK, v_BTGK); k is rotated, ready for a cache.

    `past` = (k_BSGK, v_BSGK, mask_BTS): cached keys/values attended besides the new ones,
    or a function of this layer's new (k, v) that stores them and returns that triple.
    """
    b, t, _ = x_BTD.shape
    q = self.q_proj(x_BTD).reshape(b, t, self.num_heads, self.head_dim)
    k = self.k_proj(x_BTD).reshape(b, t, self.num_kv_heads, self.head_dim)
    v = self.v_proj(x_BTD).reshape(b, t, self.num_kv_heads, self.head_dim)
    q, k = rope.apply_rope(q, cos_BTK, sin_BTK), rope.apply_rope(k, cos_BTK, sin_BTK)
    if callable(past):  # store this layer's keys/values in the cache first (Qwen2Decoder.extend)
      past = past(k, v)
    segments = [(k, v, mask_BTT)] if past is None else [past, (k, v, mask_BTT)]
    out = attend(q, segments).reshape(b, t, self.num_heads * self.head_dim)
    return self.o_proj(out), k, v


class MLP(nnx.Module):
  """SwiGLU: down(silu(gate(x)) * up(x)), no biases."""

  def __init__(self, config: TextConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    d, f = config.hidden_size, config.intermediate_size
    kw = dict(bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.gate_proj = _linear(d, f, ("embed", "mlp"), **kw)
    self.up_proj = _linear(d, f, ("embed", "mlp"), **kw)
    self.down_proj = _linear(f, d, ("mlp", "embed"), **kw)

  def __call__(self, x_BTD: jax.Array) -> jax.Array:
    return self.down_proj(jax.nn.silu(self.gate_proj(x_BTD)) * self.up_proj(x_BTD))


class DecoderLayer(nnx.Module):
  def __init__(self, config: TextConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, **kw)
    self.self_attn = Attention(config, rngs=rngs, **kw)
    self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, **kw)
    self.mlp = MLP(config, rngs=rngs, **kw)

  def __call__(self, x_BTD, cos_BTK, sin_BTK, mask_BTT, past=None):
    attn, k, v = self.self_attn(self.input_layernorm(x_BTD), cos_BTK, sin_BTK, mask_BTT, past)
    h = x_BTD + attn
    return h + self.mlp(self.post_attention_layernorm(h)), k, v


def _run_layer(layer: DecoderLayer, x_BTD, cos_BTK, sin_BTK, mask_BTT, past):
  return layer(x_BTD, cos_BTK, sin_BTK, mask_BTT, past)


@flax.struct.dataclass
class KVCache:
  """Static-size key/value cache of the decoder (see sampling/protocol.py).

  k, v: (N layers, B, S slots, G, K), rotated keys and values in the compute dtype.
  valid_BS: slot holds a real token (False for the context's left padding).
  length: int32, slots [0, length) are filled; slots at or beyond it are never attended,
    so `cache.replace(length=n)` rewinds. A scalar is shared by the batch (lockstep
    decoding); an int32 [B] gives each row its own length (continuous batching, where a
    row takes a new study while the others go on), and `extend` then writes each row's
    new keys/values at its own length.
  """

  k: jax.Array
  v: jax.Array
  valid_BS: jax.Array
  length: jax.Array

  @property
  def num_slots(self) -> int:
    return self.k.shape[2]

  def slot_mask_BS(self) -> jax.Array:
    """Which slots may be attended now."""
    slots_S = jnp.arange(self.num_slots)
    return self.valid_BS & (slots_S[None, :] < jnp.reshape(self.length, (-1, 1)))

  def per_row(self) -> KVCache:
    """The same cache with one length per row (see `length`)."""
    return self.replace(length=jnp.broadcast_to(self.length, self.valid_BS.shape[:1]))

  def put_row(self, row: jax.Array, source: KVCache, source_row: jax.Array) -> KVCache:
    """Row `row` replaced by row `source_row` of `source` (same slots), in place."""

    def put(dst, src, axis):
      piece = jax.lax.dynamic_slice_in_dim(src, source_row, 1, axis)
      return jax.lax.dynamic_update_slice_in_dim(dst, piece, row, axis)

    length = jnp.broadcast_to(source.length, source.valid_BS.shape[:1])
    return self.replace(
      k=put(self.k, source.k, 1),
      v=put(self.v, source.v, 1),
      valid_BS=put(self.valid_BS, source.valid_BS, 0),
      length=put(self.length, length, 0),
    )


class Qwen2Decoder(nnx.Module):
  """Embedding, N decoder layers, final norm and (tied or untied) LM head."""

  def __init__(self, config: TextConfig, *, dtype, param_dtype, remat: bool, rngs: nnx.Rngs):
    self.config = config
    self.dtype = dtype
    self.remat = remat
    self.embed_tokens = nnx.Embed(
      config.vocab_size,
      config.hidden_size,
      dtype=dtype,
      param_dtype=param_dtype,
      embedding_init=partitioned(nnx.initializers.normal(_INIT_STD), ("vocab", "embed")),
      rngs=rngs,
    )
    self.layers = nnx.List(
      [
        DecoderLayer(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        for _ in range(config.num_hidden_layers)
      ]
    )
    self.norm = RMSNorm(
      config.hidden_size, eps=config.rms_norm_eps, dtype=dtype, param_dtype=param_dtype
    )
    if config.tie_word_embeddings:
      self.lm_head = None
    else:
      self.lm_head = _linear(
        config.hidden_size,
        config.vocab_size,
        ("embed", "vocab"),
        bias=False,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
      )

  def embed(self, tokens_BT: jax.Array) -> jax.Array:
    return self.embed_tokens(tokens_BT)

  def __call__(
    self, x_BTD: jax.Array, positions_3BT: jax.Array, mask_BTT: jax.Array
  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Run embeddings through all layers (training, prefill; `extend` runs against a cache).

    mask_BTT: which of the T tokens each token may attend.
    Returns (hidden_BTD after the final norm, k_NBTGK, v_NBTGK of the tokens).
    """
    c = self.config
    cos, sin = rope.mrope_cos_sin(positions_3BT, c.head_dim, c.rope_theta, c.mrope_section)
    x = x_BTD.astype(self.dtype)
    call = nnx.remat(_run_layer) if self.remat else _run_layer
    ks, vs = [], []
    for layer in self.layers:
      x, k, v = call(layer, x, cos, sin, mask_BTT, None)
      ks.append(k)
      vs.append(v)
    return self.norm(x), jnp.stack(ks), jnp.stack(vs)

  def extend(
    self,
    x_BTD: jax.Array,
    positions_3BT: jax.Array,
    mask_BTT: jax.Array,
    cache: KVCache,
    num_append: int,
  ) -> tuple[jax.Array, KVCache]:
    """Run T new tokens against the cache and store the first `num_append` of them.

    Returns (hidden_BTD after the final norm, the cache advanced by num_append). Each
    layer writes its new keys/values into the cache before it attends the cache's old
    slots (the written ones are masked there and attended as new tokens): the reads of
    the cache then come after its updates, so XLA updates it in place instead of copying
    the whole cache at every decoding step.
    """
    c = self.config
    cos, sin = rope.mrope_cos_sin(positions_3BT, c.head_dim, c.rope_theta, c.mrope_section)
    b, t = x_BTD.shape[:2]
    mask_BTS = jnp.broadcast_to(cache.slot_mask_BS()[:, None], (b, t, cache.num_slots))
    k_NBSGK, v_NBSGK = cache.k, cache.v
    zero = jnp.zeros((), jnp.int32)

    per_row = jnp.ndim(cache.length) == 1
    # Per-row lengths write row b's new tokens at slots length[b] + [0, num_append).
    rows_B1 = jnp.arange(b)[:, None]
    slots_BA = jnp.reshape(cache.length, (-1, 1)) + jnp.arange(num_append)[None, :]

    def write(buf, i, new_BAGK):
      if per_row:
        return buf.at[i, rows_B1, slots_BA].set(new_BAGK, mode="promise_in_bounds")
      return jax.lax.dynamic_update_slice(buf, new_BAGK[None], (i, zero, cache.length, zero, zero))

    def storing(i: int):
      def store(k_BTGK, v_BTGK):
        nonlocal k_NBSGK, v_NBSGK
        i32 = jnp.int32(i)
        k_NBSGK = write(k_NBSGK, i32, k_BTGK[:, :num_append].astype(k_NBSGK.dtype))
        v_NBSGK = write(v_NBSGK, i32, v_BTGK[:, :num_append].astype(v_NBSGK.dtype))
        return k_NBSGK[i], v_NBSGK[i], mask_BTS

      return store

    x = x_BTD.astype(self.dtype)
    for i, layer in enumerate(self.layers):
      past = storing(i) if num_append else (cache.k[i], cache.v[i], mask_BTS)
      x, _, _ = layer(x, cos, sin, mask_BTT, past)
    if num_append:
      if per_row:
        valid = cache.valid_BS.at[rows_B1, slots_BA].set(True, mode="promise_in_bounds")
      else:
        valid = jax.lax.dynamic_update_slice(
          cache.valid_BS, jnp.ones((b, num_append), bool), (zero, cache.length)
        )
      cache = cache.replace(k=k_NBSGK, v=v_NBSGK, valid_BS=valid, length=cache.length + num_append)
    return self.norm(x), cache

  def logits(self, hidden_BTD: jax.Array) -> jax.Array:
    """Float32 logits over the vocabulary (no shift: logit i scores the token at i)."""
    if self.lm_head is None:
      table_VD = self.embed_tokens.embedding[...].astype(self.dtype)
      return jnp.einsum("btd,vd->btv", hidden_BTD, table_VD, preferred_element_type=jnp.float32)
    kernel_DV = self.lm_head.kernel[...].astype(self.dtype)
    return jnp.einsum("btd,dv->btv", hidden_BTD, kernel_DV, preferred_element_type=jnp.float32)

  def empty_cache(self, batch: int, num_slots: int) -> KVCache:
    c = self.config
    shape = (c.num_hidden_layers, batch, num_slots, c.num_key_value_heads, c.head_dim)
    return KVCache(
      k=jnp.zeros(shape, self.dtype),
      v=jnp.zeros(shape, self.dtype),
      valid_BS=jnp.zeros((batch, num_slots), bool),
      length=jnp.zeros((), jnp.int32),
    )


def write_cache(
  cache: KVCache, k_NBTGK: jax.Array, v_NBTGK: jax.Array, valid_BT: jax.Array
) -> KVCache:
  """Store T new keys/values at slots [length, length + T) and advance `length` by T.

  The caller guarantees length + T <= num_slots (dynamic_update_slice would clamp).
  """
  start = cache.length
  zero = jnp.zeros((), jnp.int32)
  k = jax.lax.dynamic_update_slice(
    cache.k, k_NBTGK.astype(cache.k.dtype), (zero, zero, start, zero, zero)
  )
  v = jax.lax.dynamic_update_slice(
    cache.v, v_NBTGK.astype(cache.v.dtype), (zero, zero, start, zero, zero)
  )
  valid = jax.lax.dynamic_update_slice(cache.valid_BS, valid_BT, (zero, start))
  return cache.replace(k=k, v=v, valid_BS=valid, length=start + k_NBTGK.shape[2])
