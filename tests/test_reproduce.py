"""The main job end to end on a very small synthetic set: every stage, every model, results.

Runs `python -m echo_jax.main --config=configs/dcd.py` in a subprocess (one CPU device)
with tiny step counts, then checks what a user reads: results.json rows, results.md,
the HTML report, the stage checkpoints, and that a second run reuses every stage.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import pytest

from echo_jax import config_lib, reproduce

REPO = pathlib.Path(__file__).resolve().parents[1]
STAGES = ("vision", "ar", "rad", "dcd_b4", "dcd_b8")


def _overrides(workdir):
  out = [
    f"--config.workdir={workdir}",
    "--config.eval.num_studies=4",
    "--config.eval.batch_size=4",
    "--config.eval.n_boot=10",
  ]
  for s in STAGES:
    out += [
      f"--config.stages.{s}.total_steps=2",
      f"--config.stages.{s}.optimizer.warmup_steps=1",
      f"--config.stages.{s}.batch_size=4",
      f"--config.stages.{s}.data.num_studies=40",
      f"--config.stages.{s}.log_every=1",
      f"--config.stages.{s}.tensorboard=False",
    ]
  out.append("--config.stages.vision.eval_every=2")  # the per-label AUC hook runs too
  return out


def _run(workdir, *extra):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  cmd = [sys.executable, "-m", "echo_jax.main", "--config=configs/dcd.py", *_overrides(workdir)]
  proc = subprocess.run(
    ["timeout", "-k", "10", "900", *cmd, *extra],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc.stderr


@pytest.mark.e2e
def test_main_job_end_to_end(tmp_path):
  workdir = tmp_path / "tiny"
  log = _run(workdir)
  results = json.loads((workdir / "results.json").read_text())
  rows = {r["name"]: r for r in results["models"]}
  config = config_lib.load(str(REPO / "configs/dcd.py"), ())
  decoded = [*config.eval.rows, *config.eval.deranged_rows]
  assert list(rows) == [row[0] for row in decoded] + [reproduce.CONSTANT_ROW]
  constant = rows[reproduce.CONSTANT_ROW]
  assert constant["tpf"] is None and constant["num_reports"] == 4
  assert rows["AR, images of another study"]["images_of_another_study"]
  swapped = [
    json.loads(line)
    for line in (workdir / "eval/predictions/ar__images_of_another_study.jsonl").open()
  ]
  own = [json.loads(line) for line in (workdir / "eval/predictions/ar.jsonl").open()]
  assert [r["id"] for r in swapped] == [r["id"] for r in own]
  assert all(a["images"] != b["images"] for a, b in zip(swapped, own))
  for (_, stage, sampler, block), row in zip(decoded, results["models"]):
    assert (row["stage"], row["sampler"], row["block_len"]) == (stage, sampler, block)
    assert row["num_reports"] == 4
    assert row["tokens_per_second"] > 0 and row["ms_per_report"] > 0
    assert 0.0 < row["lockstep_occupancy"] <= 1.0
    if sampler == "ar":
      assert row["tpf"] == 1.0
    if sampler == "one_step":
      # One forward per block: B tokens each, except a stopped report's last block.
      assert 1.0 <= row["tpf"] <= block
    for key, _ in reproduce.TABLE_METRICS:
      assert 0.0 <= row["metrics"][key] <= 100.0
  table = (workdir / "results.md").read_text()
  assert all(name in table for name in rows)
  # The versions that decide the numbers travel with them.
  assert results["versions"]["jax"] == jax.__version__
  assert f"jax {jax.__version__}" in table
  assert (workdir / "eval" / "report.html").stat().st_size > 1000
  for stage in STAGES:
    assert reproduce.finished_step(str(workdir / stage)) == 2
  assert "stage dcd_b8 (dcd, 2 steps)" in log

  # A second run trains nothing: every stage is reused.
  log = _run(workdir, "--config.eval.run=False")
  for stage in STAGES:
    assert f"stage {stage}" in log and "reusing it" in log
  assert "loss=" not in log


# Slow: the default run's main-job test above trains every stage through the same entry
# point, and resuming is tested in tests/test_checkpoint.py and tests/test_preemption.py.
@pytest.mark.slow
@pytest.mark.e2e
def test_single_stage_runs_from_a_fresh_checkout_and_resumes(tmp_path):
  work = tmp_path / "rad"  # given relative to the working directory, as users do
  small = [
    f"--config.data.path={tmp_path / 'data'}",
    "--config.data.num_studies=20",
    "--config.batch_size=2",
    "--config.log_every=1",
    "--config.optimizer.warmup_steps=1",
    "--config.sample_every=2",
    "--config.num_samples=2",
  ]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}

  def run(steps):
    cmd = [sys.executable, "-m", "echo_jax.main", f"--config={REPO}/configs/rad.py:tiny"]
    cmd += ["--workdir=rad", f"--config.total_steps={steps}", *small]
    proc = subprocess.run(
      ["timeout", "-k", "10", "600", *cmd], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stderr

  log = run(2)
  assert reproduce.finished_step(str(work)) == 2
  assert "sample_1" in log and "(multi_step):" in log  # generated validation reports
  assert list((work / "tensorboard").glob("events.out.tfevents.*"))
  log = run(3)
  assert "resumed from" in log and "] [3]" in log
  assert reproduce.finished_step(str(work)) == 3
