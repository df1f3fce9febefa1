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

import ml_collections

from configs import common

PRESETS = ("tiny", "7b")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, source="configs/ar.py", preset="tiny")
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
    common.lingshu_7b(c)
    c.workdir = "workdir/7b/ar"
    c.init.path = ""  # a Hugging Face Lingshu-7B directory: set --config.init.path
    c.init.format = "hf"
  return c
