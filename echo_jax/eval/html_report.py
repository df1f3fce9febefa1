"""Self-contained HTML evaluation report (opens offline: inline CSS, images as base64).

Sections: summary table of every metric with bootstrap intervals, speed table
(TPF, tokens/s), the quality-vs-TPF plot, per-observation rule-based CheXpert F1,
and one card per study: thumbnails, generated and reference reports side by side
with the labeler's mentions marked (red positive, green negative, amber
uncertain; a thick outline where the two reports disagree on that observation).
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image

from echo_jax.data.images import BadImageError, load_image
from echo_jax.eval.chexpert_labeler import NEGATIVE, POSITIVE, CheXpertLabeler
from echo_jax.eval.chexpert_phrases import OBSERVATIONS
from echo_jax.eval.safe_text import displayable

SUMMARY_COLUMNS: tuple[tuple[str, str], ...] = (
  ("r2gen/bleu_1", "BLEU-1"),
  ("r2gen/bleu_4", "BLEU-4"),
  ("r2gen/meteor", "METEOR"),
  ("r2gen/rouge_l", "ROUGE-L"),
  ("r2gen/cider_d", "CIDEr-D"),
  ("echo/rouge_l", "ROUGE-L (ECHO)"),
  ("echo/cider_d", "CIDEr-D (ECHO)"),
  ("chexpert/f1_micro_14", "CheXpert F1 micro-14"),
  ("chexpert/f1_macro_14", "macro-14"),
  ("chexpert/f1_micro_5", "micro-5"),
  ("chexpert/f1_macro_5", "macro-5"),
  ("semscore", "SemScore"),
  ("ratescore", "RaTEScore+"),
)

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#1d2330;background:#fafbfc}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
.note{color:#57606a;font-size:13px}
table{border-collapse:collapse;font-size:13px;background:#fff}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:right;vertical-align:top}
th{background:#f0f3f6} td.l,th.l{text-align:left}
.ci{display:block;color:#8c959f;font-size:11px}
.na{color:#8c959f}
.card{background:#fff;border:1px solid #d0d7de;border-radius:6px;margin:12px 0;padding:10px}
.card h3{font-size:14px;margin:0 0 6px}
.thumbs img{height:120px;margin-right:6px;border:1px solid #d0d7de}
.pair{display:flex;gap:12px} .pair>div{flex:1;min-width:0}
.pair h4{margin:4px 0;font-size:12px;color:#57606a;text-transform:uppercase}
.rep{font-size:13px;line-height:1.55;white-space:pre-wrap;background:#f6f8fa;border-radius:4px;padding:6px}
.m{border-radius:3px;padding:0 2px} .pos{background:#ffd8d3} .neg{background:#d3f5dc} .unc{background:#fff0b3}
.dis{outline:2px solid #cf222e;font-weight:600}
.chips{font-size:12px;color:#57606a;margin-top:4px} .chips span{display:inline-block;font-size:11px;border-radius:10px;padding:1px 8px;margin:2px;background:#ffebe9;color:#82071e}
.scores{font-size:12px;color:#57606a;margin-top:4px}
.legend span{margin-right:10px}
"""


def _fmt(v: Any, digits: int = 3) -> str:
  if v is None:
    return '<span class="na">n/a</span>'
  return f"{v:.{digits}f}"


def _summary_table(models: Mapping[str, Any]) -> str:
  cols = [(k, t) for k, t in SUMMARY_COLUMNS if any(k in m["metrics"] for m in models.values())]
  head = "".join(f"<th>{html.escape(t)}</th>" for _, t in cols)
  rows = []
  for name, m in models.items():
    cells = []
    for k, _ in cols:
      v, ci = m["metrics"].get(k), m["ci"].get(k)
      ci_s = f'<span class="ci">[{ci[0]:.3f}, {ci[1]:.3f}]</span>' if ci else ""
      cells.append(f"<td>{_fmt(v)}{ci_s}</td>")
    rows.append(f'<tr><td class="l">{html.escape(name)}</td><td>{m["n"]}</td>{"".join(cells)}</tr>')
  return f'<table><tr><th class="l">model</th><th>N</th>{head}</tr>{"".join(rows)}</table>'


def _speed_table(models: Mapping[str, Any]) -> str:
  extra = sorted({k for m in models.values() for k in m["speed"] if k.startswith("mean_")})
  head = "".join(f"<th>{html.escape(k[5:])} (mean)</th>" for k in extra)
  rows = []
  for name, m in models.items():
    s = m["speed"]
    cells = "".join(f"<td>{_fmt(s.get(k), 2)}</td>" for k in extra)
    rows.append(
      f'<tr><td class="l">{html.escape(name)}</td><td>{s["n_with_stats"]}</td>'
      f"<td>{_fmt(s.get('tpf'), 2)}</td><td>{_fmt(s.get('tokens_per_second'), 1)}</td>{cells}</tr>"
    )
  return (
    '<table><tr><th class="l">model</th><th>records with stats</th><th>TPF</th><th>tokens/s</th>'
    f"{head}</tr>{''.join(rows)}</table>"
  )


def _per_label_table(models: Mapping[str, Any]) -> str:
  names = list(models)
  head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
  rows = []
  for o in OBSERVATIONS:
    cells = "".join(f"<td>{_fmt(models[n]['metrics'].get(f'chexpert/f1/{o}'))}</td>" for n in names)
    rows.append(f'<tr><td class="l">{html.escape(o)}</td>{cells}</tr>')
  return f'<table><tr><th class="l">observation</th>{head}</tr>{"".join(rows)}</table>'


def _marked(text: str, labeler: CheXpertLabeler, disagree: set[str]) -> str:
  parts, pos = [], 0
  for m in labeler.mentions(text):
    if m.start < pos:
      continue  # overlapping mention of another observation: first one wins
    cls = {POSITIVE: "pos", NEGATIVE: "neg"}.get(m.status, "unc")
    if m.observation in disagree:
      cls += " dis"
    status = {POSITIVE: "positive", NEGATIVE: "negative"}.get(m.status, "uncertain")
    tip = f"{m.observation}: {status}" + (f" (cue: {m.cue})" if m.cue else "")
    parts.append(html.escape(text[pos : m.start]))
    parts.append(
      f'<span class="m {cls}" title="{html.escape(tip)}">{html.escape(text[m.start : m.end])}</span>'
    )
    pos = m.end
  parts.append(html.escape(text[pos:]))
  return "".join(parts)


def _binary(v: int | None, uncertain: str) -> bool:
  return v == 1 or (v == -1 and uncertain == "positive")


def thumbnail(path: str, size: int = 200) -> tuple[str | None, str | None]:
  """(JPEG data URI of a grey-scale thumbnail, None) or (None, why it cannot be read).

  Goes through echo_jax's image loader, so DICOM files (windowing, MONOCHROME1)
  look as the model saw them.
  """
  try:
    im = load_image(path).convert("L")
  except BadImageError as e:  # an unreadable image is shown as such, not fatal for the report
    return None, e.reason
  except OSError as e:
    return None, e.strerror or type(e).__name__
  im.thumbnail((size, size), Image.Resampling.LANCZOS)
  buf = io.BytesIO()
  im.save(buf, format="JPEG", quality=85)  # JPEG: a report of hundreds of cards stays small
  return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode(), None


def image_paths(record: Mapping[str, Any], images_root: str | None) -> list[str]:
  """Image paths of a record (``image_path`` or ``images``; str or list) joined to the root.

  Without a root, relative paths are taken as they are (relative to the working
  directory), which is how `generate` and the main job write them.
  """
  raw = record.get("image_path", record.get("images"))
  if raw is None:
    return []
  paths = [raw] if isinstance(raw, str) else list(raw)
  return [
    p if images_root is None or os.path.isabs(p) else os.path.join(images_root, p) for p in paths
  ]


def _card(
  rec: Mapping[str, Any],
  row: Mapping[str, Any],
  labeler: CheXpertLabeler,
  uncertain: str,
  images_root: str | None,
  thumbs_cache: dict[str, tuple[str | None, str | None]],
) -> str:
  lp, lr = row["labels_prediction"], row["labels_reference"]
  disagree = {o for o in OBSERVATIONS if _binary(lp[o], uncertain) != _binary(lr[o], uncertain)}
  imgs = []
  for p in image_paths(rec, images_root):
    if p not in thumbs_cache:
      thumbs_cache[p] = thumbnail(p)
    uri, why = thumbs_cache[p]
    name = html.escape(os.path.basename(p))
    imgs.append(
      f'<img src="{uri}" alt="{name}">'
      if uri
      else f'<span class="na">[{name}: {html.escape(why)}]</span>'
    )
  thumbs = f'<div class="thumbs">{"".join(imgs)}</div>' if imgs else ""
  chips = "".join(f"<span>{html.escape(o)}</span>" for o in OBSERVATIONS if o in disagree)
  chips = (
    f'<div class="chips">disagree: {chips}</div>'
    if chips
    else '<div class="chips note">labels agree</div>'
  )
  keys = [
    k for k in ("echo/rouge_l", "r2gen/bleu_4", "echo/cider_d", "semscore", "ratescore") if k in row
  ]
  scores = " · ".join(f"{k} {row[k]:.3f}" for k in keys)
  speed = " · ".join(
    f"{k} {row[k]:.2f}" for k in ("tpf", "tokens_per_second") if row.get(k) is not None
  )
  return (
    f'<div class="card"><h3>{html.escape(row["id"])} <span class="note">({html.escape(row["model"])})</span></h3>'
    f'{thumbs}<div class="pair"><div><h4>generated</h4><div class="rep">{_marked(rec["prediction"], labeler, disagree)}</div></div>'
    f'<div><h4>reference</h4><div class="rep">{_marked(rec["reference"], labeler, disagree)}</div></div></div>'
    f'{chips}<div class="scores">{scores}{" · " + speed if speed else ""}</div></div>'
  )


def render_html(
  result: Mapping[str, Any],
  records: Sequence[Mapping[str, Any]],
  plot_png: bytes | None = None,
  images_root: str | None = None,
  labeler: CheXpertLabeler | None = None,
  max_studies: int = 100,
  title: str = "echo_jax report evaluation",
) -> str:
  """The report as one HTML string; ``records`` supply texts and image paths by (model, id)."""
  labeler = labeler or CheXpertLabeler()
  models = result["models"]
  uncertain = result["options"]["uncertain"]
  by_key = {(str(r.get("model") or "model"), str(r["id"])): r for r in records}
  cards, shown = [], {}
  thumbs_cache: dict[str, tuple[str | None, str | None]] = {}  # models share a study's images
  # Worst studies first within each model: least label agreement, then lowest ROUGE-L.
  order = sorted(
    result["per_study"],
    key=lambda r: (
      list(models).index(r["model"]),
      r.get("chexpert/agreement_14", 1.0),
      r.get("echo/rouge_l", 0.0),
    ),
  )
  for row in order:
    if shown.get(row["model"], 0) >= max_studies:
      continue
    rec = by_key.get((row["model"], row["id"]))
    if rec is None:
      continue
    shown[row["model"]] = shown.get(row["model"], 0) + 1
    cards.append(_card(rec, row, labeler, uncertain, images_root, thumbs_cache))
  nc = result.get("not_computed") or []
  nc_html = f'<p class="note">Not computed (n/a): {html.escape(", ".join(nc))}.</p>' if nc else ""
  notes = result.get("notes") or {}
  if notes:
    items = "".join(f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in notes.items())
    nc_html += f'<ul class="note">{items}</ul>'
  n_studies = len({row["id"] for row in result["per_study"]})
  n_reports = len(result["per_study"])
  plot = (
    f'<img alt="quality vs TPF" src="data:image/png;base64,{base64.b64encode(plot_png).decode()}">'
    if plot_png
    else '<p class="note">No TPF figures in the records\' stats: nothing to plot.</p>'
  )
  opts = result["options"]
  page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{CSS}</style></head>
<body><h1>{html.escape(title)}</h1>
<p class="note">{n_studies} studies, {len(models)} model(s), {n_reports} reports. Lexical conventions:
{html.escape(", ".join(opts["conventions"]))}. Rule-based CheXpert F1 with uncertain labels counted as
{html.escape(uncertain)}. {int(100 * (1 - opts["alpha"]))}% bootstrap intervals over studies ({opts["n_boot"]} resamples).</p>
{nc_html}
<h2>Summary</h2>{_summary_table(models)}
<h2>Speed</h2>{_speed_table(models)}
<h2>Quality against tokens per forward</h2>{plot}
<h2>Rule-based CheXpert F1 per observation</h2>{_per_label_table(models)}
<h2>Studies</h2>
<p class="note legend"><span class="m pos">positive</span><span class="m neg">negative</span><span class="m unc">uncertain</span>
<span class="m pos dis">disagreement</span> (worst {max_studies} per model first: least label agreement, then lowest ROUGE-L; hover a mark for its cue)</p>
{"".join(cards)}
</body></html>
"""
  return displayable(page)  # any text the records held can be written as UTF-8
