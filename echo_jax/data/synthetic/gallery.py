"""A contact sheet of a few generated studies with their reports (matplotlib, Agg)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from echo_jax.data.synthetic.atomic_files import atomic_write_bytes


def pick_examples(records: list[dict], n: int = 6) -> list[dict]:
  """Up to n studies covering as many different findings as possible, plus a normal one."""
  chosen, seen = [], set()
  normal = next((r for r in records if r["labels"]["No Finding"] == 1), None)
  if normal is not None:
    chosen.append(normal)
  for r in records:
    kinds = set(r["attributes"]["findings"])
    if len(chosen) < n and r not in chosen and kinds - seen:
      chosen.append(r)
      seen |= kinds
  for r in records:
    if len(chosen) < n and r not in chosen:
      chosen.append(r)
  return chosen[:n]


def write_gallery(out_dir: str | Path, records: list[dict], n: int = 6) -> Path:
  """Writes out_dir/gallery.png with the images and reports of `pick_examples`."""
  import io

  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from PIL import Image

  out = Path(out_dir)
  examples = pick_examples(records, n)
  cols = 3
  rows = (len(examples) + cols - 1) // cols
  n_views = max(len(r["image_path"]) for r in examples)
  img_h = 4.6 / n_views  # inches: views side by side in a 4.6-inch-wide panel
  fig, axes = plt.subplots(
    2 * rows,
    cols,
    figsize=(cols * 4.8, rows * (img_h + 1.9)),
    gridspec_kw={"height_ratios": [img_h, 1.7] * rows, "hspace": 0.08, "wspace": 0.05},
    squeeze=False,
  )
  for ax in axes.ravel():
    ax.axis("off")
  for i, r in enumerate(examples):
    row, col = 2 * (i // cols), i % cols
    views = [np.asarray(Image.open(out / "images" / p)) for p in r["image_path"]]
    axes[row, col].imshow(np.concatenate(views, 1), cmap="gray", vmin=0, vmax=255)
    axes[row, col].set_title(r["id"], fontsize=9)
    text = "\n".join(textwrap.wrap(r["report"], 68))
    axes[row + 1, col].text(0.0, 1.0, text, fontsize=7, va="top", family="monospace")
  fig.subplots_adjust(left=0.01, right=0.99, top=0.97, bottom=0.01)
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=90)
  plt.close(fig)
  path = out / "gallery.png"
  atomic_write_bytes(path, buf.getvalue())
  return path
