"""Config presets, overrides and validation messages (every problem reported at once)."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

from echo_jax import config_lib

REPO = pathlib.Path(__file__).resolve().parents[1]


def load(spec, *overrides):
  return config_lib.load(str(REPO / spec), overrides)


@pytest.mark.parametrize("spec", ["configs/ar.py:tiny", "configs/rad.py:tiny"])
def test_tiny_presets_validate_on_8_cpu_devices(spec):
  config = load(spec, "init.path=''")
  config_lib.validate(config, 8)
  assert config.model.preset == "tiny" and config.data.name == "synthetic"


def test_rad_presets_freeze_vision_and_start_from_ar():
  tiny, big = load("configs/rad.py:tiny"), load("configs/rad.py:7b")
  assert tiny.stage == big.stage == "rad"
  assert tiny.freeze == big.freeze == ("vision",)
  assert tiny.init.path == ""  # runs alone; the main job starts it from its AR stage
  main_job = load("configs/dcd.py")
  assert main_job.stages.rad.init.path == "ar" and main_job.order[:3] == ("vision", "ar", "rad")
  assert big.model.preset == "lingshu-7b" and big.model.dtype == "bfloat16" and big.model.remat
  assert big.mesh.fsdp == -1
  assert load("configs/rad.py:tiny,block_len=4").block_len == 4


def test_7b_preset_mesh_and_batch_on_a_pod():
  config = load(
    "configs/ar.py:7b", "init.path='/models/lingshu'", "data.path='/data/annotation.json'"
  )
  config.init.path = str(REPO)  # any existing directory
  config_lib.validate(config, 64)
  assert config_lib.resolve_mesh_shape(config.mesh, 64) == (1, 64, 1)


def test_unknown_preset_names_the_known_ones():
  with pytest.raises(
    ValueError, match=r"unknown preset 'huge' for configs/rad.py; known: tiny, 7b"
  ):
    load("configs/rad.py:huge")


def test_all_errors_are_reported_at_once(tmp_path):
  config = load(
    "configs/rad.py:tiny",
    f"init.path='{tmp_path / 'no_such_run'}'",
    f"workdir='{tmp_path / 'work'}'",
    "mesh.data=3",
    "batch_size=10",
    "block_len=5",
    "optimizer.learning_rate=-1.0",
    "optimizer.b2=1.5",
    "model.dtype='float16'",
  )
  with pytest.raises(config_lib.ConfigError) as err:
    config_lib.validate(config, 8)
  message = str(err.value)
  expected = [
    "init.path=",  # missing init checkpoint
    "mesh data=3xfsdp=1xtensor=1 has 3 devices but 8 are available",
    f"block_len=5 does not divide data.response_len={config.data.response_len}",
    f"block_len=5 does not divide data.context_len={config.data.context_len}",
    "optimizer.learning_rate=-1.0 must be > 0",
    "optimizer.b2=1.5 must be in [0, 1)",
    "model.dtype='float16' must be one of",
  ]
  for text in expected:
    assert text in message, (text, message)
  assert message.startswith(f"{len(expected)} config error(s):")
  assert len(err.value.problems) == len(expected)


def test_batch_must_divide_over_data_and_fsdp():
  config = load(
    "configs/ar.py:tiny", "mesh.data=2", "mesh.fsdp=-1", "batch_size=8", "grad_accum_steps=2"
  )
  with pytest.raises(
    config_lib.ConfigError,
    match=r"batch_size=8 / grad_accum_steps=2 must be a whole microbatch divisible by data\*fsdp=8",
  ):
    config_lib.validate(config, 8)
  config.batch_size = 10
  with pytest.raises(
    config_lib.ConfigError, match=r"batch_size=10 must be a positive multiple of mesh data\*fsdp=8"
  ):
    config_lib.validate(config, 8)


def test_mesh_shapes():
  load_mesh = lambda *o: load("configs/ar.py:tiny", *o).mesh
  assert config_lib.resolve_mesh_shape(load_mesh("mesh.data=-1"), 8) == (8, 1, 1)
  assert config_lib.resolve_mesh_shape(
    load_mesh("mesh.data=2", "mesh.fsdp=-1", "mesh.tensor=2"), 8
  ) == (2, 2, 2)
  with pytest.raises(config_lib.ConfigError, match="only one axis may be -1"):
    config_lib.resolve_mesh_shape(load_mesh("mesh.data=-1", "mesh.fsdp=-1"), 8)
  with pytest.raises(config_lib.ConfigError, match="not divisible by the fixed axes' product 3"):
    config_lib.resolve_mesh_shape(load_mesh("mesh.data=-1", "mesh.tensor=3"), 8)


def test_overrides_keep_types_and_reject_unknown_keys():
  config = load(
    "configs/ar.py:tiny", "optimizer.learning_rate=1", "freeze=['vision']", "workdir=/tmp/x"
  )
  assert config.optimizer.learning_rate == 1.0 and isinstance(config.optimizer.learning_rate, float)
  assert config.freeze == ("vision",) and config.workdir == "/tmp/x"
  with pytest.raises(KeyError, match="no key 'optimizer.lr'"):
    load("configs/ar.py:tiny", "optimizer.lr=1")


def test_every_config_key_is_commented():
  source = (REPO / "configs" / "common.py").read_text()
  assignments = re.findall(r"^\s+c\.([\w.]+) = (.*)$", source, flags=re.M)
  assert len(assignments) > 40
  uncommented = [k for k, rhs in assignments if "#" not in rhs and "ConfigDict()" not in rhs]
  assert not uncommented, uncommented
  # Presets set only keys that exist in the common config.
  base = load("configs/ar.py:tiny")
  for spec in ("configs/ar.py:7b", "configs/rad.py:tiny", "configs/rad.py:7b"):
    assert set(load(spec).to_dict()) == set(base.to_dict())


def test_main_validates_flags_before_any_compute(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
  cmd = [
    sys.executable,
    "-m",
    "echo_jax.main",
    f"--config={REPO}/configs/rad.py:tiny",
    "--config.init.path=",
    "--validate_only",
  ]
  ok = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert ok.returncode == 0, ok.stderr[-2000:]
  bad = subprocess.run(
    cmd + ["--config.batch_size=6", "--config.block_len=5"],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert bad.returncode != 0
  assert bad.stderr.startswith("3 config error(s):"), bad.stderr[
    -2000:
  ]  # the message, no traceback
  assert (
    "batch_size=6" in bad.stderr and "block_len=5 does not divide data.response_len" in bad.stderr
  )


def test_unknown_preset_arguments_are_refused_by_name():
  with pytest.raises(
    ValueError, match=r"configs/dcd.py:7b,block_len=4: unknown argument 'block_len'"
  ):
    load("configs/dcd.py:7b,block_len=4")
  with pytest.raises(
    ValueError, match=r"unknown argument 'blok_len' \(arguments of configs/rad.py: block_len\)"
  ):
    load("configs/rad.py:tiny,blok_len=4")
  with pytest.raises(ValueError, match=r"unknown argument 'fast'"):
    load("configs/ar.py:tiny,fast")


def test_main_job_has_its_own_config_and_dcd_default_still_runs_it():
  echo, dcd = load("configs/echo.py"), load("configs/dcd.py")
  assert echo.to_dict() == dcd.to_dict()
  assert echo.stage == "pipeline" and echo.order == ("vision", "ar", "rad", "dcd_b4", "dcd_b8")
  assert (
    load("configs/echo.py:tiny_ablations").to_dict()
    == load("configs/dcd.py:tiny_ablations").to_dict()
  )
  # The block length is a stage's top-level key.
  assert [echo.stages[s].block_len for s in ("rad", "dcd_b4", "dcd_b8")] == [8, 4, 8]
  assert "block_len" not in echo.stages.rad.rad


def test_configs_import_each_other_as_a_package():
  for path in (REPO / "configs").glob("*.py"):
    assert "importlib" not in path.read_text(), path


def test_set_key_names_the_missing_key():
  config = load("configs/ar.py:tiny")
  config_lib.set_key(config, "optimizer.warmup_steps", 7)
  config_lib.set_key(config, "optimizer.learning_rate", 1)
  assert config.optimizer.warmup_steps == 7 and config.optimizer.learning_rate == 1.0
  with pytest.raises(KeyError, match="no key 'optimizer.nope'"):
    config_lib.set_key(config, "optimizer.nope", 1)
  with pytest.raises(KeyError, match="no key 'nope'"):
    config_lib.set_key(config, "nope.lr", 1)
  with pytest.raises(KeyError, match="no key 'seed.x'"):
    config_lib.set_key(config, "seed.x", 1)  # seed is a leaf


@pytest.mark.parametrize(
  "args, named",
  [
    (["--config=configs/dcd.py", "--config.no_such_key=1"], "no_such_key"),
    (["--config=configs/dcd.py:7b,block_len=4"], "'block_len'"),
  ],
)
def test_main_refuses_unknown_keys_and_arguments_in_one_line(args, named):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "echo_jax.main", *args, "--validate_only"]
  bad = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert bad.returncode == 2, bad.stderr[-2000:]
  lines = bad.stderr.strip().splitlines()
  assert len(lines) == 1 and named in lines[0] and lines[0].startswith("error: "), bad.stderr[
    -2000:
  ]
