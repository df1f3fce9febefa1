"""Training configs: `--config=configs/rad.py:tiny` presets, overrides and validation.

A config file exposes `get_config(arg)`, where `arg` is the text after the colon
("tiny", "7b,block_len=4"); see configs/common.py for every key. On the command line
`--config.key=value` overrides a key (ml_collections config_flags). `validate` checks a
config against the machine before any compute and reports every problem at once.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence

import ml_collections
from etils import epath
from ml_collections import config_flags

from echo_jax.models import presets
from echo_jax.models.config import ModelConfig

STAGES = ("vision", "ar", "rad", "dcd")
DTYPES = ("float32", "bfloat16")
INIT_FORMATS = ("auto", "echo", "hf")
MESH_AXES = ("data", "fsdp", "tensor")
# The repository root: holds the `configs` package the config files import themselves from.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# "tfds": a dataset built by echo_jax/data/tfds_builder.py, data.path its DATA_DIR/echo_cxr/CONFIG/1.0.0.
DATASETS = (
  "synthetic", "r2gen", "mimic-cxr-jpg", "chexpert-plus", "rexrank", "rexgradient", "tfds",
)  # fmt: skip


class ConfigError(ValueError):
  """One or more config keys are wrong; the message lists all of them."""

  def __init__(self, problems: Sequence[str]):
    self.problems = list(problems)
    lines = "\n".join(f"  - {p}" for p in self.problems)
    super().__init__(f"{len(self.problems)} config error(s):\n{lines}")


def define_config_flag(name: str = "config"):
  """`--config=path.py:arg` plus `--config.key=value` overrides, as an absl flag."""
  _ensure_configs_importable()  # absl executes the config file by path
  return config_flags.DEFINE_config_file(
    name, None, "Training config file and preset: configs/<stage>.py:<preset>.", lock_config=True
  )


def _ensure_configs_importable() -> None:
  # `from configs import common` inside a config file needs the repository root on the path
  # (it is there under `python -m` from the root; not when run from elsewhere).
  if (
    os.path.isfile(os.path.join(REPO_ROOT, "configs", "__init__.py")) and REPO_ROOT not in sys.path
  ):
    sys.path.append(REPO_ROOT)


def load(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """The config of "path/to/file.py[:arg]" with "key=value" overrides applied (no flags needed).

  A file of the repository's `configs` package is imported as `configs.<name>`; a user's
  config file elsewhere is executed by path (it may import `configs` too).
  """
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(
      f"config file {path!r} does not exist (expected e.g. configs/rad.py:tiny)"
    )
  _ensure_configs_importable()
  here = os.path.dirname(os.path.abspath(path))
  if here == os.path.join(REPO_ROOT, "configs"):
    module = importlib.import_module(f"configs.{os.path.splitext(os.path.basename(path))[0]}")
  else:
    module_spec = importlib.util.spec_from_file_location("echo_jax_user_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  apply_overrides(config, overrides)
  return config


def set_key(config: ml_collections.ConfigDict, key: str, value) -> None:
  """Set the existing dotted key "a.b.c" of `config`; KeyError naming the key if it is not one.

  An int given for a float key becomes a float and a list for a tuple key a tuple.
  """
  *parents, leaf = key.strip().split(".")
  node = config
  for i, p in enumerate(parents):
    if not isinstance(node, ml_collections.ConfigDict) or p not in node:
      raise KeyError(f"config has no key {'.'.join(parents[: i + 1])!r}")
    node = node[p]
  if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
    raise KeyError(f"config has no key {key.strip()!r}")
  old = node[leaf]
  if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if isinstance(old, tuple) and isinstance(value, list):
    value = tuple(value)
  node[leaf] = value


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
  """Apply "a.b=value" strings in place; values are Python literals, else plain strings."""
  for item in overrides:
    key, sep, text = item.partition("=")
    if not sep:
      raise ValueError(f"override {item!r} is not of the form key=value")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    try:
      set_key(config, key, value)
    except KeyError as e:
      raise KeyError(f"override {item!r}: {e.args[0]}") from None


def model_config(config: ml_collections.ConfigDict) -> ModelConfig:
  """The ModelConfig of the run: the named preset with the config's dtype and remat."""
  return presets.get_preset(config.model.preset).replace(
    dtype=config.model.dtype, param_dtype=config.model.param_dtype, remat=bool(config.model.remat)
  )


def resolve_mesh_shape(mesh: ml_collections.ConfigDict, num_devices: int) -> tuple[int, int, int]:
  """(data, fsdp, tensor) with a -1 axis replaced by what is left; raises ConfigError."""
  problems = _mesh_problems(mesh, num_devices)
  if problems:
    raise ConfigError(problems)
  sizes = [int(mesh[a]) for a in MESH_AXES]
  if -1 in sizes:
    known = -_prod(sizes)  # product of the others (the -1 makes it negative)
    sizes[sizes.index(-1)] = num_devices // known
  return tuple(sizes)


def _prod(xs: Sequence[int]) -> int:
  out = 1
  for x in xs:
    out *= x
  return out


def _mesh_problems(mesh: ml_collections.ConfigDict, num_devices: int) -> list[str]:
  sizes = {a: mesh.get(a) for a in MESH_AXES}
  bad = {a: s for a, s in sizes.items() if not isinstance(s, int) or (s < 1 and s != -1)}
  if bad:
    return [f"mesh sizes {bad} must be positive integers or -1"]
  wild = [a for a, s in sizes.items() if s == -1]
  known = _prod([s for s in sizes.values() if s != -1])
  shape = "x".join(f"{a}={s}" for a, s in sizes.items())
  if len(wild) > 1:
    return [f"mesh {shape}: only one axis may be -1, got {wild}"]
  if wild and num_devices % known:
    return [
      f"mesh {shape}: {num_devices} devices are not divisible by the fixed axes' product {known}"
    ]
  if not wild and known != num_devices:
    return [
      f"mesh {shape} has {known} devices but {num_devices} are available; set one axis to -1 or make the product {num_devices}"
    ]
  return []


def _has_checkpoint(workdir: str) -> bool:
  path = epath.Path(workdir) / "checkpoints"
  return path.exists() and any(p.name.isdigit() for p in path.iterdir())


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Raise ConfigError listing every problem of `config` on a machine with `num_devices`."""
  p: list[str] = []
  c = config
  if c.stage not in STAGES:
    p.append(f"stage={c.stage!r} is not one of {STAGES}")
  if c.model.preset not in presets.preset_names():
    p.append(
      f"model.preset={c.model.preset!r} is unknown; known: {', '.join(presets.preset_names())}"
    )
  for key in ("dtype", "param_dtype"):
    if c.model[key] not in DTYPES:
      p.append(f"model.{key}={c.model[key]!r} must be one of {DTYPES}")
  if c.init.format not in INIT_FORMATS:
    p.append(f"init.format={c.init.format!r} must be one of {INIT_FORMATS}")
  if c.init.path and not epath.Path(c.init.path).exists() and not _has_checkpoint(c.workdir):
    p.append(
      f"init.path={c.init.path!r} does not exist: train the previous stage first, fix the path, or set --config.init.path='' for a random init"
    )
  if c.init.get("vision_path") and not epath.Path(c.init.vision_path).exists():
    p.append(
      f"init.vision_path={c.init.vision_path!r} does not exist: train the vision stage first or set --config.init.vision_path=''"
    )
  if c.init.get("vision_path") and c.stage == "vision":
    p.append("init.vision_path is for the stages after the vision stage; use init.path here")
  if c.init.format == "hf" and not c.init.path:
    p.append(
      "init.format='hf' needs init.path: the Hugging Face model directory (config.json + *.safetensors)"
    )
  if not c.workdir:
    p.append("workdir is empty: set --config.workdir to a directory for checkpoints and logs")

  p.extend(_mesh_problems(c.mesh, num_devices))
  if not p or not any(s.startswith("mesh") for s in p):
    data, fsdp, _ = resolve_mesh_shape(c.mesh, num_devices)
    shards = data * fsdp
    if c.batch_size < 1 or c.batch_size % shards:
      p.append(f"batch_size={c.batch_size} must be a positive multiple of mesh data*fsdp={shards}")
    elif c.grad_accum_steps >= 1 and (
      c.batch_size % c.grad_accum_steps or (c.batch_size // c.grad_accum_steps) % shards
    ):
      p.append(
        f"batch_size={c.batch_size} / grad_accum_steps={c.grad_accum_steps} must be a whole microbatch divisible by data*fsdp={shards}"
      )
  if c.grad_accum_steps < 1:
    p.append(f"grad_accum_steps={c.grad_accum_steps} must be >= 1")

  block = c.block_len
  blocks = [block] + [b for b in c.rad.mixed_block_lens if b != block]
  if block < 1 or any(b < 1 for b in blocks):
    p.append(f"block_len={block} and rad.mixed_block_lens must be >= 1")
  elif c.stage in ("rad", "dcd"):
    key = "block_len"
    for b in blocks:
      if b != block:
        key = "rad.mixed_block_lens"
      if c.data.response_len % b:
        p.append(
          f"{key}={b} does not divide data.response_len={c.data.response_len}: pad the response to a multiple of the block length"
        )
      if c.data.context_len % b:
        p.append(
          f"{key}={b} does not divide data.context_len={c.data.context_len}: the context is left-padded to a multiple of the block length"
        )
  if c.stage == "dcd":
    d = c.dcd
    if not d.teacher_path:
      p.append("dcd.teacher_path is empty: set it to the RAD teacher's workdir")
    elif not epath.Path(d.teacher_path).exists():
      p.append(
        f"dcd.teacher_path={d.teacher_path!r} does not exist: train the RAD teacher first or fix the path"
      )
    if not 0.0 < d.threshold <= 1.0:
      p.append(f"dcd.threshold={d.threshold} must be in (0, 1]")
    if d.top_k < 0:
      p.append(f"dcd.top_k={d.top_k} must be >= 0 (0 = full distribution)")
    if d.divergence not in ("forward_kl", "reverse_kl"):
      p.append(f"dcd.divergence={d.divergence!r} must be 'forward_kl' or 'reverse_kl'")
    for key in ("eos_weight", "rad_weight", "loop_ngram"):
      if d[key] < 0:
        p.append(f"dcd.{key}={d[key]} must be >= 0")
    if d.loop_ngram and d.loop_max < 1:
      p.append(f"dcd.loop_max={d.loop_max} must be >= 1")
  if not 0.0 < c.rad.eps < 1.0:
    p.append(f"rad.eps={c.rad.eps} must be in (0, 1)")
  elif c.rad.complementary and not c.rad.eps < 0.5:
    p.append(f"rad.eps={c.rad.eps} must be < 0.5 with rad.complementary")
  for key in ("context_len", "response_len", "max_patches", "num_studies", "min_pixels"):
    if c.data[key] < 1:
      p.append(f"data.{key}={c.data[key]} must be >= 1")
  if c.data.worker_count < 0:
    p.append(f"data.worker_count={c.data.worker_count} must be >= 0")
  if c.data.name not in DATASETS:
    p.append(f"data.name={c.data.name!r} is unknown; known: {', '.join(DATASETS)}")
  if not c.data.path:
    p.append(f"data.path is empty: set it to the {c.data.name} dataset root")
  if c.stage == "vision" and c.data.name == "tfds":
    # Its targets are the synthetic finding sets or a reader's CheXpert labels; an echo_cxr
    # build stores neither.
    p.append(
      "data.name='tfds' cannot train the vision stage: an echo_cxr build stores no labels; "
      "pretrain the tower on data.name=synthetic and pass init.vision_path to the report stage"
    )
  if c.data.max_pixels < c.data.min_pixels:
    p.append(f"data.max_pixels={c.data.max_pixels} must be >= data.min_pixels={c.data.min_pixels}")
  if c.data.max_patches % 4:
    p.append(f"data.max_patches={c.data.max_patches} must be a multiple of 4 (2x2 patch merging)")

  o = c.optimizer
  if c.total_steps < 1:
    p.append(f"total_steps={c.total_steps} must be >= 1")
  if not o.learning_rate > 0:
    p.append(f"optimizer.learning_rate={o.learning_rate} must be > 0")
  if not 0 <= o.warmup_steps <= c.total_steps:
    p.append(f"optimizer.warmup_steps={o.warmup_steps} must be in [0, total_steps={c.total_steps}]")
  if not 0.0 <= o.end_lr_ratio <= 1.0:
    p.append(f"optimizer.end_lr_ratio={o.end_lr_ratio} must be in [0, 1]")
  for key in ("b1", "b2"):
    if not 0.0 <= o[key] < 1.0:
      p.append(f"optimizer.{key}={o[key]} must be in [0, 1)")
  for key in ("eps", "weight_decay", "grad_clip"):
    if o[key] < 0:
      p.append(f"optimizer.{key}={o[key]} must be >= 0")
  for key in ("log_every", "checkpoint_every", "keep_checkpoints"):
    if c[key] < 1:
      p.append(f"{key}={c[key]} must be >= 1")
  for key in ("eval_every", "eval_batches", "sample_every", "num_samples"):
    if c[key] < 0:
      p.append(f"{key}={c[key]} must be >= 0")
  if p:
    raise ConfigError(p)
