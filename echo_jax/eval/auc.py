"""ROC AUC per label from scores and binary targets (the Mann-Whitney U statistic)."""

from __future__ import annotations

import numpy as np


def roc_auc(scores_N: np.ndarray, targets_N: np.ndarray) -> float | None:
  """AUC of one label: P(score of a positive > score of a negative), ties counting half.

  None when the targets hold only one class (AUC is undefined there).
  """
  scores = np.asarray(scores_N, np.float64).reshape(-1)
  positive = np.asarray(targets_N).reshape(-1) > 0.5
  n_pos, n_neg = int(positive.sum()), int((~positive).sum())
  if scores.shape != positive.shape:
    raise ValueError(f"{scores.shape[0]} scores but {positive.shape[0]} targets")
  if n_pos == 0 or n_neg == 0:
    return None
  # Average ranks (1-based) handle ties exactly.
  order = np.argsort(scores, kind="mergesort")
  ranks = np.empty(len(scores), np.float64)
  sorted_scores = scores[order]
  starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
  ends = np.r_[starts[1:], len(scores)]
  for s, e in zip(starts, ends, strict=True):
    ranks[order[s:e]] = (s + e + 1) / 2.0
  u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
  return float(u / (n_pos * n_neg))


def per_label_auc(
  scores_NT: np.ndarray, targets_NT: np.ndarray, mask_NT: np.ndarray | None = None
) -> list[float | None]:
  """AUC of each column over the rows where `mask_NT` (default: all) is set."""
  scores_NT, targets_NT = np.asarray(scores_NT), np.asarray(targets_NT)
  mask_NT = np.ones_like(targets_NT, bool) if mask_NT is None else np.asarray(mask_NT) > 0
  return [
    roc_auc(scores_NT[mask_NT[:, t], t], targets_NT[mask_NT[:, t], t])
    for t in range(targets_NT.shape[1])
  ]
