r"""The main job: the whole ECHO pipeline on the synthetic benchmark on a CPU.

Writes the benchmark, trains the vision tower, AR, the RAD teacher (from AR; block
lengths 4 and 8 mixed) and DCD students for B = 4 and 8, then evaluates every model on
the test split: results.json, results.md and an HTML report in the workdir. Stages
already finished are reused. `configs/dcd.py` (no preset) runs the same job.

Presets:
  tiny            (the default) the stages vision, ar, rad, dcd_b4, dcd_b8.
  tiny_ablations  the same plus the DCD ablations of the paper's Table 2 at B = 8:
                  no step weights, no EOS term, reverse KL.

Run (from the repository root):
  python -m echo_jax.main --config=configs/echo.py
  python -m echo_jax.main --config=configs/echo.py:tiny_ablations
  python -m echo_jax.main --config=configs/echo.py --config.workdir=workdir/seed1 --config.seed=1
"""

from __future__ import annotations

import ml_collections

from configs import common
from echo_jax import config_lib

PRESETS = ("tiny", "tiny_ablations")

# The tiny benchmark's sequence layout: 1-2 views of 16 vision tokens each plus the
# prompt fit in 64 context tokens; the longest report of the 2,000 studies has 107
# tokens with its EOS (checked when a stage starts), so 112 = 14 blocks of 8.
TINY_CONTEXT_LEN = 64
TINY_RESPONSE_LEN = 112


def _tiny_stage(stage: str, **changes) -> ml_collections.ConfigDict:
  c = common.base_config()
  c.stage = stage
  c.preset = "tiny"
  c.data.context_len = TINY_CONTEXT_LEN
  c.data.response_len = TINY_RESPONSE_LEN
  c.data.num_studies = 2000
  c.batch_size = 16
  c.log_every = 25
  c.eval_every = 0
  c.checkpoint_every = 100
  c.tensorboard = True
  for key, value in changes.items():
    config_lib.set_key(c, key, value)
  return c


def _dcd_stage(block_len: int, **changes) -> ml_collections.ConfigDict:
  return _tiny_stage(
    "dcd",
    **{
      "block_len": block_len,
      "dcd.teacher_path": "rad",  # a stage name: resolved to <workdir>/rad
      "total_steps": 150,
      "optimizer.learning_rate": 5e-4,
      "optimizer.warmup_steps": 10,
      "freeze": ("vision",),
      **changes,
    },
  )


def pipeline_config(ablations: bool) -> ml_collections.ConfigDict:
  """The main job: stages, in order, and the models evaluated on the test split."""
  c = ml_collections.ConfigDict()
  c.stage = "pipeline"  # runs echo_jax.reproduce instead of one training stage
  c.preset = "tiny_ablations" if ablations else "tiny"
  c.seed = 0  # every stage's seed (init, data order, noise)
  c.workdir = "workdir/tiny"  # one subdirectory per stage, the benchmark and the results
  c.data_path = ""  # the synthetic benchmark ("" = <workdir>/synthetic)

  # Training stages; workdir, data.path, init.path and dcd.teacher_path naming another
  # stage are resolved under the pipeline's workdir. Override with
  # --config.stages.<name>.<key>=value.
  c.stages = ml_collections.ConfigDict()
  # The vision tower learns the images' findings first (configs/vision.py): the
  # analog of the pretrained VLM the paper starts from.
  c.stages.vision = _tiny_stage(
    "vision",
    total_steps=600,
    batch_size=32,
    eval_every=200,
    eval_batches=0,
    checkpoint_every=200,
    **{
      "optimizer.learning_rate": 1e-3,
      "optimizer.warmup_steps": 50,
      "optimizer.weight_decay": 1e-4,
    },
  )
  c.stages.ar = _tiny_stage(
    "ar",
    total_steps=300,
    freeze=("vision",),  # the pretrained tower stays as it is (fine-tuning it loses most)
    **{
      "init.vision_path": "vision",  # a stage name: resolved to <workdir>/vision
      "optimizer.learning_rate": 1.5e-3,
      "optimizer.warmup_steps": 20,
    },
  )
  c.stages.rad = _tiny_stage(
    "rad",
    total_steps=400,
    freeze=("vision",),
    **{
      "init.path": "ar",
      "block_len": 8,
      "rad.mixed_block_lens": (4, 8),
      "optimizer.learning_rate": 1.5e-3,
      "optimizer.warmup_steps": 20,
    },
  )
  c.stages.dcd_b4 = _dcd_stage(4)
  c.stages.dcd_b8 = _dcd_stage(8)
  order = ["vision", "ar", "rad", "dcd_b4", "dcd_b8"]
  if ablations:
    c.stages.dcd_b8_no_step_weights = _dcd_stage(8, **{"dcd.step_weights": False})
    c.stages.dcd_b8_no_eos = _dcd_stage(8, **{"dcd.eos_weight": 0.0})
    c.stages.dcd_b8_reverse_kl = _dcd_stage(8, **{"dcd.divergence": "reverse_kl"})
    order += ["dcd_b8_no_step_weights", "dcd_b8_no_eos", "dcd_b8_reverse_kl"]
  c.order = tuple(order)

  # Evaluation on the test split: (row name, stage, sampler, block length).
  # Samplers: ar (greedy, TPF 1), multi_step (steps = B, tau), one_step (TPF = B).
  c.eval = ml_collections.ConfigDict()
  c.eval.run = True  # False: train the stages only
  c.eval.split = "test"
  c.eval.num_studies = 0  # 0 = the whole split
  c.eval.batch_size = 50
  # lockstep: a batch decodes until its longest report ends. continuous: a row whose
  # report has ended takes the next study (echo_jax/sampling/continuous.py); same tokens.
  c.eval.batching = "lockstep"
  c.eval.threshold = 0.85  # tau of the multi-step rows
  c.eval.n_boot = 200  # bootstrap resamples for the confidence intervals
  rows = [
    ("AR", "ar", "ar", 1),
    ("RAD multi-step B=4", "rad", "multi_step", 4),
    ("RAD multi-step B=8", "rad", "multi_step", 8),
    ("RAD one-step B=4 (no DCD)", "rad", "one_step", 4),
    ("RAD one-step B=8 (no DCD)", "rad", "one_step", 8),
    ("DCD one-step B=4", "dcd_b4", "one_step", 4),
    ("DCD one-step B=8", "dcd_b8", "one_step", 8),
  ]
  if ablations:
    rows += [
      ("DCD B=8 no step weights", "dcd_b8_no_step_weights", "one_step", 8),
      ("DCD B=8 no EOS term", "dcd_b8_no_eos", "one_step", 8),
      ("DCD B=8 reverse KL", "dcd_b8_reverse_kl", "one_step", 8),
    ]
  c.eval.rows = tuple(rows)
  # Controls (echo_jax/eval/controls.py): the AR model decoding every study with the
  # images of another test study, and one constant training report for every study.
  c.eval.deranged_rows = (("AR, images of another study", "ar", "ar", 1),)
  c.eval.constant_report = True
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, source="configs/echo.py", preset="tiny")
  if args.preset not in PRESETS:
    raise ValueError(
      f"unknown preset {args.preset!r} for configs/echo.py; known: {', '.join(PRESETS)}"
    )
  return pipeline_config(ablations=args.preset == "tiny_ablations")
