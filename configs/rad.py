r"""Stage 2 (ECHO_Base): Response-Asymmetric Diffusion training from the AR model.

The sequence is [context | noisy response | clean response] with the response-asymmetric
mask of echo_jax/models/masks.py. Training starts from the stage-1 weights (`init.path`: an echo_jax AR
workdir, or a Hugging Face directory) with the vision tower and merger frozen.

Presets:
  tiny  the synthetic benchmark on a laptop CPU; random init unless --config.init.path.
  7b    Lingshu-7B shapes, bfloat16, FSDP over all devices, remat, block length 8.

Run (from the repository root):
  python -m echo_jax.main --config=configs/rad.py:tiny --workdir=W --config.total_steps=20
  python -m echo_jax.main --config=configs/ar.py:tiny     # stage 1, then RAD from it:
  python -m echo_jax.main --config=configs/rad.py:tiny --config.init.path=workdir/tiny/ar
  python -m echo_jax.main --config=configs/rad.py:tiny,block_len=4 --config.total_steps=100
  python -m echo_jax.main --config=configs/rad.py:7b --config.init.path=gs://bucket/echo/ar_7b \
      --config.data.path=/data/mimic_r2gen --config.data.images_root=/data/mimic/images
"""

from __future__ import annotations

import ml_collections

from configs import common

PRESETS = ("tiny", "7b")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, source="configs/rad.py", preset="tiny", block_len=8)
  if args.preset not in PRESETS:
    raise ValueError(
      f"unknown preset {args.preset!r} for configs/rad.py; known: {', '.join(PRESETS)}"
    )
  c = common.base_config()
  c.stage = "rad"
  c.preset = args.preset
  c.freeze = ("vision",)  # the paper trains the LLM only: ViT and merger stay frozen
  c.block_len = int(args.block_len)
  c.init.format = "auto"
  if args.preset == "tiny":
    c.workdir = "workdir/tiny/rad"
    # Random init, so the stage runs on its own; the paper's order starts from AR:
    # --config.init.path=workdir/tiny/ar (the main job, configs/dcd.py, does that).
    c.init.path = ""
    c.total_steps = 600
    c.sample_every = 200  # a few generated validation reports in the log
    c.batch_size = 32
    c.optimizer.learning_rate = 1.5e-3
  else:
    common.lingshu_7b(c)
    c.workdir = "workdir/7b/rad"
    c.init.path = "workdir/7b/ar"  # the stage-1 workdir (or a Hugging Face directory)
  return c
