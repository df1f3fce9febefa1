"""The train state (a pytree) and its sharded initialization.

The model is split once into a static graphdef and three pytrees: trainable
parameters, frozen variables (frozen parameters plus every non-parameter variable)
and the optimizer state over the trainable parameters only. The jitted step merges
them back inside (see train/step.py). Shapes and shardings are known before any
array exists (`nnx.eval_shape` + logical rules), so a 7B model is created directly
sharded and never materialized on one device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from echo_jax.train import mesh as mesh_lib


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer steps taken
  params: nnx.State  # trainable parameters
  frozen: nnx.State  # frozen parameters and non-parameter variables
  opt_state: optax.OptState  # over `params` only

  def model_state(self) -> nnx.State:
    """All variables of the model (what a model checkpoint holds)."""
    return nnx.merge_state(self.params, self.frozen)


def trainable_filter(freeze: Sequence[str]) -> nnx.filterlib.Filter:
  """Params whose path has none of the `freeze` names (e.g. "vision")."""
  if not freeze:
    return nnx.Param
  return nnx.All(nnx.Param, nnx.Not(nnx.Any(*[nnx.PathContains(name) for name in freeze])))


def split_model(
  model: nnx.Module, freeze: Sequence[str]
) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
  """(graphdef, trainable params, everything else)."""
  graphdef, params, frozen = nnx.split(model, trainable_filter(freeze), ...)
  return graphdef, params, frozen


def abstract_model(model_fn: Callable[[], nnx.Module]) -> nnx.Module:
  """The model with ShapeDtypeStruct leaves; no memory is allocated."""
  with nnx.use_eager_sharding(False):
    return nnx.eval_shape(model_fn)


def _path_shardings(
  abstract_tree: Any, reference: dict[tuple, NamedSharding], default: NamedSharding
) -> Any:
  """Shard each leaf like the reference leaf whose key path ends its own, else `default`.

  Optimizer moments live at paths like `[1][0].mu['layers'][0]['kernel']`; their
  parameter lives at `['layers'][0]['kernel']`, so a suffix match recovers the sharding.
  """
  by_len = sorted({len(k) for k in reference}, reverse=True)

  def pick(path, leaf):
    for n in by_len:
      if n <= len(path) and (sharding := reference.get(tuple(path[len(path) - n :]))) is not None:
        if getattr(leaf, "ndim", 0) == len(sharding.spec) or len(sharding.spec) == 0:
          return sharding
    return default

  return jax.tree_util.tree_map_with_path(pick, abstract_tree)


def state_shardings(
  model_fn: Callable[[], nnx.Module],
  tx: optax.GradientTransformation,
  mesh: Mesh,
  rules: Sequence[tuple[str, Any]],
  freeze: Sequence[str] = (),
) -> tuple[nnx.GraphDef, TrainState, TrainState]:
  """(graphdef, abstract TrainState, TrainState of NamedShardings) without allocating."""
  graphdef, abs_params, abs_frozen = split_model(abstract_model(model_fn), freeze)
  params_sh = mesh_lib.variable_shardings(abs_params, mesh, rules)
  frozen_sh = mesh_lib.variable_shardings(abs_frozen, mesh, rules)
  abs_opt = jax.eval_shape(tx.init, abs_params)
  flat = jax.tree_util.tree_flatten_with_path(params_sh)[0]
  reference = {tuple(path): s for path, s in flat}
  replicated = NamedSharding(mesh, PartitionSpec())
  opt_sh = _path_shardings(abs_opt, reference, replicated)
  abstract = TrainState(
    step=jax.ShapeDtypeStruct((), jnp.int32),
    params=abs_params,
    frozen=abs_frozen,
    opt_state=abs_opt,
  )
  shardings = TrainState(step=replicated, params=params_sh, frozen=frozen_sh, opt_state=opt_sh)
  return graphdef, abstract, shardings


def with_shardings(abstract: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying shardings (restore targets)."""
  return jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
  )


def create_train_state(
  model_fn: Callable[[], nnx.Module],
  tx: optax.GradientTransformation,
  mesh: Mesh,
  rules: Sequence[tuple[str, Any]],
  freeze: Sequence[str] = (),
  model_state: nnx.State | None = None,
) -> tuple[nnx.GraphDef, TrainState, TrainState]:
  """A sharded TrainState: random init from `model_fn`, or from `model_state` if given.

  `model_state` is a full model state (e.g. restored from a previous stage) already
  laid out on the mesh; it is split by `freeze` and the optimizer is initialized on it.
  Returns (graphdef, state, shardings).
  """
  graphdef, _, shardings = state_shardings(model_fn, tx, mesh, rules, freeze)

  if model_state is None:

    def init() -> TrainState:
      with nnx.use_eager_sharding(False):
        model = model_fn()
      _, params, frozen = split_model(model, freeze)
      return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, frozen=frozen, opt_state=tx.init(params)
      )

    with mesh_lib.use_mesh(mesh):
      state = jax.jit(init, out_shardings=shardings)()
    return graphdef, state, shardings

  with nnx.use_eager_sharding(False):
    full_graphdef = nnx.graphdef(abstract_model(model_fn))
    model = nnx.merge(full_graphdef, model_state)
  _, params, frozen = split_model(model, freeze)
  params = jax.device_put(params, shardings.params)
  frozen = jax.device_put(frozen, shardings.frozen)
  with mesh_lib.use_mesh(mesh):
    opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
  step = jax.device_put(jnp.zeros((), jnp.int32), shardings.step)
  return (
    graphdef,
    TrainState(step=step, params=params, frozen=frozen, opt_state=opt_state),
    shardings,
  )
