"""Rule-based CheXpert F1: clinical agreement of generated and reference reports.

Both reports go through the same rule-based CheXpert labeler
(``chexpert_labeler.py``); each of the 14 observations becomes a binary label:
positive (1) is positive, blank (NaN) and negative (0) are negative, and
uncertain (-1) follows the ``uncertain`` switch ("positive": counted as positive,
the usual choice in report-generation papers; "negative": counted as negative).
The reference report's labels are the ground truth.

F1 is reported micro (pooled TP/FP/FN) and macro (mean of per-label F1, a label
with no positives in either report set scores 0 as in scikit-learn's default)
over the 14 observations and over the 5 common ones (Atelectasis, Cardiomegaly,
Consolidation, Edema, Pleural Effusion). This is rule-based CheXpert F1, not
CheXbert F1: a learned labeler would give different numbers.
"""

from __future__ import annotations

import numpy as np

from echo_jax.eval.chexpert_phrases import COMMON5, OBSERVATIONS

UNCERTAIN_MODES = ("positive", "negative")
IDX5 = np.array([OBSERVATIONS.index(o) for o in COMMON5])
IDX14 = np.arange(len(OBSERVATIONS))


def binarize(labels_NC: np.ndarray, uncertain: str = "positive") -> np.ndarray:
  """Labels in {1, 0, -1, NaN} -> bool [N, C]; uncertain per the switch."""
  if uncertain not in UNCERTAIN_MODES:
    raise ValueError(f"uncertain must be one of {UNCERTAIN_MODES}, got {uncertain!r}")
  labels_NC = np.asarray(labels_NC, np.float64)
  pos = labels_NC == 1.0
  if uncertain == "positive":
    pos |= labels_NC == -1.0
  return pos


def f1_counts(pred_NC: np.ndarray, ref_NC: np.ndarray) -> np.ndarray:
  """TP, FP, FN per label, summed over the study axis: [..., 3, C] from bool [..., N, C]."""
  tp = (pred_NC & ref_NC).sum(-2)
  fp = (pred_NC & ~ref_NC).sum(-2)
  fn = (~pred_NC & ref_NC).sum(-2)
  return np.stack([tp, fp, fn], axis=-2).astype(np.float64)


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
  den = 2 * tp + fp + fn
  return np.where(den > 0, 2 * tp / np.maximum(den, 1), 0.0)


def f1_from_counts(counts_3C: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(micro F1, macro F1) over label indices ``idx`` from counts [..., 3, C]."""
  c = counts_3C[..., idx]
  tp, fp, fn = c[..., 0, :], c[..., 1, :], c[..., 2, :]
  micro = _f1(tp.sum(-1), fp.sum(-1), fn.sum(-1))
  macro = _f1(tp, fp, fn).mean(-1)
  return micro, macro


def clinical_f1(
  pred_labels_NC: np.ndarray, ref_labels_NC: np.ndarray, uncertain: str = "positive"
) -> dict[str, float | None]:
  """Rule-based CheXpert F1 from labeler outputs [N, 14] of generated and reference reports.

  Returns keys f1_micro_14, f1_macro_14, f1_micro_5, f1_macro_5, precision_micro_14,
  recall_micro_14 and ``f1/<observation>`` per label (None when no report of
  either set has that label: F1 is undefined there).
  """
  pred_labels_NC = np.asarray(pred_labels_NC, np.float64)
  ref_labels_NC = np.asarray(ref_labels_NC, np.float64)
  if pred_labels_NC.shape != ref_labels_NC.shape or pred_labels_NC.shape[-1:] != (
    len(OBSERVATIONS),
  ):
    raise ValueError(
      f"label arrays must both be [N, {len(OBSERVATIONS)}], got {pred_labels_NC.shape} and {ref_labels_NC.shape}"
    )
  counts = f1_counts(binarize(pred_labels_NC, uncertain), binarize(ref_labels_NC, uncertain))
  out: dict[str, float] = {}
  for name, idx in (("14", IDX14), ("5", IDX5)):
    mi, ma = f1_from_counts(counts, idx)
    out[f"f1_micro_{name}"] = float(mi)
    out[f"f1_macro_{name}"] = float(ma)
  tp, fp, fn = counts.sum(-1)
  out["precision_micro_14"] = float(tp / (tp + fp)) if tp + fp > 0 else 0.0
  out["recall_micro_14"] = float(tp / (tp + fn)) if tp + fn > 0 else 0.0
  per = _f1(counts[0], counts[1], counts[2])
  for o, v, c in zip(OBSERVATIONS, per, counts.sum(0)):
    # undefined (None) when neither report set has the label; macro F1 counts it as 0
    out[f"f1/{o}"] = float(v) if c > 0 else None
  return out
