"""Determinism: the same config and seed give the same RAD run, bit for bit, on one machine.

Two fresh processes with different PYTHONHASHSEED train the small EchoVLM with the RAD
objective from a random init (data order, parameter init and diffusion masks all come
from the seed): every logged metric of every step and every saved array must be identical.
The second process reuses the first one's compiled programs from the persistent cache
(the test is about the run, and a different trace would miss the cache and recompile).
"""

import pathlib
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import train_driver

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
  return train_driver.session_compile_cache(tmp_path_factory)


def run(tmp_path, compile_cache, i):
  env = train_driver.subprocess_env(
    compile_cache, PYTHONHASHSEED=str(i + 1), XLA_FLAGS=train_driver.xla_flags(4)
  )
  cmd = ["timeout", "-k", "10", "150", sys.executable, str(REPO / "tests/train_driver.py")]
  cmd += ["--task", "rad", "--devices", "4", "--workdir", str(tmp_path / f"run{i}")]
  cmd += ["--metrics", str(tmp_path / f"m{i}.jsonl"), *train_driver.RAD_OVERRIDES]
  with open(tmp_path / f"p{i}.log", "w") as log:
    code = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
  assert code == 0, (tmp_path / f"p{i}.log").read_text()[-2000:]


def test_same_config_and_seed_give_identical_rad_runs(tmp_path, compile_cache):
  for i in range(2):
    run(tmp_path, compile_cache, i)
  runs = [train_driver.read_metrics(tmp_path / f"m{i}.jsonl") for i in range(2)]
  drop = ("pid", "seconds_per_step", "tokens_per_second", "eta_hours")  # wall-clock fields
  rows = [[{k: v for k, v in r.items() if k not in drop} for r in run] for run in runs]
  assert [r["step"] for r in rows[0]] == [0, 1, 2, 3, 4, 5]
  assert rows[0] == rows[1]
  assert len({r["loss"] for r in rows[0]}) == 6  # the steps differ: masks and data change
  # The saved model and optimizer state are the same arrays too.
  saved = []
  for i in range(2):
    checkpointer = ocp.StandardCheckpointer()
    step = tmp_path / f"run{i}/checkpoints/6"
    saved.append([checkpointer.restore(step / item) for item in ("model", "opt")])
    checkpointer.close()
  leaves = [jax.tree_util.tree_leaves_with_path(s) for s in saved]
  assert [p for p, _ in leaves[0]] == [p for p, _ in leaves[1]] and len(leaves[0]) > 10
  for (path, a), (_, b) in zip(*leaves):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))
