r"""Stage 0: pretrain the vision tower on what the images show (the analog of a pretrained VLM).

The tower and patch merger learn the synthetic benchmark's targets (the 14 CheXpert
labels plus side, lobe, severity and device facts) with a multi-label sigmoid head on
mean-pooled vision tokens (echo_jax/train/vision_stage.py). The AR stage then starts
from this tower (`--config.init.vision_path=<this workdir>`) with the tower frozen.
Not needed when the model starts from a pretrained Hugging Face VLM.

Presets:
  tiny  the synthetic benchmark on a laptop CPU, model preset "tiny" (a few minutes).

Run (from the repository root):
  python -m echo_jax.main --config=configs/vision.py:tiny
  python -m echo_jax.main --config=configs/ar.py:tiny --config.init.vision_path=workdir/tiny/vision \
      --config.freeze='("vision",)'
"""

from __future__ import annotations

import ml_collections

from configs import common

PRESETS = ("tiny",)


def tiny_vision() -> ml_collections.ConfigDict:
  """The vision stage of the tiny main job (also `configs/vision.py:tiny`)."""
  c = common.base_config()
  c.stage = "vision"
  c.preset = "tiny"
  c.workdir = "workdir/tiny/vision"
  c.data.path = "workdir/tiny/synthetic"
  c.total_steps = 600
  c.batch_size = 32
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 50
  c.optimizer.weight_decay = 1e-4
  c.log_every = 50
  c.eval_every = 200  # validation loss and per-label AUC
  c.eval_batches = 0  # the whole validation split
  c.checkpoint_every = 200
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, source="configs/vision.py", preset="tiny")
  if args.preset not in PRESETS:
    raise ValueError(
      f"unknown preset {args.preset!r} for configs/vision.py; known: {', '.join(PRESETS)}"
    )
  return tiny_vision()
