"""Logical axis rules on an 8-device CPU mesh (data=2, fsdp=2, tensor=2)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from echo_jax.models.presets import get_preset
from echo_jax.models.sharding import (
  DEFAULT_LOGICAL_RULES,
  batch_sharding,
  logical_to_mesh,
  param_shardings,
)
from echo_jax.models.vlm import EchoVLM


@pytest.fixture(scope="module")
def mesh():
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices (tests/conftest.py sets 8 CPU devices)")
  return jax.make_mesh(
    (2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3
  )


def test_7b_parameter_specs(mesh):
  abstract = nnx.eval_shape(lambda: EchoVLM(get_preset("lingshu-7b"), rngs=nnx.Rngs(0)))
  shardings = param_shardings(nnx.state(abstract), mesh)
  text, layer = shardings["text"], shardings["text"]["layers"][3]

  def spec(variable):
    assert isinstance(variable.get_value(), jax.sharding.NamedSharding)
    return variable.get_value().spec

  assert spec(text["embed_tokens"]["embedding"]) == P("tensor", "fsdp")  # (vocab, embed)
  assert spec(text["lm_head"]["kernel"]) == P("fsdp", "tensor")  # (embed, vocab)
  assert spec(layer["self_attn"]["q_proj"]["kernel"]) == P("fsdp", "tensor")
  assert spec(layer["self_attn"]["q_proj"]["bias"]) == P("tensor")
  assert spec(layer["self_attn"]["k_proj"]["kernel"]) == P("fsdp", "tensor")  # 512 kv columns
  assert spec(layer["self_attn"]["o_proj"]["kernel"]) == P("tensor", "fsdp")
  assert spec(layer["mlp"]["gate_proj"]["kernel"]) == P("fsdp", "tensor")
  assert spec(layer["mlp"]["down_proj"]["kernel"]) == P("tensor", "fsdp")
  assert spec(layer["input_layernorm"]["weight"]) == P(None)
  assert spec(text["norm"]["weight"]) == P(None)
  # The ViT uses the same names: its width goes to fsdp.
  assert spec(shardings["vision"]["patch_embed"]) == P(None, "fsdp")
  # Every parameter got a sharding, each the same tree structure as the state.
  assert jax.tree.structure(shardings) == jax.tree.structure(nnx.state(abstract))


def test_indivisible_dims_are_replicated(mesh):
  # 7 heads*dims cannot split over tensor=2: replicated, the embed dim still on fsdp.
  assert logical_to_mesh(("embed", "heads"), mesh, shape=(8, 7)) == P("fsdp", None)
  assert logical_to_mesh(("embed", "heads"), mesh, shape=(8, 8)) == P("fsdp", "tensor")
  # A mesh axis is used once per array; rules naming absent mesh axes are skipped.
  rules = (("embed", "tensor"), ("mlp", "tensor"), ("vocab", "model"))
  assert logical_to_mesh(("embed", "mlp"), mesh, rules, (4, 4)) == P("tensor", None)
  assert logical_to_mesh(("vocab",), mesh, rules, (4,)) == P(None)
  assert batch_sharding(mesh, 3).spec == P(("data", "fsdp"), None, None)
  with pytest.raises(ValueError, match="do not match"):
    logical_to_mesh(("embed",), mesh, shape=(4, 4))
  assert ("batch", ("data", "fsdp")) in DEFAULT_LOGICAL_RULES


def test_sharded_tiny_forward_matches_unsharded(mesh):
  """Place the tiny preset with its shardings and run a jitted forward on the mesh."""
  model = EchoVLM(get_preset("tiny"), rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  sharded = jax.device_put(state, param_shardings(state, mesh))
  q_kernel = sharded["text"]["layers"][0]["self_attn"]["q_proj"]["kernel"].get_value()
  assert q_kernel.sharding.spec == P("fsdp", "tensor")
  tokens = jnp.asarray(np.arange(32).reshape(4, 8) % 50 + 8, jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(8)[None, None], (3, 4, 8))
  mask = jnp.broadcast_to(jnp.tril(jnp.ones((8, 8), bool)), (4, 8, 8))

  @jax.jit
  def forward(state, tokens):
    return nnx.merge(graphdef, state)(tokens, positions, mask)

  ref = forward(state, tokens)
  out = forward(sharded, jax.device_put(tokens, batch_sharding(mesh, 2)))
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
