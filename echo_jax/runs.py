"""What a saved run is: its config, its checkpoint, its tokenizer and how it decodes.

A run is either an echo_jax training workdir (its `config.json` and the newest
checkpoint under `checkpoints/`; a step directory `workdir/checkpoints/<step>` picks
that step) or a Hugging Face Qwen2.5-VL directory (config.json + *.safetensors).
Every command that loads a trained model asks this module, so that the tests below
have one answer each:

  is_hf_dir          is this a Hugging Face directory
  workdir_config     the echo_jax config saved in a workdir ({} when none)
  saved_block_len    the block length a saved config was trained with (top-level
                     `block_len` in newer configs, `rad.block_len` in older ones)
  trained_block_lens that one and the mixed block lengths it also trained with
  find_tokenizer     the first existing tokenizer location
  trained_samplers   the samplers a stage's checkpoint was trained to decode with
  check_sampler      refuse a sampler the checkpoint was not trained for (unless forced)
  load_model         (EchoVLM, ModelConfig) of a run
"""

from __future__ import annotations

import json
import os
from typing import Any

from echo_jax.user_errors import UserError

# Files a checkpoint may never be read from: pickles run code when loaded.
PICKLE_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt")

# The samplers each training stage's checkpoint decodes with as trained. A RAD teacher
# decoded in one step is the "teacher forced to one step" ablation of the paper: it runs
# only when asked for with force.
TRAINED_SAMPLERS = {
  "ar": ("ar",),
  "rad": ("multi_step",),
  "dcd": ("one_step", "multi_step"),
}


def is_hf_dir(path: str) -> bool:
  """A Hugging Face directory: config.json and safetensors weights (never pickles)."""
  if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, "config.json")):
    return False
  return any(
    f.endswith(".safetensors") or f.endswith(".safetensors.index.json") for f in os.listdir(path)
  )


def pickled_weights(path: str) -> list[str]:
  """The files of `path` that hold pickled weights (refused: loading them runs code)."""
  if not os.path.isdir(path):
    return []
  return sorted(f for f in os.listdir(path) if f.endswith(PICKLE_SUFFIXES))


def workdir_config(path: str) -> dict[str, Any]:
  """The echo_jax training config saved in a workdir (config.json), or {}.

  `path` is the workdir or one of its step directories (workdir/checkpoints/<step>)."""
  for where in (path, os.path.dirname(os.path.dirname(path.rstrip("/")))):
    file = os.path.join(where, "config.json")
    if os.path.isfile(file):
      try:
        with open(file) as f:
          config = json.load(f)
      except (OSError, ValueError) as e:
        raise UserError("config.json", where=file, why=str(e)) from None
      if isinstance(config, dict) and isinstance(config.get("model"), dict):
        return config
  return {}


def saved_block_len(config: dict[str, Any] | Any) -> int | None:
  """The block length a saved config was trained with, or None when it names none.

  Newer configs keep it at the top level (`block_len`), older workdirs under
  `rad.block_len`; a ConfigDict or a plain dict."""
  get = config.get if hasattr(config, "get") else (lambda k, d=None: getattr(config, k, d))
  value = get("block_len", None)
  if not value:
    rad = get("rad", None) or {}
    value = rad.get("block_len") if hasattr(rad, "get") else getattr(rad, "block_len", None)
  return int(value) if value else None


def trained_block_lens(config: dict[str, Any] | Any) -> tuple[int, ...]:
  """Every block length a saved config trained with: its block length, then the mixed
  ones (`mixed_block_lens`, top-level or under rad)."""
  get = config.get if hasattr(config, "get") else (lambda k, d=None: getattr(config, k, d))
  rad = get("rad", None) or {}
  mixed = get("mixed_block_lens", None) or (rad.get("mixed_block_lens") if rad else None) or ()
  first = saved_block_len(config)
  lens = ([first] if first else []) + [int(b) for b in mixed]
  return tuple(dict.fromkeys(lens))


def trained_samplers(stage: str | None) -> tuple[str, ...]:
  """The samplers a checkpoint of `stage` was trained for (all three when unknown)."""
  return TRAINED_SAMPLERS.get(stage or "", ("one_step", "multi_step", "ar"))


def check_sampler(stage: str | None, sampler: str, *, force: bool = False) -> None:
  """Refuse decoding a `stage` checkpoint with a sampler it was not trained for."""
  allowed = trained_samplers(stage)
  if sampler in allowed or force:
    return
  raise UserError(
    f"--sampler {sampler}",
    why=f"this {stage} checkpoint was trained to decode with {' or '.join(allowed)}",
    fix=f"use --sampler {allowed[0]}, or pass --force for the ablation",
  )


def find_tokenizer(
  checkpoint: str, saved: dict[str, Any], *, explicit: str = "", data_path: str = ""
) -> str:
  """The first existing tokenizer: `explicit`, CHECKPOINT/tokenizer, CHECKPOINT,
  DATA_PATH/tokenizer, the saved config's data.tokenizer, then data.path/tokenizer."""
  data = saved.get("data") or {}
  candidates = [
    explicit,
    os.path.join(checkpoint, "tokenizer"),
    checkpoint,
    os.path.join(data_path, "tokenizer") if data_path else "",
    data.get("tokenizer", ""),
    os.path.join(data["path"], "tokenizer") if data.get("path") else "",
  ]
  for c in candidates:
    if c and (
      os.path.isfile(os.path.join(c, "tokenizer.json"))
      or (os.path.isfile(c) and c.endswith(".json"))
    ):
      return c
  if explicit:
    raise UserError(f"--tokenizer {explicit}", why="no tokenizer.json there")
  tried = ", ".join(c for c in candidates[1:] if c)
  raise UserError("no tokenizer found", why=f"tried {tried}", fix="pass --tokenizer PATH")


def load_model(
  checkpoint: str,
  saved: dict[str, Any],
  tokenizer: Any,
  *,
  preset: str = "tiny",
  dtype: str = "",
) -> tuple[Any, Any]:
  """(EchoVLM, ModelConfig) of a run; the token ids are the tokenizer's."""
  from echo_jax.models.presets import get_preset

  if is_hf_dir(checkpoint):
    from echo_jax.models.hf_import import load_pretrained

    return load_pretrained(checkpoint, dtype=dtype or "float32", token_ids=tokenizer.ids)
  pickles = pickled_weights(checkpoint)
  if pickles and not os.path.isdir(os.path.join(checkpoint, "checkpoints")):
    raise UserError(
      f"--checkpoint {checkpoint}",
      why=f"holds pickled weights ({', '.join(pickles)}), which are never loaded",
      fix="convert them to safetensors",
    )
  model_cfg = saved.get("model") or {}
  config = get_preset(model_cfg.get("preset", preset))
  dtype = dtype or model_cfg.get("dtype", config.dtype)
  config = config.replace(dtype=dtype, param_dtype=model_cfg.get("param_dtype", dtype))
  return load_workdir_model(checkpoint, config), config


def load_workdir_model(checkpoint: str, config: Any) -> Any:
  """The EchoVLM of a workdir's newest (or a step directory's) checkpoint, on one device."""
  import jax
  from flax import nnx

  from echo_jax.models.vlm import EchoVLM
  from echo_jax.train.checkpoint import restore_model_state

  abstract_model = nnx.eval_shape(lambda: EchoVLM(config, rngs=nnx.Rngs(0)))
  graphdef, abstract = nnx.split(abstract_model)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(
    lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract
  )
  return nnx.merge(graphdef, restore_model_state(checkpoint, abstract))
