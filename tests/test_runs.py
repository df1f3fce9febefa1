"""echo_jax.runs: what a saved run is (config, block length, samplers, tokenizer, weights)."""

import json

import ml_collections
import orbax.checkpoint as ocp
import pytest
import tiny_vlm
from etils import epath
from flax import nnx

from echo_jax import runs
from echo_jax.inference import ReportGenerator, make_sampler
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


def test_load_run_decodes_a_workdir_as_trained(tmp_path):
  # A RAD B = 4 workdir with its saved config: load_run gives the saved weights, the
  # data's tokenizer, the trained sizes and a multi-step B = 4 sampler; decoding through
  # the Run writes the reports of the model that was saved.
  setup = tiny_vlm.make_setup(str(tmp_path / "data"), seed=3)
  work = tmp_path / "work"
  manager = ocp.CheckpointManager(
    epath.Path(work) / "checkpoints",
    options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False),
  )
  manager.save(5, args=ocp.args.Composite(model=ocp.args.StandardSave(nnx.state(setup.model))))
  manager.wait_until_finished()
  manager.close()
  data = dict(
    path=setup.data_dir,
    context_len=tiny_vlm.CONTEXT_LEN,
    response_len=tiny_vlm.RESPONSE_LEN,
    max_patches=16,
    min_pixels=tiny_vlm.PIXELS,
    max_pixels=tiny_vlm.PIXELS,
  )
  saved = {"model": {"preset": "tiny"}, "stage": "rad", "block_len": 4, "data": data}
  (work / "config.json").write_text(json.dumps(saved))

  run = runs.load_run(str(work), max_new_tokens=8)
  assert run.stage == "rad"
  assert (run.profile.sampler, run.profile.block_len) == ("multi_step", 4)
  assert run.tokenizer.ids == setup.tokenizer.ids
  examples = run.examples()
  assert (examples.context_len, examples.response_len, examples.max_patches) == (144, 32, 16)
  # For a given number of images the sizes are the profile's bound, block-aligned.
  bound = run.examples(num_images=2)
  assert bound.context_len % 4 == 0 and bound.max_patches == 2 * 16
  run.check_sampler()
  with pytest.raises(UserError, match="trained to decode with multi_step"):
    runs.load_run(str(work), sampler="one_step").check_sampler()

  studies = setup.studies[:2]
  ours = ReportGenerator.from_run(run, 2)
  reference = ReportGenerator(setup.model, setup.tokenizer, setup.example_fn, batch_size=2)
  want = make_sampler("multi_step", setup.config.tokens, block_len=4, max_new_tokens=8)
  got = [r["prediction"] for r in ours.generate(studies, run.sampler())]
  assert got == [r["prediction"] for r in reference.generate(studies, want)]
  with pytest.raises(UserError, match="no such directory"):
    runs.load_run(str(tmp_path / "missing"))


def test_reproduce_refuses_an_unknown_batching():
  import configs.dcd as dcd
  from echo_jax import config_lib, reproduce

  config = dcd.get_config("tiny")
  config.eval.batching = "continuous"
  reproduce.validate(config, 1)
  config.eval.batching = "ragged"
  with pytest.raises(config_lib.ConfigError, match="eval.batching='ragged': use one of"):
    reproduce.validate(config, 1)
