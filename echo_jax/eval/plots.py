"""Quality against tokens-per-forward (TPF) for the evaluated models (cf. ECHO Fig. 1b).

One panel per quality metric (two per row); each model is a point at (TPF,
metric) with its bootstrap interval as a vertical bar, named in a shared legend.
Uses matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

from echo_jax.eval.safe_text import displayable

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


MAX_WIDTH_PX = 1280  # the figure must fit a laptop screen and the HTML page unscaled
DPI = 110
_MARKERS = "osD^vP*Xh<>p"


def quality_vs_tpf_figure(
  models: Mapping[str, Mapping[str, Any]], metrics: Sequence[tuple[str, str]] | None = None
) -> Any:
  """The matplotlib Figure of the plot, or None when no model has a TPF figure.

  At most two panels per row keep it within MAX_WIDTH_PX. Models are told apart by
  colour and marker in one legend under the panels instead of text next to each
  point, so names never overlap however close the points are.
  """
  import matplotlib  # heavy; only needed when a plot is drawn

  matplotlib.use("Agg", force=False)
  import matplotlib.pyplot as plt

  metrics = list(metrics) if metrics is not None else plottable(models)
  pts = {n: m for n, m in models.items() if m["speed"].get("tpf") is not None}
  if not pts or not metrics:
    return None
  cols = min(2, len(metrics))
  rows = math.ceil(len(metrics) / cols)
  legend_cols = min(len(pts), 3)
  legend_rows = math.ceil(len(pts) / legend_cols)
  legend_in = 0.3 + 0.25 * legend_rows
  width_in = (MAX_WIDTH_PX - 16) / DPI
  fig, axes = plt.subplots(rows, cols, figsize=(width_in, 3.3 * rows + legend_in), squeeze=False)
  colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  style = {
    name: (colours[i % len(colours)], _MARKERS[i % len(_MARKERS)]) for i, name in enumerate(pts)
  }
  handles = {}
  for ax, (key, title) in zip(axes.flat, metrics):
    for name, m in pts.items():
      y = m["metrics"].get(key)
      if y is None:
        continue
      x = m["speed"]["tpf"]
      ci = m.get("ci", {}).get(key)
      colour, marker = style[name]
      yerr = [[y - ci[0]], [ci[1] - y]] if ci else None
      h = ax.errorbar(
        [x], [y], yerr=yerr, fmt=marker, color=colour, capsize=3, markersize=6, linestyle="none"
      )
      handles.setdefault(name, h)
    xmax = max(m["speed"]["tpf"] for m in pts.values())
    ax.set_xlim(0, xmax * 1.1 + 0.5)
    ax.margins(y=0.15)
    ax.set_xlabel("tokens per forward (TPF)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
  for ax in list(axes.flat)[len(metrics) :]:
    ax.set_visible(False)
  names = [n for n in pts if n in handles]
  fig.legend(
    [handles[n] for n in names],
    [displayable(n) for n in names],
    loc="lower center",
    ncol=legend_cols,
    fontsize=9,
    frameon=False,
  )
  fig.tight_layout(rect=(0, legend_in / fig.get_figheight(), 1, 1))
  return fig


def quality_vs_tpf_png(
  models: Mapping[str, Mapping[str, Any]], metrics: Sequence[tuple[str, str]] | None = None
) -> bytes | None:
  """PNG bytes of the plot, or None when no model has a TPF figure."""
  import matplotlib.pyplot as plt  # heavy; only needed when a plot is drawn

  fig = quality_vs_tpf_figure(models, metrics)
  if fig is None:
    return None
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=DPI)
  plt.close(fig)
  return buf.getvalue()
