"""The Qwen2.5-VL vision tower (ViT + 2x2 patch merger) in Flax NNX, and its HF weight mapping.

Matches transformers' `Qwen2_5_VisionTransformerPretrainedModel`: a Conv3d patch
embedding (kernel = stride, so a matmul over flattened patches), blocks of
RMSNorm -> attention with 2-D rotary -> RMSNorm -> SwiGLU MLP (with bias), window
attention except in `fullatt_block_indexes`, attention never crossing an image
frame, then RMSNorm, 2x2 merge and a GELU MLP into the LLM width.

All index bookkeeping is host-side (`vision_layout.prepare_vision_inputs`); this
module only gathers and attends. Tokens stay in HF order throughout (see
vision_layout's docstring), so the output needs no reverse window permutation.
Window layers attend inside [W, E] window rows (O(N * E)); full layers attend
inside each image frame of the example (O(N^2), as in HF).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from echo_jax.models.config import VisionConfig
from echo_jax.models.vision_layout import VisionInputs, prepare_vision_inputs

__all__ = [
  "VisionInputs",
  "VisionTower",
  "prepare_vision_inputs",
  "vision_from_hf",
  "vision_hf_shapes",
  "vision_to_hf",
]

_kernel_init = nnx.initializers.lecun_normal()
_zeros = nnx.initializers.zeros_init()
_ones = nnx.initializers.ones_init()


def _param(
  rngs: nnx.Rngs, init: Callable, shape: tuple[int, ...], names: tuple, dtype
) -> nnx.Param:
  return nnx.Param(nnx.with_partitioning(init, names)(rngs.params(), shape, dtype))


class Dense(nnx.Module):
  """x @ kernel + bias, with the kernel [in, *out] and the bias [*out]."""

  def __init__(self, d_in: int, out: tuple[int, ...], names: tuple, *, dtype, param_dtype, rngs):
    self.kernel = _param(rngs, _kernel_init, (d_in, *out), names, param_dtype)
    self.bias = _param(rngs, _zeros, out, (None,) * len(out), param_dtype)
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jnp.tensordot(x.astype(self.dtype), self.kernel.value.astype(self.dtype), axes=1)
    return y + self.bias.value.astype(self.dtype)


class RMSNorm(nnx.Module):
  """Normalize in float32, cast back, then scale: the HF Qwen2.5-VL order of operations."""

  def __init__(self, dim: int, eps: float, *, dtype, param_dtype, rngs):
    self.scale = _param(rngs, _ones, (dim,), (None,), param_dtype)
    self.eps, self.dtype = eps, dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return self.scale.value.astype(self.dtype) * y.astype(self.dtype)


def rotary_cos_sin(
  positions_BN2: jax.Array, head_dim: int, theta: float
) -> tuple[jax.Array, jax.Array]:
  """cos, sin [B, N, K]: rows rotate the first half of each rotary half, columns the second."""
  quarter = np.arange(0, head_dim // 2, 2, dtype=np.float32) / (head_dim // 2)
  inv_freq = jnp.asarray(1.0 / theta**quarter, jnp.float32)  # [K/4]
  freqs = positions_BN2.astype(jnp.float32)[..., None] * inv_freq  # [B, N, 2, K/4]
  freqs = freqs.reshape(*freqs.shape[:-2], head_dim // 2)
  freqs = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(freqs), jnp.sin(freqs)


def _apply_rotary(x_BNHK: jax.Array, cos_BNK: jax.Array, sin_BNK: jax.Array) -> jax.Array:
  x = x_BNHK.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  y = x * cos_BNK[:, :, None] + rotated * sin_BNK[:, :, None]
  return y.astype(x_BNHK.dtype)


def _attend(
  q_BNHK: jax.Array, k_BNHK: jax.Array, v_BNHK: jax.Array, mask_BNN: jax.Array
) -> jax.Array:
  """Softmax attention with float32 logits; every mask row has at least one True."""
  scale = q_BNHK.shape[-1] ** -0.5
  logits = jnp.einsum("bqhk,bshk->bhqs", q_BNHK, k_BNHK, preferred_element_type=jnp.float32)
  logits = jnp.where(mask_BNN[:, None], logits * scale, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1).astype(v_BNHK.dtype)
  return jnp.einsum("bhqs,bshk->bqhk", probs, v_BNHK)


def _window_attend(q_BNHK, k_BNHK, v_BNHK, inputs: VisionInputs, mask_XEE: jax.Array) -> jax.Array:
  """Attention inside windows: gather into [B*W, E] rows, attend, gather back to [B, N]."""
  b, n, h, k = q_BNHK.shape
  _, w, e = inputs.window_patch_BWE.shape
  index = inputs.window_patch_BWE.reshape(b, w * e)[:, :, None, None]

  def rows(x_BNHK):
    return jnp.take_along_axis(x_BNHK, index, axis=1).reshape(b * w, e, h, k)

  out_XEHK = _attend(rows(q_BNHK), rows(k_BNHK), rows(v_BNHK), mask_XEE)
  out = out_XEHK.reshape(b, w * e, h * k)
  # One zero slot past the end: padding patches read it (they belong to no window).
  out = jnp.concatenate([out, jnp.zeros((b, 1, h * k), out.dtype)], axis=1)
  return jnp.take_along_axis(out, inputs.window_slot_BN[:, :, None], axis=1)


class VisionAttention(nnx.Module):
  def __init__(self, config: VisionConfig, *, dtype, param_dtype, rngs):
    d = config.hidden_size
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.qkv = Dense(d, (3, d), ("embed", None, "heads"), **kw)
    self.proj = Dense(d, (d,), ("heads", "embed"), **kw)
    self.num_heads = config.num_heads

  def __call__(self, x_BND, cos_BNK, sin_BNK, inputs: VisionInputs, mask, full: bool):
    b, n, _ = x_BND.shape
    qkv = self.qkv(x_BND).reshape(b, n, 3, self.num_heads, -1)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    q, k = _apply_rotary(q, cos_BNK, sin_BNK), _apply_rotary(k, cos_BNK, sin_BNK)
    if full:
      out = _attend(q, k, v, mask).reshape(b, n, -1)
    else:
      out = _window_attend(q, k, v, inputs, mask)
    return self.proj(out)


class VisionMLP(nnx.Module):
  """SwiGLU with bias: down(silu(gate(x)) * up(x))."""

  def __init__(self, config: VisionConfig, *, dtype, param_dtype, rngs):
    d, f = config.hidden_size, config.intermediate_size
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.gate_proj = Dense(d, (f,), ("embed", "mlp"), **kw)
    self.up_proj = Dense(d, (f,), ("embed", "mlp"), **kw)
    self.down_proj = Dense(f, (d,), ("mlp", "embed"), **kw)

  def __call__(self, x_BND: jax.Array) -> jax.Array:
    return self.down_proj(jax.nn.silu(self.gate_proj(x_BND)) * self.up_proj(x_BND))


class VisionBlock(nnx.Module):
  def __init__(self, config: VisionConfig, *, dtype, param_dtype, rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.norm1 = RMSNorm(config.hidden_size, config.rms_norm_eps, **kw)
    self.attn = VisionAttention(config, **kw)
    self.norm2 = RMSNorm(config.hidden_size, config.rms_norm_eps, **kw)
    self.mlp = VisionMLP(config, **kw)

  def __call__(self, x_BND, cos_BNK, sin_BNK, inputs: VisionInputs, mask, full: bool):
    x_BND = x_BND + self.attn(self.norm1(x_BND), cos_BNK, sin_BNK, inputs, mask, full)
    return x_BND + self.mlp(self.norm2(x_BND))


class PatchMerger(nnx.Module):
  """RMSNorm, concatenate each 2x2 merge block (consecutive patches), GELU MLP to the LLM width."""

  def __init__(self, config: VisionConfig, *, dtype, param_dtype, rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    d4 = config.hidden_size * config.spatial_merge_size**2
    self.ln_q = RMSNorm(config.hidden_size, config.rms_norm_eps, **kw)
    self.fc1 = Dense(d4, (d4,), ("embed", "mlp"), **kw)
    self.fc2 = Dense(d4, (config.out_hidden_size,), ("mlp", "embed"), **kw)
    self.unit = config.spatial_merge_size**2

  def __call__(self, x_BND: jax.Array) -> jax.Array:
    b, n, d = x_BND.shape
    x = self.ln_q(x_BND).reshape(b, n // self.unit, self.unit * d)
    return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


def _block_fn(full: bool) -> Callable:
  """A block call with the attention kind fixed, so remat sees only array arguments."""

  def run(block: VisionBlock, x_BND, cos_BNK, sin_BNK, inputs: VisionInputs, mask):
    return block(x_BND, cos_BNK, sin_BNK, inputs, mask, full)

  return run


class VisionTower(nnx.Module):
  """Qwen2.5-VL ViT + merger. `__call__(inputs) -> (features_BMD, valid_BM)`, M = N // merge**2.

  Features are in HF order (the order of <|image_pad|> tokens); invalid rows are zero.
  """

  def __init__(
    self,
    config: VisionConfig,
    *,
    dtype: jnp.dtype | str = jnp.float32,
    param_dtype: jnp.dtype | str = jnp.float32,
    remat: bool = False,
    rngs: nnx.Rngs,
  ):
    if config.hidden_size % config.num_heads or config.head_dim % 4:
      raise ValueError(
        f"vision hidden_size={config.hidden_size} / num_heads={config.num_heads} must give a "
        "head_dim that is a multiple of 4 (2-D rotary over rows and columns)"
      )
    unit_px = config.patch_size * config.spatial_merge_size
    if config.window_size < unit_px or config.window_size % unit_px:
      raise ValueError(
        f"vision window_size={config.window_size} must be a positive multiple of {unit_px}"
      )
    dtype, param_dtype = jnp.dtype(dtype), jnp.dtype(param_dtype)
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.config, self.dtype, self.remat = config, dtype, remat
    self.patch_embed = _param(
      rngs, _kernel_init, (config.patch_dim, config.hidden_size), (None, "embed"), param_dtype
    )
    self.blocks = nnx.List([VisionBlock(config, **kw) for _ in range(config.depth)])
    self.merger = PatchMerger(config, **kw)

  def __call__(self, inputs: VisionInputs) -> tuple[jax.Array, jax.Array]:
    cfg = self.config
    x_BND = jnp.tensordot(
      jnp.asarray(inputs.patches_BNC).astype(self.dtype),
      self.patch_embed.value.astype(self.dtype),
      axes=1,
    )
    cos_BNK, sin_BNK = rotary_cos_sin(
      jnp.asarray(inputs.positions_BN2), cfg.head_dim, cfg.rope_theta
    )
    seg_BN = jnp.asarray(inputs.segments_BN)
    full_mask_BNN = seg_BN[:, :, None] == seg_BN[:, None, :]
    win_id = jnp.asarray(inputs.window_id_BWE)
    b, w, e = win_id.shape
    window_mask_XEE = (win_id[..., :, None] == win_id[..., None, :]).reshape(b * w, e, e)

    for i, block in enumerate(self.blocks):
      full = i in cfg.fullatt_block_indexes
      run = _block_fn(full)
      if self.remat:
        run = nnx.remat(run)
      mask = full_mask_BNN if full else window_mask_XEE
      x_BND = run(block, x_BND, cos_BNK, sin_BNK, inputs, mask)

    features_BMD = self.merger(x_BND)
    unit = cfg.spatial_merge_size**2
    valid_BM = jnp.asarray(inputs.valid_BN)[:, ::unit]
    return jnp.where(valid_BM[..., None], features_BMD, 0), valid_BM


# --- Hugging Face weights ---------------------------------------------------------------------


def _hf_table(module: VisionTower) -> dict[str, tuple[nnx.Param, tuple[int, ...], bool]]:
  """HF name (no prefix) -> (our param, HF shape, is_kernel). Kernels are HF weights transposed."""
  cfg = module.config
  d = cfg.hidden_size
  conv = (d, cfg.in_channels, cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size)
  table = {"patch_embed.proj.weight": (module.patch_embed, conv, True)}

  def dense(name: str, layer: Dense) -> None:
    shape = layer.kernel.value.shape
    out = int(np.prod(shape[1:]))
    table[f"{name}.weight"] = (layer.kernel, (out, shape[0]), True)
    table[f"{name}.bias"] = (layer.bias, (out,), False)

  for i, blk in enumerate(module.blocks):
    table[f"blocks.{i}.norm1.weight"] = (blk.norm1.scale, (d,), False)
    table[f"blocks.{i}.norm2.weight"] = (blk.norm2.scale, (d,), False)
    dense(f"blocks.{i}.attn.qkv", blk.attn.qkv)
    dense(f"blocks.{i}.attn.proj", blk.attn.proj)
    for name in ("gate_proj", "up_proj", "down_proj"):
      dense(f"blocks.{i}.mlp.{name}", getattr(blk.mlp, name))
  table["merger.ln_q.weight"] = (module.merger.ln_q.scale, (d,), False)
  dense("merger.mlp.0", module.merger.fc1)
  dense("merger.mlp.2", module.merger.fc2)
  return table


def _names(names: list[str], limit: int = 8) -> str:
  more = f" ... ({len(names) - limit} more)" if len(names) > limit else ""
  return ", ".join(names[:limit]) + more


def vision_hf_shapes(
  module: VisionTower, prefix: str = "model.visual."
) -> dict[str, tuple[int, ...]]:
  """HF tensor name -> shape that `vision_from_hf` expects (works on an abstract module too)."""
  return {prefix + name: hf_shape for name, (_, hf_shape, _) in _hf_table(module).items()}


def vision_from_hf(
  module: VisionTower, tensors: dict[str, np.ndarray], prefix: str = "model.visual."
) -> None:
  """Load HF `Qwen2_5_VLForConditionalGeneration` vision weights into `module`, in place.

  Only keys starting with `prefix` are considered (the rest of a full state dict is ignored).
  `module` may be abstract (from `nnx.eval_shape`): loading then skips random initialization.
  Parameters that already hold arrays keep their sharding. Raises ValueError naming missing, unexpected or mis-shaped tensors; nothing is written then.
  """
  table = _hf_table(module)
  given = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
  missing = sorted(set(table) - set(given))
  extra = sorted(set(given) - set(table))
  if missing:
    raise ValueError(
      f"vision weights missing {len(missing)} tensors: {_names([prefix + k for k in missing])}"
    )
  if extra:
    raise ValueError(
      f"vision weights have {len(extra)} unexpected tensors: {_names([prefix + k for k in extra])}"
    )
  values = {}
  for name, (param, hf_shape, is_kernel) in table.items():
    arr = np.asarray(given[name])
    if arr.shape != hf_shape:
      raise ValueError(f"tensor {prefix}{name} has shape {arr.shape}; expected {hf_shape}")
    ours = arr.reshape(hf_shape[0], -1).T if is_kernel else arr
    values[name] = ours.reshape(param.value.shape)
  for name, (param, _, _) in table.items():
    old = param.value
    new = jnp.asarray(values[name], dtype=old.dtype)
    if isinstance(old, jax.Array) and not isinstance(old, jax.core.Tracer):
      new = jax.device_put(new, old.sharding)
    param.value = new


def vision_to_hf(module: VisionTower, prefix: str = "model.visual.") -> dict[str, np.ndarray]:
  """The module's weights as HF `Qwen2_5_VLForConditionalGeneration` tensors (numpy, param dtype)."""
  out = {}
  for name, (param, hf_shape, is_kernel) in _hf_table(module).items():
    arr = np.asarray(param.value)
    out[prefix + name] = (arr.reshape(arr.shape[0], -1).T if is_kernel else arr).reshape(hf_shape)
  return out
