"""Logical axis names -> mesh axes, for parameters and activations.

Parameters are created with logical names (decoder.py, vision.py): "embed" (model
width), "mlp" (MLP hidden), "heads" (query heads * head_dim), "kv" (key/value heads *
head_dim), "vocab"; None means replicated. Rules map each name to mesh axes of a
`jax.make_mesh` mesh with axes ("data", "fsdp", "tensor"):

    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"),
                         axis_types=(jax.sharding.AxisType.Auto,) * 3)
    abstract = nnx.eval_shape(lambda: EchoVLM(config, rngs=nnx.Rngs(0)))
    shardings = param_shardings(nnx.state(abstract), mesh)

Rules are tried in order, like flax.linen's `logical_to_mesh_axes`: a dimension takes
the mesh axes of the first rule naming it whose axes are not already used by another
dimension of the same array. Two deviations, both so every preset shards on every mesh:
mesh axes a mesh lacks are dropped, and a dimension whose size is not divisible by the
product of its mesh axis sizes is replicated instead (e.g. the 14 heads of the `small`
preset on tensor=4, or a 3-channel patch dimension).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

LogicalRules = Sequence[tuple[str, str | tuple[str, ...] | None]]

DEFAULT_LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
  ("batch", ("data", "fsdp")),
  ("embed", "fsdp"),
  ("mlp", "tensor"),
  ("heads", "tensor"),
  ("kv", "tensor"),
  ("vocab", "tensor"),
)

# Metadata keys under which flax versions keep a Variable's logical names.
_NAME_KEYS = ("out_sharding", "sharding_names", "sharding")


def logical_names(variable: nnx.Variable) -> tuple[str | None, ...] | None:
  """The logical axis names a parameter was created with, or None if it has none."""
  metadata = variable.get_metadata()
  for key in _NAME_KEYS:
    names = metadata.get(key)
    if names:
      return tuple(names)
  return None


def logical_to_mesh(
  names: Sequence[str | None] | None,
  mesh: Mesh,
  rules: LogicalRules = DEFAULT_LOGICAL_RULES,
  shape: Sequence[int] | None = None,
) -> PartitionSpec:
  """PartitionSpec for an array with these logical dim names (see the module docstring)."""
  if not names:
    return PartitionSpec()
  if shape is not None and len(shape) != len(names):
    raise ValueError(f"logical names {tuple(names)} do not match shape {tuple(shape)}")
  used: set[str] = set()
  spec: list[str | tuple[str, ...] | None] = [None] * len(names)
  done = [False] * len(names)
  for rule_name, rule_axes in rules:
    for dim, name in enumerate(names):
      if done[dim] or name != rule_name:
        continue
      axes = (rule_axes,) if isinstance(rule_axes, str) else tuple(rule_axes or ())
      axes = tuple(a for a in axes if a in mesh.shape)
      if any(a in used for a in axes):
        continue
      done[dim] = True
      size = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
      if not axes or (shape is not None and shape[dim] % size):
        continue  # replicate this dimension
      used.update(axes)
      spec[dim] = axes[0] if len(axes) == 1 else axes
  return PartitionSpec(*spec)


def param_shardings(
  abstract_state: nnx.State, mesh: Mesh, rules: LogicalRules = DEFAULT_LOGICAL_RULES
):
  """A tree like `abstract_state` holding a NamedSharding per parameter.

  Works on an abstract state (`nnx.state(nnx.eval_shape(...))`) or a real one; the
  result fits `jax.jit(..., out_shardings=...)` and `jax.device_put(state, ...)`.
  """

  def one(variable):
    if not isinstance(variable, nnx.Variable):
      return NamedSharding(mesh, PartitionSpec())
    value = variable.get_value()
    spec = logical_to_mesh(logical_names(variable), mesh, rules, getattr(value, "shape", None))
    return variable.replace(NamedSharding(mesh, spec))

  return jax.tree.map(one, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(
  mesh: Mesh,
  ndim: int = 1,
  rules: LogicalRules = DEFAULT_LOGICAL_RULES,
  *,
  batch_dim: int = 0,
  batch_size: int | None = None,
) -> NamedSharding:
  """The one sharding of batch arrays: dim `batch_dim` on the "batch" axes (data, fsdp
  by the default rules), the rest replicated. With `batch_size`, a batch the axes do
  not divide is replicated instead of refused."""
  names: list[str | None] = [None] * ndim
  names[batch_dim] = "batch"
  shape = None
  if batch_size is not None:
    shape = [batch_size if d == batch_dim else 1 for d in range(ndim)]
  return NamedSharding(mesh, logical_to_mesh(names, mesh, rules, shape))
