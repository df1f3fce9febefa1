"""Model FLOPs utilization: FLOPs of one training step over the time it took at peak speed.

    flops = lowered_flops(train_step, state, batch)    # once, after the first step
    peak = peak_flops(jax.devices()[0].device_kind)    # per device, or None (unknown)
    mfu = utilization(flops, seconds_per_step, peak, jax.device_count())

FLOPs are global: the whole step over the whole global batch. They come from XLA's
cost analysis of the *lowered* (not yet partitioned) step, so they do not depend on
the mesh; the compiled program's cost analysis would count one device's share. The
utilization divides by the peak of all devices together:

    MFU = flops_per_step / (seconds_per_step * peak_per_device * num_devices)

which equals each device's share over its own peak when the work is balanced.

What XLA counts: every op of the step (matmuls, elementwise, the optimizer update) and,
with `model.remat`, the recomputed forward too, so with remat the figure is closer to
hardware utilization than to the textbook 6 * params * tokens. XLA counts the body of a
loop once, so a step with gradient accumulation (a `lax.scan` over microbatches) is
costed as one microbatch's step times the number of microbatches. When the backend
gives no cost analysis, `shape_flops` estimates from shapes (PaLM's appendix B):
6 * params * tokens + 12 * layers * width * sequence * tokens.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

# Dense bf16 peaks in FLOP/s per chip, from the vendors' data sheets (sparsity excluded).
# Each pattern is matched in full against the lower-cased `device.device_kind`; the first
# match wins, so the specific GPU variants come before the generic ones.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
  (r"tpu v4", 275e12),
  (r"tpu v5 ?lite|tpu v5e", 197e12),
  (r"tpu v5p?", 459e12),  # JAX reports v5p as "TPU v5"
  (r"tpu v6 ?lite|tpu v6e", 918e12),
  (r"nvidia a100.*", 312e12),
  (r"nvidia h100.*pcie.*", 756e12),
  (r"nvidia h100.*nvl.*", 835e12),
  (r"nvidia h100.*", 989e12),  # SXM ("NVIDIA H100 80GB HBM3")
  (r"nvidia h200.*nvl.*", 835e12),
  (r"nvidia h200.*", 989e12),
  (r"nvidia gh200.*", 989e12),
)


def peak_flops(device_kind: str, override: float = 0.0) -> float | None:
  """Peak FLOP/s of one device: `override` when > 0, else the table's entry, else None."""
  if override < 0:
    raise SystemExit(f"peak_flops={override} must be >= 0 (0 = from the device table)")
  if override > 0:
    return float(override)
  kind = device_kind.strip().lower()
  return next((peak for pattern, peak in PEAK_BF16_FLOPS if re.fullmatch(pattern, kind)), None)


def cost_flops(cost: Any) -> float | None:
  """The "flops" of a cost analysis: a dict (jax 0.10) or a list of per-program dicts."""
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  return float(flops) if flops is not None and flops > 0 else None


def lowered_flops(fn: Callable, *args: Any) -> float | None:
  """Global FLOPs of `jax.jit`-ed `fn(*args)` from the lowered program; None if unavailable.

  Lowering only traces: the arguments are not consumed (donation happens at the call).
  """
  try:
    return cost_flops(fn.lower(*args).cost_analysis())
  except Exception:  # a backend without cost analysis: the caller falls back to shapes
    return None


def shape_flops(
  num_params: int, tokens: int, *, num_layers: int = 0, width: int = 0, seq_len: int = 0
) -> float:
  """6 N T + 12 * layers * width * seq_len * T: matmul FLOPs of a training step over T tokens.

  `width` is query heads x head dim; the attention term is dropped when any of it is 0.
  """
  return 6.0 * num_params * tokens + 12.0 * num_layers * width * seq_len * tokens


def utilization(
  flops_per_step: float | None, seconds_per_step: float, peak: float | None, num_devices: int
) -> float | None:
  """flops_per_step / (seconds_per_step * peak * num_devices); None without FLOPs or peak."""
  if not flops_per_step or not peak or seconds_per_step <= 0:
    return None
  return flops_per_step / (seconds_per_step * peak * num_devices)
