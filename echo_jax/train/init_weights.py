"""A stage's initial weights: random, an earlier echo_jax stage, or a Hugging Face model.

`init.path` is an echo_jax workdir (its newest `model` item, read straight into this
run's shardings) or a Hugging Face directory (`echo_jax.load_pretrained`, whose config
then replaces the preset's); empty = random init.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
from flax import nnx
from jax.sharding import Mesh

from echo_jax.models.config import ModelConfig
from echo_jax.models.hf_import import load_pretrained
from echo_jax.train import checkpoint as checkpoint_lib


def _is_hf_dir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, "config.json")) and any(
    f.endswith(".safetensors") for f in os.listdir(path)
  )


def init_format(config: ml_collections.ConfigDict) -> str:
  """ "hf" or "echo" for a non-empty init.path ("auto" decides by the directory's files)."""
  if config.init.format != "auto":
    return config.init.format
  return "hf" if os.path.isdir(config.init.path) and _is_hf_dir(config.init.path) else "echo"


def starts_from_hf(config: ml_collections.ConfigDict) -> bool:
  """Whether the run starts from a Hugging Face directory (its tokenizer is then the default)."""
  return bool(config.init.path) and init_format(config) == "hf"


def load_hf_start(config: ml_collections.ConfigDict) -> tuple[ModelConfig, nnx.State]:
  """The Hugging Face model of `init.path`: its ModelConfig (with this run's remat) and state."""
  model, hf_config = load_pretrained(
    config.init.path, dtype=config.model.dtype, param_dtype=config.model.param_dtype
  )
  return hf_config.replace(remat=bool(config.model.remat)), nnx.state(model)


def load_echo_start(
  config: ml_collections.ConfigDict,
  model_fn: Callable[[], nnx.Module],
  mesh: Mesh,
  rules: Sequence[tuple[str, Any]],
) -> nnx.State | None:
  """The previous echo_jax stage's whole model state in this run's shardings (None: none)."""
  if not config.init.path or init_format(config) != "echo":
    return None
  return checkpoint_lib.restore_sharded_model_state(config.init.path, model_fn, mesh, rules)
