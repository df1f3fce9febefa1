"""The device mesh (data, fsdp, tensor) and the shardings of parameters and batches.

Parameters carry logical axis names ("embed", "mlp", "heads", "kv", "vocab"); rules
map them to mesh axes. The batch axis is split over ("data", "fsdp"), so FSDP is data
parallelism whose parameters are additionally sharded over the "fsdp" axis.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
from jax.sharding import Mesh

from echo_jax import config_lib
from echo_jax.models import sharding as model_sharding

AXES = config_lib.MESH_AXES  # ("data", "fsdp", "tensor")

DEFAULT_RULES = model_sharding.DEFAULT_LOGICAL_RULES  # embed->fsdp, mlp/heads/kv/vocab->tensor


def make_mesh(
  mesh_config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None
) -> Mesh:
  """A (data, fsdp, tensor) mesh over `devices` (default: all), every axis Auto-sharded."""
  devices = list(jax.devices() if devices is None else devices)
  shape = config_lib.resolve_mesh_shape(mesh_config, len(devices))
  # Auto axes: shardings are hints that XLA propagates (the behaviour the code is written for);
  # newer jax defaults to Explicit axes, so say it.
  axis_types = (jax.sharding.AxisType.Auto,) * len(AXES)
  return jax.make_mesh(shape, AXES, axis_types=axis_types, devices=devices)


def use_mesh(mesh: Mesh) -> contextlib.AbstractContextManager:
  """Context manager that makes `mesh` the current mesh (jax.set_mesh, or older names)."""
  if hasattr(jax, "set_mesh"):
    return jax.set_mesh(mesh)
  if hasattr(jax.sharding, "use_mesh"):
    return jax.sharding.use_mesh(mesh)
  return mesh  # a Mesh is itself a context manager on old jax


def logical_rules(config: ml_collections.ConfigDict | None = None) -> tuple[tuple[str, Any], ...]:
  """The config's `logical_rules` if set, else the model's default rules."""
  if config is not None and config.get("logical_rules"):
    return tuple((str(k), tuple(v) if isinstance(v, list) else v) for k, v in config.logical_rules)
  return tuple(DEFAULT_RULES)


def variable_shardings(abstract_state: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> Any:
  """NamedShardings for an (abstract) nnx.State whose Variables carry logical axis names.

  The model's rule semantics (echo_jax.models.sharding): unmapped names replicate, a
  dimension the mesh axes do not divide replicates, a mesh axis shards one dimension.
  """
  return model_sharding.param_shardings(abstract_state, mesh, tuple(rules))
