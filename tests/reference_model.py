"""A tiny pure-JAX decoder with a static KV cache implementing the sampler protocol.

Not echo_jax's model: a few pre-norm transformer layers (1-D rotary
positions, one token vocabulary) written in plain jax.numpy. The tests decode
it with every sampler and compare against uncached reference decoding; it is
also the example of plugging a foreign model into `echo_jax.sampling`:

  model = ReferenceModel(RefConfig(vocab=16))
  params = init_params(model.cfg, jax.random.key(0))
  ctx = RefContext(tokens_BP=..., valid_BP=...)        # left-padded
  out = OneStepSampler(eos_id=1, mask_id=2, pad_id=0, block_len=4)(model, params, ctx)
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class RefConfig:
  vocab: int = 16
  width: int = 32
  heads: int = 2
  layers: int = 2
  mlp: int = 64
  mix: float = 3.0  # gain of the attention and MLP outputs: tokens depend on their context
  logit_scale: float = 4.0  # sharpens the random model so confidences spread over (0, 1)


def init_params(cfg: RefConfig, key: jax.Array) -> dict:
  keys = iter(jax.random.split(key, 3 + 6 * cfg.layers))
  d = cfg.width
  normal = lambda shape, fan_in: jax.random.normal(next(keys), shape, jnp.float32) / fan_in**0.5
  layers = [
    dict(
      wq=normal((d, d), d),
      wk=normal((d, d), d),
      wv=normal((d, d), d),
      wo=normal((d, d), d) * cfg.mix,
      w1=normal((d, cfg.mlp), d),
      w2=normal((cfg.mlp, d), cfg.mlp) * cfg.mix,
    )
    for _ in range(cfg.layers)
  ]
  return dict(embed=normal((cfg.vocab, d), 1.0), layers=layers, out=normal((d, cfg.vocab), d))


@flax.struct.dataclass
class RefContext:
  tokens_BP: jax.Array  # int32 [B, P], left-padded
  valid_BP: jax.Array  # bool [B, P]: real tokens (a suffix of each row)


@flax.struct.dataclass
class RefCache:
  k_NBSHK: jax.Array  # float32 [layers, B, S, heads, head_dim], rotated keys
  v_NBSHK: jax.Array  # float32 [layers, B, S, heads, head_dim]
  valid_BS: jax.Array  # bool [B, S]: slot holds a real token
  length: jax.Array  # int32 []: slots filled


def _norm(x):
  return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6)


def _rope(x_BLHK, pos_BL):
  half = x_BLHK.shape[-1] // 2
  freq = 1.0 / (100.0 ** (jnp.arange(half) / half))
  ang = pos_BL[..., None, None].astype(jnp.float32) * freq
  a, b = x_BLHK[..., :half], x_BLHK[..., half:]
  return jnp.concatenate(
    [a * jnp.cos(ang) - b * jnp.sin(ang), a * jnp.sin(ang) + b * jnp.cos(ang)], -1
  )


@dataclasses.dataclass(frozen=True)
class ReferenceModel:
  """Implements echo_jax.sampling.protocol.DecodeModel and SplittableContext."""

  cfg: RefConfig = RefConfig()

  # -- the network ---------------------------------------------------------
  def _qkv(self, layer, x_BLD, pos_BL):
    b, n, _ = x_BLD.shape
    h = _norm(x_BLD)
    split = lambda y: y.reshape(b, n, self.cfg.heads, -1)
    q = _rope(split(h @ layer["wq"]), pos_BL)
    k = _rope(split(h @ layer["wk"]), pos_BL)
    return q, k, split(h @ layer["wv"])

  def _finish(self, layer, x_BLD, q, k, v, mask_BLS):
    b, n, _ = x_BLD.shape
    s = jnp.einsum("blhk,bshk->bhls", q, k) / q.shape[-1] ** 0.5
    s = jnp.where(mask_BLS[:, None], s, -1e30)
    o = jnp.einsum("bhls,bshk->blhk", jax.nn.softmax(s, axis=-1), v).reshape(b, n, -1)
    x = x_BLD + o @ layer["wo"]
    return x + jax.nn.gelu(_norm(x) @ layer["w1"]) @ layer["w2"]

  def _logits(self, params, x_BLD):
    return (_norm(x_BLD) @ params["out"]) * self.cfg.logit_scale

  def forward(self, params, tokens_BL, positions_BL, mask_BLL):
    """Uncached full forward: logits_BLV; mask_BLL True = may attend."""
    x = params["embed"][tokens_BL]
    for layer in params["layers"]:
      q, k, v = self._qkv(layer, x, positions_BL)
      x = self._finish(layer, x, q, k, v, mask_BLL)
    return self._logits(params, x)

  # -- the protocol --------------------------------------------------------
  def context_slots(self, context: RefContext, *, block_len: int) -> int:
    p = context.tokens_BP.shape[1]
    return -(-p // block_len) * block_len

  def prefill(self, params, context: RefContext, *, cache_length: int, block_len: int):
    p = context.tokens_BP.shape[1]
    slots = self.context_slots(context, block_len=block_len)
    if cache_length < slots:
      raise ValueError(f"cache_length={cache_length} < {slots} context slots")
    pad = slots - p
    tokens = jnp.pad(context.tokens_BP, ((0, 0), (pad, 0)))
    valid = jnp.pad(context.valid_BP, ((0, 0), (pad, 0)))
    pos = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)
    blk = jnp.arange(slots) // block_len  # the context ends on a block boundary
    eye = jnp.eye(slots, dtype=bool)
    mask = (valid[:, None, :] & (blk[None, :, None] >= blk[None, None, :])) | eye[None]
    b, hd = tokens.shape[0], self.cfg.width // self.cfg.heads
    shape = (self.cfg.layers, b, cache_length, self.cfg.heads, hd)
    ks, vs = jnp.zeros(shape), jnp.zeros(shape)
    x = params["embed"][tokens]
    for i, layer in enumerate(params["layers"]):
      q, k, v = self._qkv(layer, x, pos)
      ks, vs = ks.at[i, :, :slots].set(k), vs.at[i, :, :slots].set(v)
      x = self._finish(layer, x, q, k, v, mask)
    valid_bs = jnp.zeros((b, cache_length), bool).at[:, :slots].set(valid)
    cache = RefCache(k_NBSHK=ks, v_NBSHK=vs, valid_BS=valid_bs, length=jnp.int32(slots))
    return cache, jnp.sum(valid, axis=1).astype(jnp.int32)

  def extend(
    self, params, cache: RefCache, tokens_BT, positions_BT, *, block_len: int, num_append: int
  ):
    t, s = tokens_BT.shape[1], cache.valid_BS.shape[1]
    blk = jnp.arange(t) // block_len
    new_mask = blk[:, None] >= blk[None, :]
    old_mask = cache.valid_BS & (jnp.arange(s) < cache.length)[None, :]
    mask = jnp.concatenate(
      [
        jnp.broadcast_to(old_mask[:, None, :], (tokens_BT.shape[0], t, s)),
        jnp.broadcast_to(new_mask[None], (tokens_BT.shape[0], t, t)),
      ],
      axis=-1,
    )
    ks, vs = cache.k_NBSHK, cache.v_NBSHK
    x = params["embed"][tokens_BT]
    for i, layer in enumerate(params["layers"]):
      q, k, v = self._qkv(layer, x, positions_BT)
      x = self._finish(
        layer, x, q, jnp.concatenate([ks[i], k], 1), jnp.concatenate([vs[i], v], 1), mask
      )
      if num_append:
        at = (0, cache.length, 0, 0)
        ks = ks.at[i].set(jax.lax.dynamic_update_slice(ks[i], k[:, :num_append], at))
        vs = vs.at[i].set(jax.lax.dynamic_update_slice(vs[i], v[:, :num_append], at))
    valid = cache.valid_BS
    if num_append:
      valid = jax.lax.dynamic_update_slice(
        valid, jnp.ones((valid.shape[0], num_append), bool), (0, cache.length)
      )
    cache = cache.replace(k_NBSHK=ks, v_NBSHK=vs, valid_BS=valid, length=cache.length + num_append)
    return self._logits(params, x), cache

  def context_lengths(self, context: RefContext):
    return jnp.sum(context.valid_BP, axis=1).astype(jnp.int32)

  def split_context(self, context: RefContext, tail_len_B, *, max_tail: int):
    p = context.tokens_BP.shape[1]
    idx = jnp.arange(p)[None, :] - tail_len_B[:, None]  # shift each row right by its tail
    tokens = jnp.take_along_axis(context.tokens_BP, jnp.clip(idx, 0, p - 1), axis=1)
    valid = jnp.take_along_axis(context.valid_BP, jnp.clip(idx, 0, p - 1), axis=1) & (idx >= 0)
    tail_idx = jnp.clip(p - tail_len_B[:, None] + jnp.arange(max_tail)[None, :], 0, p - 1)
    tail = jnp.take_along_axis(context.tokens_BP, tail_idx, axis=1)
    return RefContext(tokens_BP=tokens, valid_BP=valid), tail


def make_context(prompts: list[list[int]], length: int, pad_id: int = 0) -> RefContext:
  """Left-pad token lists into a RefContext of static length `length`."""
  if max(len(p) for p in prompts) > length:
    raise ValueError(f"a prompt is longer than length={length}")
  tokens = [[pad_id] * (length - len(p)) + list(p) for p in prompts]
  valid = [[False] * (length - len(p)) + [True] * len(p) for p in prompts]
  return RefContext(tokens_BP=jnp.asarray(tokens, jnp.int32), valid_BP=jnp.asarray(valid, bool))
