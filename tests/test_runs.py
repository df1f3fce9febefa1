"""echo_jax.runs: what a saved run is (config, block length, samplers, tokenizer, weights)."""

import json

import ml_collections
import pytest

from echo_jax import runs
from echo_jax.user_errors import UserError


def test_saved_block_len_newer_and_older_configs():
  assert runs.saved_block_len({"block_len": 4, "rad": {"block_len": 8}}) == 4
  assert runs.saved_block_len({"rad": {"block_len": 16}}) == 16
  assert runs.saved_block_len({"model": {}}) is None
  config = ml_collections.ConfigDict({"rad": {"block_len": 4}})
  assert runs.saved_block_len(config) == 4
  config.block_len = 32
  assert runs.saved_block_len(config) == 32


@pytest.mark.parametrize(
  "stage,sampler,allowed",
  [
    ("ar", "ar", True),
    ("ar", "one_step", False),
    ("ar", "multi_step", False),
    ("rad", "multi_step", True),
    ("rad", "one_step", False),  # the "teacher forced to one step" ablation
    ("rad", "ar", False),
    ("dcd", "one_step", True),
    ("dcd", "multi_step", True),
    ("dcd", "ar", False),
    (None, "ar", True),  # no saved stage: nothing to check against
  ],
)
def test_check_sampler(stage, sampler, allowed):
  if allowed:
    runs.check_sampler(stage, sampler)
  else:
    with pytest.raises(UserError, match=f"^--sampler {sampler}: this {stage} checkpoint"):
      runs.check_sampler(stage, sampler)
  runs.check_sampler(stage, sampler, force=True)


def test_hf_dir_workdir_config_and_pickles(tmp_path):
  hf = tmp_path / "hf"
  hf.mkdir()
  (hf / "config.json").write_text("{}")
  assert not runs.is_hf_dir(str(hf))
  (hf / "model.safetensors").write_bytes(b"")
  assert runs.is_hf_dir(str(hf))
  work = tmp_path / "work"
  (work / "checkpoints" / "7").mkdir(parents=True)
  assert runs.workdir_config(str(work)) == {}
  (work / "config.json").write_text(json.dumps({"model": {"preset": "tiny"}, "stage": "dcd"}))
  assert runs.workdir_config(str(work / "checkpoints" / "7"))["stage"] == "dcd"
  (work / "config.json").write_text("{not json")
  with pytest.raises(UserError, match="config.json"):
    runs.workdir_config(str(work))
  torch_dir = tmp_path / "torch"
  torch_dir.mkdir()
  (torch_dir / "pytorch_model.bin").write_bytes(b"")
  assert runs.pickled_weights(str(torch_dir)) == ["pytorch_model.bin"]
  with pytest.raises(UserError, match="pickled weights"):
    runs.load_model(str(torch_dir), {}, tokenizer=None)


def test_trained_block_lens():
  assert runs.trained_block_lens({"rad": {"block_len": 8, "mixed_block_lens": (4, 8)}}) == (8, 4)
  assert runs.trained_block_lens({"block_len": 4, "mixed_block_lens": (4,)}) == (4,)
  assert runs.trained_block_lens({}) == ()


def test_reproduce_refuses_a_row_at_an_untrained_block_len():
  import configs.dcd as dcd
  from echo_jax import config_lib, reproduce

  config = dcd.get_config("tiny")
  reproduce.validate(config, 1)  # the default rows are all trained block lengths
  config.eval.rows = (*config.eval.rows, ("DCD one-step B=16", "dcd_b8", "one_step", 16))
  with pytest.raises(config_lib.ConfigError, match="'DCD one-step B=16'.*block length 16"):
    reproduce.validate(config, 1)
