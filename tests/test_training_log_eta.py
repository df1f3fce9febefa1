"""Training logs show the ETA as h:mm:ss (the scalar itself stays numeric for TensorBoard)."""

import logging

import numpy as np
import pytest

from echo_jax.train import metrics as metrics_lib


@pytest.mark.parametrize(
  "seconds, text",
  [(0, "0:00:00"), (59.6, "0:01:00"), (3725.4, "1:02:05"), (90061, "25:01:01"), (-3, "0:00:00")],
)
def test_format_duration(seconds, text):
  assert metrics_lib.format_duration(seconds) == text


def test_format_duration_non_finite():
  assert metrics_lib.format_duration(float("inf")) == "?"
  assert metrics_lib.format_duration(float("nan")) == "?"


class _Recorder:
  def __init__(self):
    self.rows = []

  def write_scalars(self, step, scalars):
    self.rows.append((step, dict(scalars)))


def test_log_line_shows_eta_clock_and_scalar_stays_numeric(monkeypatch, caplog):
  clock = iter([100.0, 110.0, 120.0])  # 10 s between logged steps, 5 steps apart -> 2 s/step
  monkeypatch.setattr(metrics_lib.time, "perf_counter", lambda: next(clock))
  recorder = _Recorder()
  logger = metrics_lib.MetricLogger(recorder, total_steps=1000, log_every=5)
  for step in range(10):
    logger.push(step, {"loss": np.float32(1.0), "grad_norm": np.float32(0.5)})
  logger.flush()
  step, scalars = recorder.rows[-1]
  assert step == 10
  # 990 steps left at 2 s/step = 1980 s.
  assert scalars["eta_hours"] == pytest.approx(1980 / 3600)
  with caplog.at_level(logging.INFO, logger=metrics_lib.log.name):
    metrics_lib.LogWriter().write_scalars(step, scalars)
  line = caplog.records[-1].getMessage()
  assert "eta=0:33:00" in line and "eta_hours" not in line
  assert "seconds_per_step=2" in line and "loss=1" in line
