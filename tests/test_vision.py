"""Parity of the Qwen2.5-VL vision tower with transformers, layout bookkeeping, HF weight mapping."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
  Qwen2_5_VisionTransformerPretrainedModel,
)
from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

from echo_jax.models.config import VisionConfig
from echo_jax.models.vision import (
  VisionTower,
  prepare_vision_inputs,
  vision_from_hf,
  vision_hf_shapes,
  vision_to_hf,
)
from echo_jax.models.vision_layout import num_window_rows, window_capacity

PREFIX = "model.visual."
# Two tiny towers: 2x2-block windows (window 56) and 4x4-block windows (window 112).
CONFIGS = {
  "win56": VisionConfig(
    depth=3,
    hidden_size=64,
    intermediate_size=96,
    num_heads=4,
    window_size=56,
    fullatt_block_indexes=(1,),
    out_hidden_size=48,
  ),
  "win112": VisionConfig(
    depth=4,
    hidden_size=32,
    intermediate_size=80,
    num_heads=2,
    window_size=112,
    fullatt_block_indexes=(2,),
    out_hidden_size=40,
  ),
}


def _hf_vision_config(cfg: VisionConfig) -> Qwen2_5_VLVisionConfig:
  return Qwen2_5_VLVisionConfig(
    depth=cfg.depth,
    hidden_size=cfg.hidden_size,
    intermediate_size=cfg.intermediate_size,
    num_heads=cfg.num_heads,
    window_size=cfg.window_size,
    fullatt_block_indexes=list(cfg.fullatt_block_indexes),
    out_hidden_size=cfg.out_hidden_size,
  )


def _new_tower(cfg: VisionConfig, tensors: dict | None = None, seed: int = 0, **kw) -> VisionTower:
  """A tower with `tensors` loaded, or random weights (HF layout) when None.

  Built abstractly and then loaded: random initialization compiles an op per
  parameter shape, which is most of the cost of a tiny model on CPU.
  """
  with nnx.use_eager_sharding(False):
    tower = nnx.eval_shape(lambda: VisionTower(cfg, rngs=nnx.Rngs(0), **kw))
  if tensors is None:
    rng = np.random.default_rng(seed)
    tensors = {
      k: (rng.standard_normal(s) * 0.2 + ("norm" in k or "ln_q" in k)).astype(np.float32)
      for k, s in vision_hf_shapes(tower).items()
    }
  vision_from_hf(tower, tensors)
  return tower


def _jit_forward(tower: VisionTower):
  """One compiled forward per input shape (op-by-op eager dispatch is far slower on CPU)."""
  graphdef, state = nnx.split(tower)
  forward = jax.jit(lambda state, inputs: nnx.merge(graphdef, state)(inputs))
  return lambda inputs: jax.tree.map(np.asarray, forward(state, inputs))


@pytest.fixture(scope="module", params=list(CONFIGS))
def towers(request):
  """(config, HF reference in float32 eager attention, our tower loaded from its weights)."""
  cfg = CONFIGS[request.param]
  hc = _hf_vision_config(cfg)
  hc._attn_implementation = "eager"
  torch.manual_seed(0)
  hf = Qwen2_5_VisionTransformerPretrainedModel(hc).eval()
  # Random everything (HF init leaves biases at 0 and norms at 1, which would hide mistakes).
  with torch.no_grad():
    for name, p in hf.named_parameters():
      p.copy_(torch.randn_like(p) * 0.2 + (1.0 if "norm" in name or "ln_q" in name else 0.0))
  tower = _new_tower(cfg, {PREFIX + k: v.numpy() for k, v in hf.state_dict().items()})
  return cfg, hf, tower, _jit_forward(tower)


def _patches(cfg: VisionConfig, grid: np.ndarray, seed: int) -> np.ndarray:
  n = int(np.prod(grid, axis=1).sum())
  return np.random.default_rng(seed).standard_normal((n, cfg.patch_dim)).astype(np.float32)


def _hf_features(hf, patches: np.ndarray, grid: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    out = hf(torch.from_numpy(patches), grid_thw=torch.from_numpy(grid))
  return out.pooler_output.numpy()


def _assert_close(ours: np.ndarray, ref: np.ndarray, tol: float = 1e-4) -> None:
  assert ours.shape == ref.shape
  rel = np.abs(ours - ref).max() / np.abs(ref).max()
  assert rel <= tol, f"relative error {rel:.2e} > {tol:.0e}"


# Examples of one batch, each with its own image sizes; the last one has no image.
CASES = {
  "square": [[1, 8, 8]],
  "nonsquare": [[1, 10, 6]],  # sides not multiples of either window
  "two_images": [[1, 6, 8], [1, 10, 4]],  # two images of different sizes in one example
  "frames": [[2, 4, 6], [1, 2, 2]],  # two frames (windows and full attention per frame)
  "big": [[1, 12, 10], [1, 4, 4]],
  "no_image": np.zeros((0, 3), int),
}


@pytest.fixture(scope="module")
def batch(towers):
  """All CASES as one padded batch through our tower: (inputs, features_BMD, valid_BM)."""
  cfg, _, _, forward = towers
  grids = [np.array(g, int).reshape(-1, 3) for g in CASES.values()]
  patches = [_patches(cfg, g, seed=i) for i, g in enumerate(grids)]
  inputs = prepare_vision_inputs(patches, grids, cfg, max_patches=max(map(len, patches)) + 8)
  return patches, grids, inputs, *forward(inputs)


@pytest.mark.parametrize("case", [c for c in CASES if c != "no_image"])
def test_matches_transformers_in_a_padded_batch(towers, batch, case):
  _, hf, _, _ = towers
  patches, grids, _, features, valid = batch
  i = list(CASES).index(case)
  m = len(patches[i]) // 4
  np.testing.assert_array_equal(valid[i], np.arange(valid.shape[1]) < m)
  _assert_close(features[i, :m], _hf_features(hf, patches[i], grids[i]))
  assert not features[i, m:].any()


def test_padding_invariance(towers, batch):
  cfg, _, _, forward = towers
  patches, grids, inputs, features, valid = batch
  # The square example alone, with no padding at all, gives the features it has in the batch.
  alone, _ = forward(prepare_vision_inputs(patches[:1], grids[:1], cfg, len(patches[0])))
  _assert_close(features[0, : len(patches[0]) // 4], alone[0], tol=1e-5)
  # An example without images is all padding: no valid tokens, zero features.
  assert not valid[-1].any() and not features[-1].any()
  # Whatever the padding patches hold, no valid output changes.
  noisy = inputs.replace(patches_BNC=np.where(inputs.valid_BN[..., None], inputs.patches_BNC, 1e3))
  np.testing.assert_array_equal(forward(noisy)[0], features)


@pytest.mark.parametrize("cfg", list(CONFIGS.values()), ids=list(CONFIGS))
@pytest.mark.parametrize("grid", [[[1, 8, 8]], [[1, 10, 6], [2, 6, 14]], [[1, 18, 2]]])
def test_layout_matches_hf_index_functions(cfg, grid):
  grid = np.array(grid)
  n = int(np.prod(grid, axis=1).sum())
  inputs = prepare_vision_inputs([np.zeros((n, cfg.patch_dim), np.float32)], [grid], cfg, n + 4)
  hf_pos = get_vision_position_ids(torch.from_numpy(grid), cfg.spatial_merge_size).numpy()
  np.testing.assert_array_equal(inputs.positions_BN2[0, :n], hf_pos)
  np.testing.assert_array_equal(inputs.positions_BN2[0, n:], 0)
  # HF windows: runs of window_index (merge-block ids) split at cu_window_seqlens.
  unit = cfg.spatial_merge_size**2
  index, cu = get_vision_window_index(
    torch.from_numpy(grid), cfg.spatial_merge_size, cfg.window_size, cfg.patch_size
  )
  patch_order = (index.numpy()[:, None] * unit + np.arange(unit)).ravel()
  hf_windows = [patch_order[a:b].tolist() for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())]
  ids, patch = inputs.window_id_BWE[0].ravel(), inputs.window_patch_BWE[0].ravel()
  ours = [patch[ids == w].tolist() for w in range(ids.max() + 1)]
  assert ours == hf_windows
  # Every real patch sits in exactly one slot, and window_slot_BN points back at it.
  slots = inputs.window_slot_BN[0, :n]
  np.testing.assert_array_equal(patch[slots], np.arange(n))
  assert len(set(slots.tolist())) == n and (ids[slots] >= 0).all()
  np.testing.assert_array_equal(inputs.window_slot_BN[0, n:], ids.size)
  # Full attention groups are image frames, -1 on padding.
  frames = np.repeat(np.arange(grid[:, 0].sum()), np.repeat(grid[:, 1] * grid[:, 2], grid[:, 0]))
  np.testing.assert_array_equal(inputs.segments_BN[0], np.concatenate([frames, [-1] * 4]))


def test_window_rows_bound_holds_for_many_tiny_images():
  cfg = CONFIGS["win112"]  # windows of 64 patches; 2x2-patch images fill 1/16 of one
  e = window_capacity(cfg)
  grid = np.array([[1, 2, 2]] * 40 + [[1, 8, 8]] + [[1, 2, 2]] * 8)
  n = int(np.prod(grid, axis=1).sum())
  inputs = prepare_vision_inputs([np.zeros((n, cfg.patch_dim), np.float32)], [grid], cfg, n)
  assert inputs.window_patch_BWE.shape == (1, num_window_rows(cfg, n), e)
  assert num_window_rows(cfg, n) == 2 * -(-n // e) - 1
  assert inputs.window_id_BWE.max() == len(grid) - 1
  np.testing.assert_array_equal(
    np.sort(inputs.window_slot_BN[0] // e), inputs.window_slot_BN[0] // e
  )


def test_prepare_rejects_bad_inputs():
  cfg = CONFIGS["win56"]
  grid = np.array([[1, 4, 6]])
  good = np.zeros((24, cfg.patch_dim), np.float32)
  with pytest.raises(ValueError, match="covers 24 patches but 20"):
    prepare_vision_inputs([good[:20]], [grid], cfg, 32)
  with pytest.raises(ValueError, match="exceed max_patches=20"):
    prepare_vision_inputs([good], [grid], cfg, 20)
  with pytest.raises(ValueError, match="multiples of spatial_merge_size"):
    prepare_vision_inputs([good[:20]], [np.array([[1, 4, 5]])], cfg, 32)
  with pytest.raises(ValueError, match="multiple of 4"):
    prepare_vision_inputs([good], [grid], cfg, 30)
  with pytest.raises(ValueError, match=r"expected \(num_patches, 1176\)"):
    prepare_vision_inputs([good[:, :100]], [grid], cfg, 32)


def test_hf_names_and_shapes_match_full_model_state_dict():
  cfg = CONFIGS["win112"]
  config = Qwen2_5_VLConfig(
    vision_config=_hf_vision_config(cfg).to_dict(),
    text_config=dict(
      vocab_size=64,
      hidden_size=cfg.out_hidden_size,
      intermediate_size=64,
      num_hidden_layers=1,
      num_attention_heads=2,
      num_key_value_heads=1,
      rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 4, 4]},
    ),
  )
  with torch.device("meta"):
    full = Qwen2_5_VLForConditionalGeneration(config)
  ref = {k: tuple(v.shape) for k, v in full.state_dict().items() if k.startswith(PREFIX)}
  with nnx.use_eager_sharding(False):
    ours = vision_hf_shapes(nnx.eval_shape(lambda: VisionTower(cfg, rngs=nnx.Rngs(0))))
  assert ours == ref


def test_round_trip_is_exact_and_errors_name_the_tensor():
  cfg = CONFIGS["win56"]
  source = vision_to_hf(_new_tower(cfg))
  target = _new_tower(cfg, seed=1)
  assert not np.array_equal(
    vision_to_hf(target)[PREFIX + "merger.ln_q.weight"], source[PREFIX + "merger.ln_q.weight"]
  )
  vision_from_hf(target, source)
  back = vision_to_hf(target)
  assert back.keys() == source.keys()
  for k in source:
    np.testing.assert_array_equal(back[k], source[k], err_msg=k)
  # The rest of a full state dict (text weights) is ignored.
  vision_from_hf(target, {**source, "model.language_model.norm.weight": np.ones(3)})

  bad = dict(source)
  name = PREFIX + "blocks.1.attn.qkv.weight"
  bad[name] = bad[name][:-1]
  with pytest.raises(
    ValueError, match=r"blocks\.1\.attn\.qkv\.weight has shape \(191, 64\); expected \(192, 64\)"
  ):
    vision_from_hf(target, bad)
  missing = {k: v for k, v in source.items() if k != PREFIX + "merger.mlp.2.bias"}
  with pytest.raises(ValueError, match=r"missing 1 tensors: model\.visual\.merger\.mlp\.2\.bias"):
    vision_from_hf(target, missing)
  with pytest.raises(
    ValueError, match=r"unexpected tensors: model\.visual\.blocks\.9\.norm1\.weight"
  ):
    vision_from_hf(target, {**source, PREFIX + "blocks.9.norm1.weight": np.ones(64)})
  # A failed load writes nothing.
  for k, v in vision_to_hf(target).items():
    np.testing.assert_array_equal(v, source[k], err_msg=k)


def test_logical_axis_names():
  tower = _new_tower(CONFIGS["win56"])
  specs = nnx.get_partition_spec(nnx.state(tower, nnx.Param))
  assert tuple(specs["patch_embed"].value) == (None, "embed")
  blk = specs["blocks"][0]
  assert tuple(blk["attn"]["qkv"]["kernel"].value) == ("embed", None, "heads")
  assert tuple(blk["attn"]["proj"]["kernel"].value) == ("heads", "embed")
  assert tuple(blk["mlp"]["down_proj"]["kernel"].value) == ("mlp", "embed")
  assert tuple(blk["norm1"]["scale"].value) == (None,)
  assert tuple(specs["merger"]["fc2"]["kernel"].value) == ("mlp", "embed")
  leaves = jax.tree.leaves(
    nnx.state(tower, nnx.Param), is_leaf=lambda x: isinstance(x, nnx.Variable)
  )
  assert all(len(p.get_metadata()["out_sharding"]) == p.value.ndim for p in leaves)


def test_remat_gives_the_same_forward_and_a_gradient():
  cfg = CONFIGS["win56"]
  grid = np.array([[1, 6, 10]])
  inputs = prepare_vision_inputs([_patches(cfg, grid, 3)], [grid], cfg, max_patches=64)
  tower = _new_tower(cfg)
  remat = _new_tower(cfg, vision_to_hf(tower), remat=True)
  np.testing.assert_array_equal(_jit_forward(remat)(inputs)[0], _jit_forward(tower)(inputs)[0])
  graphdef, state = nnx.split(remat)

  def loss(state):
    features, _ = nnx.merge(graphdef, state)(inputs)
    return jnp.sum(features**2)

  grads = jax.jit(jax.grad(loss))(state)
  for g in jax.tree.leaves(grads):
    assert np.isfinite(g).all() and np.abs(g).max() > 0


def test_bfloat16_compute_is_close_to_float32():
  cfg = CONFIGS["win56"]
  grid = np.array([[1, 6, 10]])
  inputs = prepare_vision_inputs([_patches(cfg, grid, 3)], [grid], cfg, max_patches=64)
  tower = _new_tower(cfg)
  bf16 = _new_tower(cfg, vision_to_hf(tower), dtype="bfloat16", param_dtype="bfloat16")
  assert jax.tree.leaves(nnx.state(bf16))[0].dtype == jnp.bfloat16
  f32, _ = _jit_forward(tower)(inputs)
  f16, _ = _jit_forward(bf16)(inputs)
  assert f16.dtype == jnp.bfloat16
  _assert_close(f16.astype(np.float32), f32, tol=5e-2)
