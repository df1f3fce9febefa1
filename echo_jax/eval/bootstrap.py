"""Percentile bootstrap confidence intervals over studies.

Studies are resampled with replacement (``n_boot`` resamples of size N, fixed seed)
and each metric is recomputed on every resample: means of per-study scores,
corpus BLEU from summed n-gram statistics, and rule-based CheXpert F1 from
resampled label matrices. CIDEr-D is resampled from its per-study values with the
IDF of the full test set (recomputing IDF per resample would change the metric's
definition). The interval is the (alpha/2, 1 - alpha/2) percentile of the
resampled values.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

_CHUNK = 100  # resamples per chunk, bounds memory of gathered [R, N, C] arrays


def bootstrap_indices(n: int, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
  """Resampled study indices [n_boot, n]."""
  if n <= 0:
    raise ValueError(f"bootstrap needs at least one study, got n={n}")
  if n_boot <= 0:
    raise ValueError(f"n_boot must be positive, got {n_boot}")
  return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def percentile_ci(samples_R: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
  """(lo, hi) percentile interval of resampled statistic values."""
  if not 0 < alpha < 1:
    raise ValueError(f"alpha must be in (0, 1), got {alpha}")
  lo, hi = np.percentile(
    np.asarray(samples_R, np.float64), [100 * alpha / 2, 100 * (1 - alpha / 2)]
  )
  return float(lo), float(hi)


def resample_stat(stat: Callable[[np.ndarray], np.ndarray], idx_RN: np.ndarray) -> np.ndarray:
  """Applies ``stat`` (index array [r, N] -> values [r]) chunk by chunk: values [R]."""
  return np.concatenate(
    [np.asarray(stat(idx_RN[i : i + _CHUNK])) for i in range(0, len(idx_RN), _CHUNK)]
  )


def mean_ci(values_N: np.ndarray, idx_RN: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
  """CI of the mean of per-study values."""
  v = np.asarray(values_N, np.float64)
  return percentile_ci(resample_stat(lambda ix: v[ix].mean(-1), idx_RN), alpha)
