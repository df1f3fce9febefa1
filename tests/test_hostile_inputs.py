"""Hostile inputs: damaged or foreign checkpoints, pickles offered as weights, bad configs.

Every case must end in one clear error naming the file or key, and leave nothing
half-written behind (the checkpoint directory is unchanged, no workdir is created).
"""

import functools
import json
import os
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import train_driver
from flax import nnx
from safetensors.numpy import load_file, save_file

from echo_jax import config_lib
from echo_jax.data import pipeline
from echo_jax.models import hf_import
from echo_jax.models.vlm import EchoVLM
from echo_jax.train import checkpoint as checkpoint_lib
from echo_jax.train import loop
from echo_jax.train import mesh as mesh_lib
from echo_jax.train import optimizer as optimizer_lib
from echo_jax.train import state as state_lib

DEVICES = jax.devices()[:1]
STEP = 2


def listing(path: pathlib.Path) -> list[tuple[str, int]]:
  """(relative path, size) of every file under `path`: what "nothing written" compares."""
  return sorted(
    (str(p.relative_to(path)), p.stat().st_size) for p in path.rglob("*") if p.is_file()
  )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A workdir of the stand-in model with one checkpoint at step 2."""
  workdir = tmp_path_factory.mktemp("trained")
  config = train_driver.make_config("lm", workdir, ["total_steps=2", "async_checkpoint=False"])
  loop.train(config, train_driver.make_task("lm", config), devices=DEVICES)
  return workdir


@functools.cache
def _stand_in_target():
  config = train_driver.make_config("lm", "unused")
  task = train_driver.make_task("lm", config)
  mesh = mesh_lib.make_mesh(config.mesh, DEVICES)
  tx = optimizer_lib.make_optimizer(config)
  _, abstract, shardings = state_lib.state_shardings(
    task.model_fn, tx, mesh, mesh_lib.DEFAULT_RULES
  )
  return abstract, shardings


def restore(workdir):
  """Checkpointer.restore of the stand-in's state + data iterator at STEP (what resume does)."""
  abstract, shardings = _stand_in_target()
  it = pipeline.GlobalBatchIterator(
    pipeline.train_dataset(range(40), lambda i: {"i": np.int32(i)}, global_batch_size=4, seed=0)
  )
  checkpointer = checkpoint_lib.Checkpointer(workdir)
  try:
    state = checkpointer.restore(abstract, shardings, (), data_iterator=it, step=STEP)
  finally:
    checkpointer.close()
  arrays = jax.tree.map(np.asarray, (nnx.to_pure_dict(state.model_state()), state.opt_state))
  return arrays, it.get_state()


def damage(path: pathlib.Path, how: str) -> None:
  if how == "delete":
    path.unlink()
  else:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# One file of each kind: array data, the database index, array metadata, the iterator state,
# a commit marker (the full sweep over every file is the slow variant).
SAMPLE = ("model/d/", "opt/manifest.ocdbt", "model/_METADATA", "opt/array_metadatas/", "data/p")
SAMPLE += ("commit_success.txt",)


@pytest.mark.parametrize(
  "how, every_file",
  [
    ("delete", False),
    ("truncate", False),
    pytest.param("delete", True, marks=pytest.mark.slow),
    pytest.param("truncate", True, marks=pytest.mark.slow),
  ],
)
def test_damaged_checkpoint_files_are_named_or_harmless(trained, tmp_path, how, every_file):
  """Files of a real checkpoint, deleted or cut in half in turn: the restore either names
  the file (or its item) in a CheckpointError, or gives back exactly the saved state."""
  want = restore(trained)
  step_dir = trained / "checkpoints" / str(STEP)
  files = [p.relative_to(trained) for p in step_dir.rglob("*") if p.is_file()]
  if not every_file:
    files = [
      f for f in files if any(k in str(f.relative_to(f"checkpoints/{STEP}")) for k in SAMPLE)
    ]
    files = [f for f in files if "ocdbt.process_0" not in str(f)]
  outcomes = {}
  for rel in files:
    work = tmp_path / "w"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(trained, work)
    damage(work / rel, how)
    before = listing(work)
    try:
      got = restore(work)
    except checkpoint_lib.CheckpointError as e:
      message = str(e)
      named = str(work / rel) in message or f"{work / rel.parent}" in message
      assert named, (rel, message)
      outcomes[str(rel)] = "error"
    else:
      # Files Orbax does not read back (commit markers, per-process copies merged into the
      # top-level database) may go missing: then the state must be exactly the saved one.
      jax.tree.map(np.testing.assert_array_equal, got[0], want[0])
      assert got[1] == want[1], rel
      outcomes[str(rel)] = "identical"
    assert listing(work) == before, rel  # a failed or successful restore writes nothing
  # The files that hold the arrays, their index and the iterator state are never optional.
  items = ("model", "opt") if every_file else ()
  required = [f"{item}/{name}" for item in items for name in ("manifest.ocdbt", "_METADATA")]
  required += ["opt/manifest.ocdbt", "model/_METADATA", "data/process_0-of-1.json"]
  for name in required:
    assert outcomes[f"checkpoints/{STEP}/{name}"] == "error", name
  data_files = [k for k in outcomes if f"/{STEP}/model/d/" in k or f"/{STEP}/opt/d/" in k]
  assert data_files and all(outcomes[k] == "error" for k in data_files)
  if not every_file:
    assert outcomes[f"checkpoints/{STEP}/commit_success.txt"] == "identical"


def _save_state_with(workdir, edit):
  """A checkpoint at STEP of the stand-in whose `up.kernel` went through `edit`."""
  config = train_driver.make_config("lm", workdir)
  task = train_driver.make_task("lm", config)
  mesh = mesh_lib.make_mesh(config.mesh, DEVICES)
  tx = optimizer_lib.make_optimizer(config)
  _, state, _ = state_lib.create_train_state(task.model_fn, tx, mesh, mesh_lib.DEFAULT_RULES)
  kernel = state.params["up"]["kernel"]
  kernel.set_value(edit(kernel.get_value()))
  state = state.replace(step=jnp.int32(STEP))
  checkpointer = checkpoint_lib.Checkpointer(workdir, async_save=False)
  checkpointer.save(state)
  checkpointer.close()
  return config, task


@pytest.mark.parametrize(
  "edit, message",
  [
    (lambda x: jnp.zeros((x.shape[0], x.shape[1] + 1)), r"model/up.kernel: shape \(8, 17\) in"),
    (lambda x: x.astype(jnp.bfloat16), "model/up.kernel: dtype bfloat16 in the checkpoint"),
    (lambda x: x.astype(jnp.int32), "model/up.kernel: dtype int32 in the checkpoint"),
  ],
  ids=["shape", "bfloat16", "int32"],
)
def test_resume_refuses_a_tensor_of_the_wrong_shape_or_dtype(tmp_path, edit, message):
  config, task = _save_state_with(tmp_path, edit)
  before = listing(tmp_path / "checkpoints")
  config.total_steps = 4
  with pytest.raises(checkpoint_lib.CheckpointError, match=message) as error:
    loop.train(config, task, devices=DEVICES)
  assert str(checkpoint_lib.checkpoint_dir(tmp_path) / str(STEP) / "model") in str(error.value)
  # Nothing written: no new step, no temporary directory (the loop's config.json aside).
  assert listing(tmp_path / "checkpoints") == before


def test_next_stage_init_casts_float_widths_but_refuses_other_kinds(tmp_path):
  """init.path (restore_model_state) may read float32 weights into bfloat16, never ints."""
  config = train_driver.make_config("lm", tmp_path)
  task = train_driver.make_task("lm", config)
  mesh = mesh_lib.make_mesh(config.mesh, DEVICES)
  _, abstract, shardings = state_lib.state_shardings(
    task.model_fn, optimizer_lib.make_optimizer(config), mesh, mesh_lib.DEFAULT_RULES
  )
  target = state_lib.with_shardings(abstract, shardings)
  model_target = nnx.merge_state(target.params, target.frozen)
  _save_state_with(tmp_path / "bf16", lambda x: x.astype(jnp.bfloat16))
  restored = checkpoint_lib.restore_model_state(tmp_path / "bf16", model_target)
  assert restored["up"]["kernel"].get_value().dtype == jnp.float32
  _save_state_with(tmp_path / "int", lambda x: x.astype(jnp.int32))
  with pytest.raises(checkpoint_lib.CheckpointError, match="up.kernel: dtype int32"):
    checkpoint_lib.restore_model_state(tmp_path / "int", model_target)


def test_iterator_state_of_another_process_count_is_named(trained, tmp_path):
  work = tmp_path / "w"
  shutil.copytree(trained, work)
  data = work / "checkpoints" / str(STEP) / "data"
  state = (data / "process_0-of-1.json").read_text()
  (data / "process_0-of-1.json").unlink()
  for i in range(2):
    (data / f"process_{i}-of-2.json").write_text(state)
  with pytest.raises(checkpoint_lib.CheckpointError, match=r"process_0-of-1.json is missing"):
    restore(work)


@pytest.mark.parametrize("offer", ["file", "directory"])
def test_pickle_offered_as_weights_is_refused(tmp_path, offer):
  config = train_driver.make_config("lm", tmp_path / "run")
  task = train_driver.make_task("lm", config)
  (tmp_path / "weights").mkdir()
  (tmp_path / "weights/pytorch_model.bin").write_bytes(b"\x80\x04 not loaded")
  path = tmp_path / "weights" / ("pytorch_model.bin" if offer == "file" else "")
  abstract = nnx.state(state_lib.abstract_model(task.model_fn))
  with pytest.raises(checkpoint_lib.CheckpointError, match="pytorch_model.bin is a pickle file"):
    checkpoint_lib.restore_model_state(path, abstract)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  """A small Qwen2.5-VL safetensors directory, sharded in two files with an index."""
  path = tmp_path_factory.mktemp("hf")
  config = train_driver.rad_model_config()
  # Random weights of the right shapes, without running the initializers op by op.
  graphdef, abstract = nnx.split(
    state_lib.abstract_model(lambda: EchoVLM(config, rngs=nnx.Rngs(0)))
  )
  rng = np.random.default_rng(0)
  values = jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(x.dtype), abstract)
  hf_import.save_pretrained(nnx.merge(graphdef, values), config, path)
  tensors = load_file(path / "model.safetensors")
  (path / "model.safetensors").unlink()
  names = sorted(tensors)
  shards = {
    "model-00001-of-00002.safetensors": names[::2],
    "model-00002-of-00002.safetensors": names[1::2],
  }
  weight_map = {}
  for file, keys in shards.items():
    save_file({k: tensors[k] for k in keys}, path / file, metadata={"format": "pt"})
    weight_map.update(dict.fromkeys(keys, file))
  (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
  return path, config


def test_hf_directory_loads_when_whole(hf_dir):
  path, config = hf_dir
  model, _ = hf_import.load_pretrained(path, token_ids=config.tokens)
  assert isinstance(model, EchoVLM)


@pytest.mark.parametrize("case", ["missing", "truncated", "int_tensor", "pickle_only"])
def test_hf_directory_damage_is_named(hf_dir, tmp_path, case):
  src, config = hf_dir
  path = tmp_path / "hf"
  shutil.copytree(src, path)
  shard = path / "model-00002-of-00002.safetensors"
  if case == "missing":
    shard.unlink()
    message = f"{shard} is missing"
  elif case == "truncated":
    damage(shard, "truncate")
    message = f"{shard} is not a readable safetensors file"
  elif case == "int_tensor":
    tensors = load_file(shard)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].astype(np.int32)
    save_file(tensors, shard, metadata={"format": "pt"})
    message = f"tensor {name} in {shard} has dtype int32"
  else:
    for p in path.glob("model*"):
      p.unlink()
    (path / "pytorch_model.bin").write_bytes(b"\x80\x04 not loaded")
    message = "pickle checkpoints"
  before = listing(path)
  with pytest.raises(ValueError, match=message.replace(".", r"\.")):
    hf_import.load_pretrained(path, token_ids=config.tokens)
  assert listing(path) == before


@pytest.mark.parametrize(
  "override, message",
  [
    ("rad.eps=1.5", "rad.eps=1.5 must be in (0, 1)"),
    ("optimizer.b2=1.0", "optimizer.b2=1.0 must be in [0, 1)"),
    ("total_steps=0", "total_steps=0 must be >= 1"),
    ("batch_size=6", "batch_size=6 must be a positive multiple of mesh data*fsdp=8"),
    ("data.max_patches=30", "data.max_patches=30 must be a multiple of 4"),
    ("mesh.tensor=3", "mesh data=-1xfsdp=1xtensor=3: 8 devices are not divisible"),
  ],
)
def test_config_out_of_range_is_named_before_anything_is_written(tmp_path, override, message):
  config = train_driver.make_config("rad", tmp_path / "run", ["batch_size=8", override])
  with pytest.raises(config_lib.ConfigError) as error:
    loop.train(config, train_driver.make_task("lm", config), devices=jax.devices()[:8])
  assert message in str(error.value), str(error.value)
  assert not os.path.exists(tmp_path / "run")  # validated before the workdir is created
