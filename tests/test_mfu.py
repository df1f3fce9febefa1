"""MFU in the training logs: the device peak table, and mfu = FLOPs / (time x peak x devices)."""

import pathlib

import jax
import numpy as np
import pytest
from flax import nnx
from test_train_step import (
  SEQ,
  VOCAB,
  TinyLM,
  build,
  make_mesh,
  put,
  tiny_batch,
  tiny_config,
  tiny_loss,
)

from echo_jax import config_lib
from echo_jax.train import loop
from echo_jax.train import mesh as mesh_lib
from echo_jax.train import metrics as metrics_lib
from echo_jax.train import mfu as mfu_lib
from echo_jax.train import optimizer as optimizer_lib
from echo_jax.train import step as step_lib
from echo_jax.train.task import Task

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
  "kind, peak",
  [
    ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12),
    ("TPU v5", 459e12),
    ("TPU v5p", 459e12),
    ("TPU v6 lite", 918e12),
    ("NVIDIA A100-SXM4-80GB", 312e12),
    ("NVIDIA A100-SXM4-40GB", 312e12),
    ("NVIDIA H100 80GB HBM3", 989e12),
    ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H200", 989e12),
  ],
)
def test_peak_table(kind, peak):
  assert mfu_lib.peak_flops(kind) == peak


@pytest.mark.parametrize("kind", ["cpu", "TPU v4 lite", "NVIDIA GeForce RTX 4090", ""])
def test_unknown_device_has_no_peak_unless_overridden(kind):
  assert mfu_lib.peak_flops(kind) is None
  assert mfu_lib.peak_flops(kind, override=123e12) == 123e12
  assert mfu_lib.utilization(1e12, 1.0, mfu_lib.peak_flops(kind), 1) is None


def test_negative_override_is_a_user_error():
  with pytest.raises(SystemExit, match="peak_flops"):
    mfu_lib.peak_flops("NVIDIA H200", override=-1.0)


def test_cost_analysis_dict_or_list():
  assert mfu_lib.cost_flops({"flops": 10.0}) == 10.0
  assert mfu_lib.cost_flops([{"flops": 7.0}]) == 7.0
  assert mfu_lib.cost_flops([]) is None and mfu_lib.cost_flops({"flops": -1.0}) is None


class _Recorder(metrics_lib.LogWriter):
  def __init__(self):
    self.rows = []

  def write_scalars(self, step, scalars):
    self.rows.append((step, dict(scalars)))


def test_logger_mfu_is_flops_over_time_peak_devices(monkeypatch):
  clock = iter([100.0, 110.0])  # 10 s over 5 steps: 2 s/step
  monkeypatch.setattr(metrics_lib.time, "perf_counter", lambda: next(clock))
  recorder = _Recorder()
  logger = metrics_lib.MetricLogger(
    recorder, total_steps=100, log_every=5, tokens_per_step=64,
    flops_per_step=3e12, peak_flops=1e12, num_devices=2,
  )  # fmt: skip
  for step in range(10):
    logger.push(step, {"loss": np.float32(1.0), "grad_norm": np.float32(0.5)})
  logger.flush()
  first, last = recorder.rows[0][1], recorder.rows[-1][1]
  assert "mfu" not in first  # no step time before the second write
  assert last["seconds_per_step"] == 2.0
  assert last["mfu"] == pytest.approx(3e12 / (2.0 * 1e12 * 2))
  # The console line puts mfu right after tokens/s.
  assert metrics_lib._console_order(last)[-3:] == ["tokens_per_second", "mfu", "eta_hours"]


def _encode(record: int) -> dict:
  tokens = (record + np.arange(SEQ)) % VOCAB
  return {"tokens": tokens.astype(np.int32), "weights": np.ones(SEQ, np.float32)}


def _run(tmp_path, monkeypatch, **overrides):
  config = config_lib.load(f"{REPO}/configs/ar.py:tiny")
  config.workdir = str(tmp_path)
  config.total_steps, config.batch_size, config.log_every = 3, 8, 1
  config.tensorboard, config.eval_every, config.checkpoint_every = False, 0, 100
  config.optimizer.warmup_steps = 1
  for key, value in overrides.items():
    config_lib.set_key(config, key, value)
  recorder, flops = _Recorder(), []
  monkeypatch.setattr(metrics_lib, "make_writer", lambda *a, **k: recorder)
  real = loop.step_flops
  monkeypatch.setattr(loop, "step_flops", lambda *a: flops.append(real(*a)) or flops[-1])
  task = Task(
    model_fn=lambda: TinyLM(rngs=nnx.Rngs(0)),
    loss_fn=tiny_loss,
    train_records=list(range(32)),
    transform=_encode,
    tokens_per_example=SEQ,
  )
  result = loop.train(config, task, devices=jax.devices()[:1])
  params = sum(x.size for x in jax.tree.leaves((result.state.params, result.state.frozen)))
  return recorder.rows, flops, params


def test_training_log_mfu_equals_flops_over_time_times_peak(tmp_path, monkeypatch):
  peak = 5e9
  rows, flops, params = _run(tmp_path / "a", monkeypatch, peak_flops=peak)
  assert len(flops) == 1 and flops[0] > 0  # costed once, not per step
  # XLA counts every op, so at least the 6 * params * tokens of the matmuls.
  assert flops[0] >= mfu_lib.shape_flops(params, 8 * SEQ) * 0.5
  timed = [s for _, s in rows if "seconds_per_step" in s]
  assert timed and all("mfu" in s for s in timed)
  for s in timed:
    assert s["mfu"] == pytest.approx(flops[0] / (s["seconds_per_step"] * peak * 1), rel=1e-12)


def test_grad_accumulation_costs_the_whole_batch():
  # XLA counts a scan body once: costed naively, two microbatches would count as one.
  config, mesh = tiny_config(), make_mesh()
  batch = put(tiny_batch(0), mesh)
  flops = {}
  for accum in (1, 2):
    config.grad_accum_steps = accum
    graphdef, state, _, step = build(config, mesh, accum=accum)
    tx = optimizer_lib.make_optimizer(config)
    single = lambda: step_lib.make_train_step(graphdef, tiny_loss, tx)  # noqa: B023
    with mesh_lib.use_mesh(mesh):
      flops[accum] = loop.step_flops(config, None, step, single, state, batch)
  assert 0.9 * flops[1] <= flops[2] < 2 * flops[1]


def test_cpu_without_override_logs_no_mfu(tmp_path, monkeypatch):
  rows, flops, _ = _run(tmp_path, monkeypatch)
  assert flops == []
  assert rows and not any("mfu" in s for _, s in rows)
  assert any("tokens_per_second" in s for _, s in rows)
