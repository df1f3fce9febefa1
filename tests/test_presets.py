"""Every preset builds abstractly (no memory) with the parameter count of its HF shapes."""

import functools

import jax
import numpy as np
import pytest
from flax import nnx

from echo_jax.models.config import ModelConfig
from echo_jax.models.presets import get_preset, preset_names
from echo_jax.models.vlm import EchoVLM


def hf_parameter_count(config: ModelConfig) -> int:
  """Parameters of transformers' Qwen2_5_VLForConditionalGeneration with these shapes."""
  t, v = config.text, config.vision
  d, f, kv = t.hidden_size, t.intermediate_size, t.num_key_value_heads * t.head_dim
  layer = (d * d + d) + 2 * (d * kv + kv) + d * d + 3 * d * f + 2 * d
  text = t.vocab_size * d * (1 if t.tie_word_embeddings else 2) + t.num_hidden_layers * layer + d
  w, vf, merged = v.hidden_size, v.intermediate_size, v.hidden_size * v.spatial_merge_size**2
  block = (w * 3 * w + 3 * w) + (w * w + w) + 2 * (w * vf + vf) + (vf * w + w) + 2 * w
  merger = w + (merged * merged + merged) + (merged * v.out_hidden_size + v.out_hidden_size)
  return text + v.patch_dim * w + v.depth * block + merger


@functools.cache
def _abstract_count(config: ModelConfig) -> tuple[int, nnx.State]:
  state = nnx.state(nnx.eval_shape(lambda: EchoVLM(config, rngs=nnx.Rngs(0))), nnx.Param)
  leaves = jax.tree.leaves(state)
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)  # nothing allocated
  return sum(int(np.prod(x.shape)) for x in leaves), state


@pytest.mark.parametrize("name", preset_names())
def test_preset_builds_with_hf_parameter_count(name):
  config = get_preset(name)
  count, state = _abstract_count(config)
  assert count == hf_parameter_count(config)
  dtypes = {x.dtype for x in jax.tree.leaves(state)}
  assert dtypes == {np.dtype(config.param_dtype)}


def test_lingshu_7b_is_qwen2_5_vl_7b():
  """Qwen2.5-VL-7B-Instruct has 8,292,166,656 parameters (676,550,144 in the ViT + merger)."""
  config = get_preset("lingshu-7b")
  count, state = _abstract_count(config)
  assert count == 8_292_166_656
  vision = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state["vision"]))
  assert vision == 676_550_144
  layer0 = state["text"]["layers"][0]
  assert layer0["self_attn"]["k_proj"]["kernel"].shape == (3584, 512)
  assert layer0["mlp"]["down_proj"]["kernel"].shape == (18944, 3584)
  assert state["text"]["lm_head"]["kernel"].shape == (3584, 152064)


def test_bfloat16_params():
  config = get_preset("tiny").replace(param_dtype="bfloat16", dtype="bfloat16")
  _, state = _abstract_count(config)
  assert {x.dtype for x in jax.tree.leaves(state)} == {np.dtype("bfloat16")}
