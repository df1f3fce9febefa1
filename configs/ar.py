r"""Stage 1 (ECHO_AR): continued causal-LM training of the VLM on normalized reports.

Presets:
  tiny  the synthetic benchmark on a laptop CPU, model preset "tiny" (minutes).
  7b    Lingshu-7B on a real dataset, bfloat16, FSDP over all devices, remat.

Run (from the repository root):
  python -m echo_jax.main --config=configs/ar.py:tiny
  python -m echo_jax.main --config=configs/ar.py:tiny --config.total_steps=50 --config.workdir=workdir/ar50
  python -m echo_jax.main --config=configs/ar.py:7b --config.data.path=/data/mimic_r2gen \
      --config.data.images_root=/data/mimic/images --config.init.path=/models/Lingshu-7B \
      --config.workdir=gs://bucket/echo/ar_7b
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections


def _common():
  # Config files are loaded by path (not as a package): import the sibling module by path.
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "common.py")
  spec = importlib.util.spec_from_file_location("echo_jax_configs_common", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


PRESETS = ("tiny", "7b")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  common = _common()
  args = common.parse_arg(arg, preset="tiny")
  if args.preset not in PRESETS:
    raise ValueError(
      f"unknown preset {args.preset!r} for configs/ar.py; known: {', '.join(PRESETS)}"
    )
  c = common.base_config()
  c.stage = "ar"
  c.preset = args.preset
  if args.preset == "tiny":
    c.workdir = "workdir/tiny/ar"
    c.total_steps = 600
    c.sample_every = 200  # a few generated validation reports in the log
    c.batch_size = 32
    c.optimizer.learning_rate = 1.5e-3
  else:
    c.workdir = "workdir/7b/ar"
    c.model.preset = "lingshu-7b"
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"  # master weights and Adam moments in float32
    c.model.remat = True
    c.init.path = ""  # a Hugging Face Lingshu-7B directory: set --config.init.path
    c.init.format = "hf"
    c.mesh.data = 1
    c.mesh.fsdp = -1  # shard parameters and optimizer state over every device
    c.mesh.tensor = 1
    c.data.name = "r2gen"
    c.data.path = ""  # the dataset root holding annotation.json: set --config.data.path
    c.data.min_pixels = 256 * 28 * 28  # ECHO's image sizes (ECHO.md §2)
    c.data.max_pixels = 1500 * 1500
    c.data.context_len = 3072  # one image (<= 2,870 vision tokens) plus the prompt
    c.data.response_len = 256
    c.data.max_patches = (
      11480  # one image of max_pixels: 2.25M / 14**2 patches, rounded up to a multiple of 4
    )
    c.data.worker_count = 8
    c.batch_size = 64
    c.grad_accum_steps = 1
    c.total_steps = 10_000
    c.optimizer.learning_rate = 1e-5
    c.optimizer.warmup_steps = 200
    c.optimizer.b2 = 0.999
    c.optimizer.weight_decay = 0.0
    c.log_every = 10
    c.eval_every = 1000
    c.eval_batches = 0
    c.checkpoint_every = 1000
  return c
