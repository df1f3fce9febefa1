"""Preemption and crashes of a real training process: signals, kill -9 at random points, NaNs.

Each run is a subprocess of tests/train_driver.py (the real loop, pipeline and Orbax
checkpoints on a stand-in model), killed or signalled from here. The losses every
process logged, including steps it redid after a resume, must equal those of one
uninterrupted run: same data order, same noise, same optimizer state.
"""

import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import train_driver

from echo_jax.train import checkpoint as checkpoint_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_STEPS = 16


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
  return train_driver.session_compile_cache(tmp_path_factory)


def start(workdir, metrics, compile_cache, *args, overrides=(), **env) -> subprocess.Popen:
  cmd = [sys.executable, str(REPO / "tests/train_driver.py"), "--workdir", str(workdir)]
  cmd += ["--metrics", str(metrics), *args, f"total_steps={NUM_STEPS}", *overrides]
  log = open(pathlib.Path(str(metrics) + ".log"), "a")
  return subprocess.Popen(
    cmd,
    cwd=REPO,
    env=train_driver.subprocess_env(compile_cache, **env),
    stdout=log,
    stderr=subprocess.STDOUT,
  )


def finish(proc: subprocess.Popen, metrics, timeout=120) -> int:
  try:
    return proc.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.wait()
    log = pathlib.Path(str(metrics) + ".log").read_text()[-3000:]
    raise AssertionError(f"training process timed out:\n{log}") from None


def wait_for(condition, proc, timeout=90.0, poll=0.005):
  """Poll until condition() is true; False if the process ended first."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if condition():
      return True
    if proc.poll() is not None:
      return bool(condition())
    time.sleep(poll)
  raise AssertionError("timed out waiting for the training process")


def losses_by_step(rows) -> dict[int, list[float]]:
  out: dict[int, list[float]] = {}
  for row in rows:
    out.setdefault(row["step"], []).append(row["loss"])
  return out


def assert_same_losses(rows, reference):
  """Every logged loss (first tries and redone steps alike) equals the reference, bit for bit."""
  got = losses_by_step(rows)
  assert sorted(got) == list(range(NUM_STEPS)), sorted(got)
  for step, values in got.items():
    assert values == [reference[step]] * len(values), (step, values, reference[step])


@pytest.fixture(scope="module")
def reference(tmp_path_factory, compile_cache):
  """Per-step losses of one uninterrupted run (saving only at the end: saves change nothing)."""
  tmp = tmp_path_factory.mktemp("reference")
  proc = start(tmp / "run", tmp / "m.jsonl", compile_cache, overrides=["checkpoint_every=100"])
  assert finish(proc, tmp / "m.jsonl") == 0
  rows = train_driver.read_metrics(tmp / "m.jsonl")
  assert [r["step"] for r in rows] == list(range(NUM_STEPS))
  return [r["loss"] for r in rows]


def steps_logged_by(rows, pid) -> list[int]:
  return [r["step"] for r in rows if r["pid"] == pid]


def complete_steps(workdir) -> list[int]:
  """Finished checkpoints: Orbax renames `<step>.orbax-checkpoint-tmp` to `<step>` when done."""
  path = checkpoint_lib.checkpoint_dir(workdir)
  return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit()) if path.exists() else []


def _interrupt_and_resume(tmp_path, compile_cache, reference, plan):
  """Start, interrupt as `plan` says, repeat; then run to the end and check every loss.

  Plan items: ("signal", SIGTERM | SIGINT) after the process logged 2 steps: it must save
  that step and exit 0; ("kill_mid_save", tries): kill -9 while an async save is being
  written, retried up to `tries` times until one is caught mid-write; ("kill_at", seconds):
  kill -9 that long after the start (start-up, compile, restore or training);
  ("kill_training", seconds): kill -9 that long after the process logged its first step.
  """
  workdir, metrics = tmp_path / "run", tmp_path / "m.jsonl"
  checkpoints = checkpoint_lib.checkpoint_dir(workdir)
  events = []
  for kind, arg in plan:
    for _ in range(arg if kind == "kill_mid_save" else 1):
      signalled = kind == "signal"
      proc = start(workdir, metrics, compile_cache, *(["--step_sleep", "0.05"] * signalled))
      started, partial = time.monotonic(), []
      mine = lambda p=proc: steps_logged_by(train_driver.read_metrics(metrics), p.pid)
      if kind == "kill_at":
        wait_for(lambda t=started, w=arg: time.monotonic() - t >= w, proc)
      elif kind == "kill_training":
        wait_for(lambda m=mine: len(m()) >= 1, proc)
        trained = time.monotonic()
        wait_for(lambda t=trained, w=arg: time.monotonic() - t >= w, proc)
      else:
        wait_for(lambda m=mine: len(m()) >= 2, proc)
      if kind == "kill_mid_save":
        saving = lambda out=partial: bool(
          out.extend(checkpoints.glob("*.orbax-checkpoint-tmp*")) or out
        )
        wait_for(saving, proc, poll=0.001)
      proc.send_signal(arg if signalled else signal.SIGKILL)
      code = finish(proc, metrics) if signalled else proc.wait()
      left = [p.name for p in partial if p.exists()]  # still there: the save was cut short
      events.append(dict(kind=kind, code=code, pid=proc.pid, partial=left, logged=mine()))
      events[-1]["complete"] = complete_steps(workdir)
      if signalled:
        # A clean exit after saving the step it was in; nothing it did is lost.
        assert code == 0 and events[-1]["complete"][-1] == mine()[-1] + 1 < NUM_STEPS, events
      if kind != "kill_mid_save" or left:
        break
    if kind == "kill_mid_save":
      assert events[-1]["code"] == -signal.SIGKILL and events[-1]["partial"], events
  final = start(workdir, metrics, compile_cache)
  assert finish(final, metrics) == 0
  rows = train_driver.read_metrics(metrics)
  # Each process resumed at the newest complete checkpoint its predecessor left.
  for event, next_pid in zip(events, [e["pid"] for e in events[1:]] + [final.pid]):
    newest, logged = max(event["complete"], default=0), steps_logged_by(rows, next_pid)
    if logged or next_pid == final.pid:  # (a process killed during start-up logs nothing)
      assert logged[:1] == ([newest] if newest < NUM_STEPS else []), events
  assert_same_losses(rows, reference)
  log = pathlib.Path(str(metrics) + ".log").read_text()
  signals = [arg for kind, arg in plan if kind == "signal"]
  assert log.count('"stopped_early": true') == len(signals)
  assert all(f"received signal {int(sig)}" in log for sig in signals)
  # Nothing half-written is left: the next start removed the killed saves' temporary dirs.
  assert not list(checkpoints.glob("*.orbax-checkpoint-tmp*"))
  assert complete_steps(workdir)[-1] == NUM_STEPS
  return events


# Slow: an exact resume after a stop is in the fast suite (tests/test_checkpoint.py).
@pytest.mark.slow
def test_signals_save_and_exit_and_kill_9_loses_only_unsaved_steps(
  tmp_path, compile_cache, reference
):
  """SIGTERM, then SIGINT, then kill -9 during a save, then kill -9 at a random time."""
  at = float(np.random.default_rng(0).uniform(0.5, 4.0))
  plan = [("signal", signal.SIGTERM), ("signal", signal.SIGINT), ("kill_mid_save", 3)]
  _interrupt_and_resume(tmp_path, compile_cache, reference, [*plan, ("kill_at", at)])


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_kill_9_at_many_random_points(tmp_path, compile_cache, reference, seed):
  rng = np.random.default_rng(seed)
  plan = [("kill_at", float(t)) for t in rng.uniform(0.5, 5.0, 3)]  # mostly start-up
  plan += [("kill_training", float(t)) for t in rng.uniform(0.0, 1.5, 3)]
  plan += [("kill_mid_save", 3)]
  _interrupt_and_resume(tmp_path, compile_cache, reference, plan)


@pytest.mark.parametrize("mode", ["loss", "grad"])
def test_non_finite_step_names_step_and_studies_and_keeps_last_good_checkpoint(tmp_path, mode):
  import jax

  from echo_jax.data import pipeline
  from echo_jax.train import loop

  config = train_driver.make_config("lm", tmp_path, ["total_steps=8"])
  task = train_driver.make_task("lm", config, num_records=23, poison=mode)  # 6 steps an epoch
  # The step whose batch holds the poisoned study, from the same deterministic pipeline.
  it = pipeline.GlobalBatchIterator(
    pipeline.train_dataset(
      range(len(task.train_records)),
      lambda i: {"i": np.int32(i)},
      global_batch_size=config.batch_size,
      seed=config.seed,
    )
  )
  batches = [[task.train_records[i].id for i in next(it)["i"]] for _ in range(8)]
  bad = next(s for s, ids in enumerate(batches) if f"study-{train_driver.POISON:04d}" in ids)
  assert bad > 0  # (seed 0: step 3) so that good checkpoints precede it
  with pytest.raises(loop.NonFiniteBatchError) as error:
    loop.train(config, task, devices=jax.devices()[:1])
  message = str(error.value)
  assert f"at step {bad};" in message
  assert f"The batch of step {bad} held studies: {', '.join(batches[bad])}" in message
  assert ("'loss': nan" if mode == "loss" else "'grad_norm': nan") in message
  assert error.value.step == bad and error.value.study_ids == batches[bad]
  # The newest checkpoint is the state before the bad update; nothing later was written.
  assert complete_steps(tmp_path)[-1] == bad
  assert not list(checkpoint_lib.checkpoint_dir(tmp_path).glob("*.orbax-checkpoint-tmp*"))
