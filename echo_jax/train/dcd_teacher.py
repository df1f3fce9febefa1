"""DCD phase 1: the frozen RAD teacher rolls out on every batch before the student's step.

The rollout is one jitted call on the training mesh (no host sync); its tokens and
stitched targets join the batch under the `rollout_*` keys that the dcd objective
(train/objectives.py) reads in phase 2.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flax import nnx

from echo_jax.data import examples
from echo_jax.diffusion import dcd
from echo_jax.models.config import ModelConfig
from echo_jax.models.decode_model import DecodeContext, EchoDecodeModel
from echo_jax.sampling.stops import RepetitionGuard
from echo_jax.train.stage_config import StageConfig
from echo_jax.train.state import TrainState

PrepareBatch = Callable[[TrainState, nnx.GraphDef, Any], Any]


def rollout_config(stage: StageConfig) -> dcd.RolloutConfig:
  """The teacher rollout of a DCD stage."""
  settings = stage.dcd
  if settings is None:
    raise ValueError("rollout_config needs a dcd stage (StageConfig.dcd is None)")
  guard = None
  if settings.loop_ngram:
    guard = RepetitionGuard(ngram=settings.loop_ngram, max_repeats=settings.loop_max)
  ids = stage.tokens
  return dcd.RolloutConfig(
    eos_id=ids.eos,
    mask_id=ids.mask,
    pad_id=ids.pad,
    block_len=stage.block_len,
    max_new_tokens=stage.response_len,
    threshold=settings.threshold,
    top_k=settings.top_k,
    student_prefix=settings.student_prefix,
    repetition=guard,
  )


def make_prepare_batch(
  stage: StageConfig,
  model_config: ModelConfig,
  teacher_graphdef: nnx.GraphDef,
  teacher_params: nnx.State,
) -> PrepareBatch:
  """`prepare(state, graphdef, batch) -> batch` with the teacher's rollout added."""
  cfg = rollout_config(stage)
  teacher = EchoDecodeModel(teacher_graphdef, model_config)

  def prepare(state: TrainState, graphdef: nnx.GraphDef, batch: Any) -> Any:
    context = DecodeContext(
      tokens_BP=batch["context_tokens"],
      positions_3BP=examples.context_positions_3BP(batch),
      valid_BP=batch["context_valid"].astype(bool),
      vision=batch.get("vision"),
    )
    student = student_params = None
    if cfg.student_prefix:
      student = EchoDecodeModel(graphdef, model_config)
      student_params = nnx.merge_state(state.params, state.frozen)
    out = dcd.teacher_rollout(cfg, teacher, teacher_params, context, student, student_params)
    return dict(
      batch,
      rollout_tokens=out.tokens_BR,
      rollout_targets=out.targets,
      rollout_keep=out.keep_B,
      rollout_forwards=out.teacher_forwards,
    )

  return prepare
