"""Two local processes (jax.distributed, CPU, two devices each) train RAD like one process.

Both processes run tests/train_driver.py (the real loop: per-process Grain slices, global
batches assembled with make_array_from_process_local_data, Orbax saving from both, the
preemption sync point) on a data=2 x fsdp=2 mesh spanning the two processes. Alongside, one
process on four local devices runs the same loop fed the same global batches; the losses
must agree, and the two processes' pipelines must read disjoint halves of every epoch. In
the slow variant the job is interrupted on the way: a SIGTERM to one of its processes must
stop both after the same step with one checkpoint, and the same command must resume both
from it (the fast test of that logic is test_preemption_guard_in_multi_process_mode).
Every subprocess runs under `timeout -k` and blocks on each step's result.
"""

import json
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import train_driver

from echo_jax.data import pipeline

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_PROCESSES = 2
NUM_RECORDS = 40  # the driver's default
TOTAL_STEPS = 6  # train_driver.RAD_OVERRIDES
OVERRIDES = list(train_driver.RAD_OVERRIDES)


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
  return train_driver.session_compile_cache(tmp_path_factory)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def start_processes(tmp_path, compile_cache, task="rad", args=(), overrides=OVERRIDES, timeout=150):
  """`num_processes` drivers of one job, each under `timeout -k`; returns their Popens."""
  env = train_driver.subprocess_env(compile_cache, XLA_FLAGS=train_driver.xla_flags(2))
  coordinator = f"localhost:{free_port()}"
  procs = []
  for i in range(NUM_PROCESSES):
    cmd = ["timeout", "-k", "10", str(timeout), sys.executable, str(REPO / "tests/train_driver.py")]
    cmd += ["--task", task, "--workdir", str(tmp_path / "run"), "--block", *args]
    cmd += [
      "--metrics",
      str(tmp_path / f"m{i}.jsonl"),
      "--epoch_ids",
      str(tmp_path / f"ids{i}.json"),
    ]
    cmd += ["--coordinator", coordinator, "--num_processes", str(NUM_PROCESSES)]
    cmd += ["--process_id", str(i), *overrides]
    log = open(tmp_path / f"p{i}.log", "a")
    procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
  return procs


def wait_all(tmp_path, procs, timeout=200) -> None:
  codes = []
  for p in procs:
    try:
      codes.append(p.wait(timeout=timeout))
    except subprocess.TimeoutExpired:
      p.kill()
      codes.append(p.wait())
  logs = [(tmp_path / f"p{i}.log").read_text()[-3000:] for i in range(len(procs))]
  assert codes == [0] * len(procs), "\n\n".join(logs)


def local_batches(process_index: int, num_batches: int) -> list[list[int]]:
  """Record indices of a process's first local batches: the pipeline call the loop makes."""
  it = pipeline.GlobalBatchIterator(
    pipeline.train_dataset(
      range(NUM_RECORDS),
      lambda i: {"i": np.int32(i)},
      global_batch_size=4,
      seed=0,
      process_index=process_index,
      process_count=NUM_PROCESSES,
    )
  )
  return [np.asarray(next(it)["i"]).tolist() for _ in range(num_batches)]


def start_single_process(tmp_path, compile_cache, global_batches, timeout=150):
  """One process on four local devices, fed the given global batches (the reference run)."""
  (tmp_path / "batches.json").write_text(json.dumps(global_batches))
  cmd = ["timeout", "-k", "10", str(timeout), sys.executable, str(REPO / "tests/train_driver.py")]
  cmd += ["--task", "rad", "--workdir", str(tmp_path / "single"), "--devices", "4", "--block"]
  cmd += ["--metrics", str(tmp_path / "single.jsonl"), "--batches", str(tmp_path / "batches.json")]
  env = train_driver.subprocess_env(compile_cache, XLA_FLAGS=train_driver.xla_flags(4))
  log = open(tmp_path / "p2.log", "w")
  return subprocess.Popen(
    [*cmd, *OVERRIDES], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
  )


@pytest.mark.parametrize(
  "sigterm", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["straight", "sigterm"]
)
def test_two_processes_train_like_one_and_split_each_epoch(tmp_path, compile_cache, sigterm):
  """Straight through, or (slow) stopped by a SIGTERM to one process and resumed."""
  # The global batches the processes should build: step s = process 0's local rows, then
  # process 1's (the mesh's device order). The single-process reference runs alongside.
  per_process = [local_batches(i, NUM_RECORDS // 4) for i in range(NUM_PROCESSES)]
  global_batches = [per_process[0][s] + per_process[1][s] for s in range(TOTAL_STEPS)]
  single = start_single_process(tmp_path, compile_cache, global_batches)
  if sigterm:
    # The job, slowed down; once process 1 is training, SIGTERM reaches process 1 only.
    procs = start_processes(tmp_path, compile_cache, args=["--step_sleep", "0.3"])
    while not train_driver.read_metrics(tmp_path / "m1.jsonl") and procs[1].poll() is None:
      time.sleep(0.02)
    procs[1].send_signal(signal.SIGTERM)  # `timeout` passes it on to its python process
    wait_all(tmp_path, procs)
    logged = [
      [r["step"] for r in train_driver.read_metrics(tmp_path / f"m{i}.jsonl")] for i in (0, 1)
    ]
    stop = logged[0][-1] + 1
    # Both stopped after the same step, wrote one checkpoint together, and exited cleanly.
    assert logged[0] == logged[1] == list(range(stop)) and stop < TOTAL_STEPS, logged
    logs = [(tmp_path / f"p{i}.log").read_text() for i in range(NUM_PROCESSES)]
    assert all('"stopped_early": true' in log for log in logs)
    assert sorted(p.name for p in (tmp_path / "run/checkpoints").iterdir()) == [str(stop)]
  # (Again) the same command; it resumes from the checkpoint if there is one.
  wait_all(tmp_path, [*start_processes(tmp_path, compile_cache), single])
  reference = [r["loss"] for r in train_driver.read_metrics(tmp_path / "single.jsonl")]
  metrics = [train_driver.read_metrics(tmp_path / f"m{i}.jsonl") for i in range(NUM_PROCESSES)]
  epoch = [json.loads((tmp_path / f"ids{i}.json").read_text()) for i in range(NUM_PROCESSES)]
  # Each process read its own examples; together one epoch, each example exactly once.
  assert epoch == per_process
  flat = [[i for batch in ids for i in batch] for ids in epoch]
  assert not set(flat[0]) & set(flat[1])
  assert sorted(flat[0] + flat[1]) == list(range(NUM_RECORDS))
  # Both processes log the same (replicated) losses, equal to the single process's.
  losses = [[r["loss"] for r in rows] for rows in metrics]
  assert [r["step"] for r in metrics[0]] == list(range(TOTAL_STEPS))
  assert losses[0] == losses[1]
  assert len(reference) == TOTAL_STEPS
  np.testing.assert_allclose(losses[0], reference, rtol=2e-6)
  # Both processes wrote their part of the final checkpoint.
  data = sorted(
    p.name for p in (tmp_path / "run/checkpoints" / str(TOTAL_STEPS) / "data").iterdir()
  )
  assert [d for d in data if d.endswith(".json")] == ["process_0-of-2.json", "process_1-of-2.json"]


def test_preemption_guard_in_multi_process_mode(monkeypatch):
  """With several processes SIGTERM stays with JAX's preemption notifier (a Python handler
  would replace it and the job would never hear of the signal), and SIGINT is passed on
  to it as SIGTERM; stopping is decided by the preemption sync point alone."""
  from echo_jax.train import checkpoint as checkpoint_lib

  received = []
  notifier = lambda signum, frame: received.append(signum)  # stands in for JAX's handler
  previous = signal.signal(signal.SIGTERM, notifier)
  try:
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    guard = checkpoint_lib.PreemptionGuard()
    assert signal.getsignal(signal.SIGTERM) is notifier
    signal.raise_signal(signal.SIGINT)
    assert received == [signal.SIGTERM]

    class SyncPoint:
      def reached_preemption(self, step):
        return step == 7

    assert not guard.should_stop(6, SyncPoint()) and guard.should_stop(7, SyncPoint())
    guard.close()
    assert signal.getsignal(signal.SIGINT) != guard._handle
  finally:
    signal.signal(signal.SIGTERM, previous)
