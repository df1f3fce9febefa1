"""Training metrics: fetched one step late, checked for non-finite values, written by CLU.

The loop pushes the device-side metrics of step s while step s+1 is already queued,
and only then reads the metrics of step s to the host, so the device never waits for
the host (nanodo's pattern). Every step's loss and gradient norm are checked: a NaN or
Inf stops the run with the step number before anything else is saved.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from echo_jax.train import mfu as mfu_lib

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
  """The loss or gradient norm of a step was NaN or Inf."""

  def __init__(self, step: int, metrics: Mapping[str, float]):
    self.step = step
    bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
    super().__init__(
      f"non-finite training metrics {bad} at step {step}; the newest checkpoint is the last good one. "
      "Lower the learning rate, raise warmup, or inspect the batch of this step."
    )


def format_duration(seconds: float) -> str:
  """h:mm:ss (hours unbounded), e.g. 3725.4 -> "1:02:05"; "?" for a non-finite value."""
  if not math.isfinite(seconds):
    return "?"
  total = max(0, round(seconds))
  return f"{total // 3600}:{total % 3600 // 60:02d}:{total % 60:02d}"


def _scalar_text(key: str, value: float) -> str:
  # The ETA is for people reading the log: a clock duration, not fractional hours.
  if key == "eta_hours":
    return f"eta={format_duration(value * 3600.0)}"
  return f"{key}={value:.6g}"


# The speed scalars close the console line in this order, so that mfu sits beside tokens/s.
_SPEED_KEYS = ("seconds_per_step", "tokens_per_second", "mfu", "eta_hours")


def _console_order(scalars: Mapping[str, float]) -> list[str]:
  rest = sorted(k for k in scalars if k not in _SPEED_KEYS)
  return rest + [k for k in _SPEED_KEYS if k in scalars]


class LogWriter:
  """The CLU MetricWriter methods the loop uses, writing to the Python log only.

  Used when TensorBoard is off: CLU's writers import TensorFlow, which takes seconds.
  """

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    text = ", ".join(_scalar_text(k, scalars[k]) for k in _console_order(scalars))
    log.info("[%d] %s", step, text)

  def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
    for k, v in texts.items():
      log.info("[%d] %s: %s", step, k, v)

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


def make_writer(workdir: str, *, tensorboard: bool = True, enabled: bool | None = None) -> Any:
  """CLU's writer: TensorBoard files under `<workdir>/tensorboard` plus the log (process 0).

  `tensorboard=False` gives the log-only LogWriter without importing TensorFlow.
  """
  enabled = jax.process_index() == 0 if enabled is None else enabled
  if not tensorboard or not enabled:
    return LogWriter()
  from clu import metric_writers  # imports TensorFlow: only when TensorBoard is wanted

  # LogWriter instead of CLU's LoggingWriter, so that the log shows the ETA as h:mm:ss.
  summary = metric_writers.SummaryWriter(f"{workdir}/tensorboard")
  return metric_writers.AsyncMultiWriter([LogWriter(), summary])


class MetricLogger:
  """Collects step metrics one step late and writes averages every `log_every` steps.

  `tokens_per_step` (tokens through the model per optimizer step) gives tokens/s; ETA
  is the remaining steps times the mean step time since the first logged step.
  `flops_per_step` (global FLOPs of one step, set once the step has been lowered, see
  train/mfu.py) and `peak_flops` (per device) give `mfu`; it is left out while either
  is unknown (e.g. on a CPU without `peak_flops` in the config).
  """

  CHECKED = ("loss", "grad_norm")

  def __init__(
    self,
    writer: Any,
    *,
    total_steps: int,
    log_every: int,
    tokens_per_step: int = 0,
    flops_per_step: float | None = None,
    peak_flops: float | None = None,
    num_devices: int = 1,
  ):
    self.writer = writer
    self.total_steps = total_steps
    self.log_every = log_every
    self.tokens_per_step = tokens_per_step
    self.flops_per_step = flops_per_step
    self.peak_flops = peak_flops
    self.num_devices = num_devices
    self._pending: tuple[int, Any] | None = None
    self._window: list[dict[str, float]] = []
    self._last_time: float | None = None
    self._last_step: int | None = None
    self.last_finite_step: int | None = None
    self.history: list[tuple[int, dict[str, float]]] = []

  def push(self, step: int, metrics: Mapping[str, jax.Array]) -> None:
    """Record the (device) metrics of `step`; handles the previous step's metrics now."""
    previous, self._pending = self._pending, (step, metrics)
    if previous is not None:
      self._handle(*previous)

  def flush(self) -> None:
    """Handle the pending step now (before a checkpoint save or at the end)."""
    previous, self._pending = self._pending, None
    if previous is not None:
      self._handle(*previous)

  def _handle(self, step: int, metrics: Mapping[str, jax.Array]) -> None:
    values = {k: float(v) for k, v in jax.device_get(dict(metrics)).items()}
    if not all(math.isfinite(values[k]) for k in self.CHECKED if k in values):
      raise NonFiniteLossError(step, values)
    self.last_finite_step = step
    self.history.append((step, values))
    self._window.append(values)
    if (step + 1) % self.log_every == 0 or step + 1 == self.total_steps:
      self._write(step)

  def _write(self, step: int) -> None:
    now = time.perf_counter()
    keys = self._window[0].keys()
    scalars = {k: float(np.mean([w[k] for w in self._window])) for k in keys}
    if self._last_time is not None and step > self._last_step:
      seconds = (now - self._last_time) / (step - self._last_step)
      scalars["seconds_per_step"] = seconds
      if self.tokens_per_step:
        scalars["tokens_per_second"] = self.tokens_per_step / seconds
      mfu = mfu_lib.utilization(self.flops_per_step, seconds, self.peak_flops, self.num_devices)
      if mfu is not None:
        scalars["mfu"] = mfu
      scalars["eta_hours"] = (self.total_steps - step - 1) * seconds / 3600.0
    self._last_time, self._last_step = now, step
    self._window = []
    # Steps are reported 1-based: "step 10" is the state after 10 optimizer updates.
    self.writer.write_scalars(step + 1, scalars)

  def write_eval(self, step: int, metrics: Mapping[str, float]) -> None:
    self.writer.write_scalars(step, {f"eval/{k}": float(v) for k, v in metrics.items()})

  def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
    """Sample reports and the like (TensorBoard text tab)."""
    self.writer.write_texts(step, dict(texts))

  def close(self) -> None:
    self.writer.flush()
    self.writer.close()
