"""The stage objectives' registry and the typed stage config they read."""

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import pytest

from echo_jax import config_lib
from echo_jax.train import objectives
from echo_jax.train.stage_config import StageConfig

REPO = pathlib.Path(__file__).resolve().parents[1]


def _config(stage="rad", *overrides):
  config = config_lib.load(str(REPO / "configs/rad.py:tiny"), overrides)
  config.stage = stage
  return config


def test_every_config_stage_has_an_objective():
  # The vision stage trains a probe model, not the VLM: its loss is train/vision_stage.py's.
  assert set(objectives.OBJECTIVES) | {"vision"} == set(config_lib.STAGES)


def test_stage_config_is_read_once_into_a_frozen_hashable_value():
  config = _config("rad", "rad.mixed_block_lens=(4, 8)", "rad.complementary=True")
  model_config = config_lib.model_config(config)
  stage = StageConfig.from_config(config, model_config)
  assert (stage.stage, stage.block_len, stage.mixed_block_lens) == ("rad", 8, (4, 8))
  assert stage.noise.complementary and stage.dcd is None
  assert stage.tokens == model_config.tokens
  assert hash(stage) == hash(StageConfig.from_config(config, model_config))
  with pytest.raises(dataclasses.FrozenInstanceError):
    stage.block_len = 4
  config.block_len = 4  # the value was read once: later edits do not reach it
  assert stage.block_len == 8


def test_dcd_settings_come_from_the_dcd_keys():
  config = _config("dcd", "dcd.eos_weight=0.0", "dcd.divergence='reverse_kl'", "dcd.top_k=5")
  stage = StageConfig.from_config(config, config_lib.model_config(config))
  assert stage.dcd.loss.eos_weight == 0.0 and stage.dcd.loss.divergence == "reverse_kl"
  assert stage.dcd.top_k == 5 and stage.dcd.threshold == config.dcd.threshold


@pytest.mark.parametrize(
  ("stage", "complementary", "copies"),
  [("ar", False, 1), ("rad", False, 2), ("rad", True, 3), ("dcd", False, 2)],
)
def test_tokens_per_example_counts_the_response_copies(stage, complementary, copies):
  config = _config(stage, f"rad.complementary={complementary}")
  s = StageConfig.from_config(config, config_lib.model_config(config))
  assert objectives.tokens_per_example(s) == s.context_len + copies * s.response_len


def test_a_new_objective_is_one_function_and_one_entry(monkeypatch):
  calls = []

  def toy_objective(stage, model, batch, key):
    calls.append(stage.stage)
    return jnp.sum(batch["x"]) * stage.block_len, {"toy": jnp.float32(1)}

  monkeypatch.setitem(
    objectives.OBJECTIVES, "toy", objectives.StageObjective(toy_objective, lambda s: 0, "ar")
  )
  config = _config("rad")
  stage = dataclasses.replace(
    StageConfig.from_config(config, config_lib.model_config(config)), stage="toy"
  )
  loss, metrics = objectives.make_loss_fn(stage)(None, {"x": jnp.ones(3)}, jax.random.key(0))
  assert float(loss) == 3 * stage.block_len and calls == ["toy"]
  assert objectives.tokens_per_example(stage) == stage.context_len


def test_unknown_stage_names_the_known_objectives():
  config = _config("rad")
  stage = dataclasses.replace(
    StageConfig.from_config(config, config_lib.model_config(config)), stage="nope"
  )
  with pytest.raises(ValueError, match="stage 'nope' has no objective; known: ar, rad, dcd"):
    objectives.make_loss_fn(stage)
