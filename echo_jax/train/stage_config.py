"""The typed settings of one training stage's objective, read once from the ConfigDict.

`StageConfig.from_config(config, model_config)` is the only place that reads the
objective's keys of a `ConfigDict`; the objectives (train/objectives.py) and the DCD
teacher (train/dcd_teacher.py) see this frozen, hashable value and nothing else, so a
key's name and type are checked in one spot and never looked up deep in a closure.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from echo_jax.diffusion.dcd_loss import DCDLossConfig
from echo_jax.diffusion.noise import NoiseConfig
from echo_jax.models.config import ModelConfig, TokenIds


@dataclasses.dataclass(frozen=True)
class DCDSettings:
  """Stage "dcd": the teacher's rollout rule and the student's loss."""

  teacher_path: str  # the RAD teacher: an echo_jax workdir or checkpoint step
  threshold: float  # tau of the teacher's multi-step confidence rule
  top_k: int  # teacher probabilities recorded per position (0 = the full vocabulary)
  student_prefix: bool  # earlier blocks decoded by the student instead of the teacher
  loss: DCDLossConfig
  rad_weight: float  # weight of the RAD loss on the reference reports (0 = off)
  loop_ngram: int  # discard rollouts repeating an n-gram of this length (0 = never)
  loop_max: int  # ... more than this many times


@dataclasses.dataclass(frozen=True)
class StageConfig:
  """What an objective needs: the stage, the sequence layout, the special tokens, noise."""

  stage: str  # "ar" | "rad" | "dcd" (a key of objectives.OBJECTIVES)
  tokens: TokenIds
  block_len: int  # B: tokens per block (rad, dcd; ar ignores it)
  context_len: int  # P
  response_len: int  # R
  mixed_block_lens: tuple[int, ...] = ()  # rad: one B drawn per step from these (() = off)
  noise: NoiseConfig = NoiseConfig()
  dcd: DCDSettings | None = None  # set for stage "dcd" only

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, model_config: ModelConfig) -> StageConfig:
    """The stage settings of a training config (see configs/common.py for each key)."""
    dcd = None
    if config.stage == "dcd":
      d = config.dcd
      dcd = DCDSettings(
        teacher_path=str(d.teacher_path),
        threshold=float(d.threshold),
        top_k=int(d.top_k),
        student_prefix=bool(d.student_prefix),
        loss=DCDLossConfig(
          step_weights=bool(d.step_weights),
          eos_weight=float(d.eos_weight),
          divergence=str(d.divergence),
        ),
        rad_weight=float(d.rad_weight),
        loop_ngram=int(d.loop_ngram),
        loop_max=int(d.loop_max),
      )
    return cls(
      stage=str(config.stage),
      tokens=model_config.tokens,
      block_len=int(config.block_len),
      context_len=int(config.data.context_len),
      response_len=int(config.data.response_len),
      mixed_block_lens=tuple(int(b) for b in config.rad.mixed_block_lens),
      noise=NoiseConfig(
        eps=float(config.rad.eps),
        per_block=bool(config.rad.per_block_noise),
        complementary=bool(config.rad.complementary),
      ),
      dcd=dcd,
    )
