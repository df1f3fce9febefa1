"""Quality against tokens-per-forward (TPF) for the evaluated models (cf. ECHO Fig. 1b).

One panel per quality metric; each model is a point at (TPF, metric) with its
bootstrap interval as a vertical bar and its name as a label. Uses matplotlib's
Agg backend (no display needed).
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

# Preferred quality metrics, in order; absent or not computed ones are skipped.
QUALITY_METRICS: tuple[tuple[str, str], ...] = (
  ("echo/rouge_l", "ROUGE-L (ECHO convention)"),
  ("chexpert/f1_micro_14", "Rule-based CheXpert F1 (micro-14)"),
  ("ratescore", "RaTEScore (positive)"),
  ("semscore", "SemScore"),
  ("r2gen/bleu_4", "BLEU-4 (R2Gen convention)"),
)


def plottable(models: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str]]:
  """Quality metrics (key, title) with a value for at least one model that has a TPF."""
  with_tpf = [m for m in models.values() if m["speed"].get("tpf") is not None]
  return [
    (k, t) for k, t in QUALITY_METRICS if any(m["metrics"].get(k) is not None for m in with_tpf)
  ][:4]


def quality_vs_tpf_png(
  models: Mapping[str, Mapping[str, Any]], metrics: Sequence[tuple[str, str]] | None = None
) -> bytes | None:
  """PNG bytes of the plot, or None when no model has a TPF figure."""
  import matplotlib

  matplotlib.use("Agg", force=False)
  import matplotlib.pyplot as plt

  metrics = list(metrics) if metrics is not None else plottable(models)
  pts = {n: m for n, m in models.items() if m["speed"].get("tpf") is not None}
  if not pts or not metrics:
    return None
  fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
  for ax, (key, title) in zip(axes[0], metrics):
    for name, m in pts.items():
      y = m["metrics"].get(key)
      if y is None:
        continue
      x = m["speed"]["tpf"]
      ci = m.get("ci", {}).get(key)
      if ci:
        ax.errorbar([x], [y], yerr=[[y - ci[0]], [ci[1] - y]], fmt="o", capsize=3)
      else:
        ax.plot([x], [y], "o")
      ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    xmax = max(m["speed"]["tpf"] for m in pts.values())
    ax.set_xlim(0, xmax * 1.25 + 0.5)  # room for the name labels right of the points
    ax.margins(y=0.15)
    ax.set_xlabel("tokens per forward (TPF)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=110)
  plt.close(fig)
  return buf.getvalue()


def write_quality_vs_tpf(
  models: Mapping[str, Mapping[str, Any]], path: str | os.PathLike[str]
) -> bool:
  """Writes the PNG to ``path``; returns False (writes nothing) when there is nothing to plot."""
  png = quality_vs_tpf_png(models)
  if png is None:
    return False
  with open(path, "wb") as f:
    f.write(png)
  return True
