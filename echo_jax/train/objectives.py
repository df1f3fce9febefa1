"""The training objectives, one top-level function per stage, and their registry.

  ar   causal LM over [context | response], next-token loss on report + EOS
  rad  [context | noisy response | clean response] with the RAD mask, masked-token
       loss weighted by 1/t (docs/METHOD.md); noise drawn from the step's key
  dcd  the student's one-step blocks against the frozen teacher's rollout targets
       (the batch carries them: train/dcd_teacher.py adds them before the step)

An objective is `loss(stage, model, batch, key) -> (loss, metrics)` over a
`StageConfig`; `make_loss_fn(stage)` binds the stage and gives the `step.LossFn`. A new
stage objective is one such function plus one `OBJECTIVES` entry.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from echo_jax.data import examples
from echo_jax.diffusion import ar, dcd_loss, rad
from echo_jax.diffusion.packed import PackedBatch
from echo_jax.train import step as step_lib
from echo_jax.train.stage_config import StageConfig

Batch = dict[str, Any]
Objective = Callable[
  [StageConfig, nnx.Module, Batch, jax.Array], tuple[jax.Array, step_lib.Metrics]
]


def _unpack(batch: Batch) -> tuple[jax.Array, ...]:
  return (
    batch["context_tokens"],
    examples.context_positions_3BP(batch),
    batch["context_valid"].astype(bool),
    batch["response_tokens"],
    batch["next_position"],
  )


def _without_padding(packed: PackedBatch, batch: Batch) -> PackedBatch:
  # Eval batches are padded with copies marked example_valid=False: they weigh nothing.
  if "example_valid" not in batch:
    return packed
  keep_B = batch["example_valid"].astype(jnp.float32)
  return packed.replace(
    weights_BL=packed.weights_BL * keep_B[:, None], num_tokens_B=packed.num_tokens_B * keep_B
  )


def _target_logits(model: nnx.Module, packed: PackedBatch, batch: Batch) -> jax.Array:
  # Logits of the target span only: the rest of the sequence needs none.
  return model(
    packed.tokens_BL,
    packed.positions_3BL,
    packed.mask_BLL,
    batch.get("vision"),
    logits_span=(packed.target_start, packed.target_stop),
  )


def _finish(model, packed, batch, loss_of) -> tuple[jax.Array, step_lib.Metrics]:
  packed = _without_padding(packed, batch)
  out = dict(loss_of(_target_logits(model, packed, batch), packed))
  return out.pop("loss"), out


def ar_objective(
  stage: StageConfig, model: nnx.Module, batch: Batch, key: jax.Array
) -> tuple[jax.Array, step_lib.Metrics]:
  """Next-token cross-entropy on the report and its EOS (the causal objective)."""
  del key  # the causal objective draws no noise
  tokens, positions, valid, response, next_pos = _unpack(batch)
  report_mask = rad.report_mask(response, stage.tokens.eos)
  packed = ar.pack_ar(tokens, positions, valid, response, report_mask, next_pos)
  return _finish(model, packed, batch, ar.ar_loss)


def _rad_loss_at(
  stage: StageConfig, block_len: int, model: nnx.Module, batch: Batch, key: jax.Array
) -> tuple[jax.Array, step_lib.Metrics]:
  tokens, positions, valid, response, next_pos = _unpack(batch)
  response_valid = rad.response_valid_mask(response, stage.tokens.eos, block_len)
  packed = rad.pack_rad(
    tokens,
    positions,
    valid,
    response,
    response_valid,
    next_pos,
    key,
    block_len=block_len,
    mask_id=stage.tokens.mask,
    noise=stage.noise,
  )
  return _finish(model, packed, batch, rad.rad_loss)


def rad_objective(
  stage: StageConfig, model: nnx.Module, batch: Batch, key: jax.Array
) -> tuple[jax.Array, step_lib.Metrics]:
  """The RAD masked-token loss at the stage's block length (or one drawn per step)."""
  mixed = stage.mixed_block_lens
  if not mixed:
    return _rad_loss_at(stage, stage.block_len, model, batch, key)
  # One block length per step, drawn from the step's key: a single teacher that
  # decodes with every block length its students will use.
  key, pick = jax.random.split(key)
  graphdef, state = nnx.split(model)  # lax.switch takes pure functions of arrays

  def branch(block):
    return lambda st, b, k: _rad_loss_at(stage, block, nnx.merge(graphdef, st), b, k)

  index = jax.random.randint(pick, (), 0, len(mixed))
  return jax.lax.switch(index, [branch(block) for block in mixed], state, batch, key)


def dcd_objective(
  stage: StageConfig, model: nnx.Module, batch: Batch, key: jax.Array
) -> tuple[jax.Array, step_lib.Metrics]:
  """The student's divergence from the teacher's rollout targets (plus optional RAD)."""
  settings = stage.dcd
  if settings is None:
    raise ValueError("the dcd objective needs StageConfig.dcd (build it with stage='dcd')")
  ids = stage.tokens
  tokens, positions, valid, _, next_pos = _unpack(batch)
  targets = batch["rollout_targets"]
  if "example_valid" in batch:
    targets = targets.replace(valid_BR=targets.valid_BR & batch["example_valid"][:, None])
  packed = dcd_loss.pack_student(
    tokens,
    positions,
    valid,
    batch["rollout_tokens"],
    next_pos,
    block_len=stage.block_len,
    mask_id=ids.mask,
    eos_id=ids.eos,
  )
  logits_BRV = _target_logits(model, packed, batch)
  out = dcd_loss.dcd_loss(logits_BRV, targets, eos_ids=(ids.eos, ids.pad), config=settings.loss)
  out["kept_fraction"] = jnp.mean(batch["rollout_keep"].astype(jnp.float32))
  out["teacher_forwards"] = batch["rollout_forwards"].astype(jnp.float32)
  loss = out.pop("loss")
  if settings.rad_weight:
    # Mixing in the RAD loss on the ground-truth reports (docs/METHOD.md).
    rad_value, _ = _rad_loss_at(stage, stage.block_len, model, batch, key)
    loss = loss + settings.rad_weight * rad_value
    out["rad_loss"] = rad_value
  return loss, out


@dataclasses.dataclass(frozen=True)
class StageObjective:
  """A registry entry: the loss, its sequence length and the stage's own sampler.

  response_copies: copies of the response in one training sequence (context + copies x R
    tokens go through the model), for the tokens/s the loop logs.
  sampler: the `inference.make_sampler` kind that decodes this stage's samples.
  """

  loss: Objective
  response_copies: Callable[[StageConfig], int]
  sampler: str


OBJECTIVES: dict[str, StageObjective] = {
  "ar": StageObjective(ar_objective, lambda s: 1, "ar"),
  "rad": StageObjective(rad_objective, lambda s: 3 if s.noise.complementary else 2, "multi_step"),
  "dcd": StageObjective(dcd_objective, lambda s: 2, "one_step"),
}


def objective(stage: StageConfig) -> StageObjective:
  """The registry entry of `stage.stage` (ValueError naming the known stages)."""
  if stage.stage not in OBJECTIVES:
    raise ValueError(f"stage {stage.stage!r} has no objective; known: {', '.join(OBJECTIVES)}")
  return OBJECTIVES[stage.stage]


def make_loss_fn(stage: StageConfig) -> step_lib.LossFn:
  """The step.LossFn `(model, batch, key) -> (loss, metrics)` of `stage`."""
  return functools.partial(objective(stage).loss, stage)


def tokens_per_example(stage: StageConfig) -> int:
  """Tokens one training example sends through the model (context + its response copies)."""
  return stage.context_len + objective(stage).response_copies(stage) * stage.response_len
