r"""Stage 3 (ECHO): Distribution-Corrected Distillation into a one-step-per-block student.

Presets:
  tiny            (the default) the main job, configs/echo.py: the whole ECHO pipeline
                  (vision, ar, rad, dcd) on the synthetic benchmark on a CPU.
  tiny_ablations  configs/echo.py:tiny_ablations (the DCD ablations of Table 2 added).
  7b              one DCD stage at Lingshu-7B size from a RAD teacher workdir.

Run (from the repository root):
  python -m echo_jax.main --config=configs/dcd.py                 # the main job
  python -m echo_jax.main --config=configs/dcd.py:tiny_ablations
  python -m echo_jax.main --config=configs/dcd.py --config.workdir=workdir/seed1 --config.seed=1
  python -m echo_jax.main --config=configs/dcd.py:7b --config.dcd.teacher_path=gs://b/echo/rad_7b \
      --config.data.path=/data/mimic_r2gen --config.data.images_root=/data/mimic/images
"""

from __future__ import annotations

import ml_collections

from configs import common, echo, rad

PRESETS = ("tiny", "tiny_ablations", "7b")


def seven_b_config() -> ml_collections.ConfigDict:
  """One DCD stage at Lingshu-7B size from a RAD (ECHO_Base) teacher workdir."""
  c = rad.get_config("7b")
  c.stage = "dcd"
  c.preset = "7b"
  c.workdir = "workdir/7b/dcd_b8"
  c.init.path = ""  # "" = start from the teacher (Algorithm 1)
  c.dcd.teacher_path = "workdir/7b/rad"  # the RAD stage's workdir: set --config.dcd.teacher_path
  c.dcd.top_k = 64  # a 152k-vocabulary distribution per token would not fit: keep the top 64
  c.total_steps = 2000
  c.optimizer.learning_rate = 5e-6
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, source="configs/dcd.py", preset="tiny")
  if args.preset not in PRESETS:
    raise ValueError(
      f"unknown preset {args.preset!r} for configs/dcd.py; known: {', '.join(PRESETS)}"
    )
  if args.preset == "7b":
    return seven_b_config()
  return echo.get_config(args.preset)
