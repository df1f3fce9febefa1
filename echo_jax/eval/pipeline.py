"""Evaluation of generated reports: every metric, per model, with bootstrap CIs and speed.

``evaluate_predictions(records, ...)`` is the Python API used by the CLI
(``python -m echo_jax.evaluate``) and by the training pipeline. A record is a
dict with ``id``, ``prediction``, ``reference`` and optionally ``model`` (records
are grouped by it; default "model"), ``stats`` (speed figures of that generation:
``tpf``, ``tokens_per_second``, and where known ``tokens``, ``forwards``,
``seconds``) and image paths (``image_path`` or ``images``) for the HTML report.

Metric names in the result: ``r2gen/<m>`` and ``echo/<m>`` for the lexical
conventions (lexical.py), ``chexpert/<f1 key>`` for rule-based CheXpert F1
(clinical.py), ``semscore`` and ``ratescore`` (None when no local model is given).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from echo_jax.eval import bootstrap as bs
from echo_jax.eval.chexpert_labeler import CheXpertLabeler
from echo_jax.eval.chexpert_phrases import OBSERVATIONS
from echo_jax.eval.clinical import IDX5, IDX14, binarize, clinical_f1, f1_counts, f1_from_counts
from echo_jax.eval.lexical import (
  CONVENTIONS,
  DEFAULT_METEOR_TIMEOUT_S,
  bleu_from_stats,
  lexical_metrics,
)
from echo_jax.eval.ratescore import RaTEScorer
from echo_jax.eval.semscore import SemScorer

DEFAULT_MODEL = "model"
_log = logging.getLogger(__name__)
Progress = Callable[[str], None]  # receives one line per step of a long evaluation


@dataclasses.dataclass(frozen=True)
class EvalOptions:
  """Settings of one evaluation (all recorded in metrics.json)."""

  conventions: tuple[str, ...] = CONVENTIONS
  meteor: bool = True
  meteor_timeout_s: float = DEFAULT_METEOR_TIMEOUT_S
  uncertain: str = "positive"
  n_boot: int = 1000
  alpha: float = 0.05
  seed: int = 0
  semscore_model: str | None = None
  ratescore_model: str | None = None
  ratescore_embed_model: str | None = None
  device: str = "cpu"


def validate_records(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """Checks required fields and unique (model, id); returns plain dict copies."""
  out, seen = [], set()
  for n, r in enumerate(records):
    if not isinstance(r, Mapping):
      raise TypeError(
        f"record {n} is {type(r).__name__}, expected a dict with id/prediction/reference"
      )
    for key in ("id", "prediction", "reference"):
      if key not in r:
        raise ValueError(
          f"record {n} (id={r.get('id')!r}) has no {key!r}; every record needs id, prediction, reference"
        )
    for key in ("prediction", "reference"):
      if not isinstance(r[key], str):
        raise TypeError(
          f"record {n} (id={r['id']!r}): {key} must be a string, got {type(r[key]).__name__}"
        )
    rec = dict(r)
    rec["id"] = str(rec["id"])
    rec["model"] = str(rec.get("model") or DEFAULT_MODEL)
    key = (rec["model"], rec["id"])
    if key in seen:
      raise ValueError(f"duplicate record for model {key[0]!r}, id {key[1]!r}")
    seen.add(key)
    out.append(rec)
  if not out:
    raise ValueError("no records to evaluate")
  return out


def _num(x: Any) -> float | None:
  return (
    float(x)
    if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
    else None
  )


def speed_summary(records: Sequence[Mapping[str, Any]]) -> dict[str, float | int | None]:
  """TPF and tokens/s of a model from its records' ``stats``.

  Ratios of totals when tokens/forwards/seconds are given for every record
  (the per-token average), else the mean of the per-record ``tpf`` /
  ``tokens_per_second``; other numeric stats are averaged.
  """
  stats = [r.get("stats") or {} for r in records]
  stats = [s for s in stats if isinstance(s, Mapping) and s]
  out: dict[str, float | int | None] = {
    "n_with_stats": len(stats),
    "tpf": None,
    "tokens_per_second": None,
  }
  if not stats:
    return out

  def col(k: str) -> list[float] | None:
    vals = [_num(s.get(k)) for s in stats]
    return None if any(v is None for v in vals) else vals

  tok, fwd, sec = col("tokens"), col("forwards"), col("seconds")
  if tok and fwd and sum(fwd) > 0:
    out["tpf"] = sum(tok) / sum(fwd)
  elif col("tpf"):
    out["tpf"] = float(np.mean(col("tpf")))
  if tok and sec and sum(sec) > 0:
    out["tokens_per_second"] = sum(tok) / sum(sec)
  elif col("tokens_per_second"):
    out["tokens_per_second"] = float(np.mean(col("tokens_per_second")))
  keys = sorted({k for s in stats for k in s} - {"tpf", "tokens_per_second"})
  for k in keys:
    vals = [v for v in (_num(s.get(k)) for s in stats) if v is not None]
    if vals:
      out[f"mean_{k}"] = float(np.mean(vals))
  return out


def _evaluate_group(
  recs: list[dict[str, Any]],
  opts: EvalOptions,
  labeler: CheXpertLabeler,
  sem: SemScorer | None,
  rate: RaTEScorer | None,
  progress: Progress,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
  preds = [r["prediction"] for r in recs]
  refs = [r["reference"] for r in recs]
  n = len(recs)
  idx = bs.bootstrap_indices(n, opts.n_boot, opts.seed)
  metrics: dict[str, float | None] = {}
  ci: dict[str, list[float] | None] = {}
  per: dict[str, np.ndarray] = {}
  notes: dict[str, str] = {}

  for conv in opts.conventions:
    progress(f"lexical metrics ({conv} convention)")
    res = lexical_metrics(
      preds, refs, conv, meteor=opts.meteor, meteor_timeout_s=opts.meteor_timeout_s
    )
    notes.update({f"{conv}/{k}": v for k, v in res.notes.items()})
    for k, v in res.corpus.items():
      metrics[f"{conv}/{k}"] = v
      ci[f"{conv}/{k}"] = None
    for k in range(4):
      name = f"{conv}/bleu_{k + 1}"
      stats = res.bleu_stats
      ci[name] = list(
        bs.percentile_ci(
          bs.resample_stat(lambda ix, s=stats, k=k: bleu_from_stats(s[ix])[:, k], idx), opts.alpha
        )
      )
    for k, v in res.per_study.items():
      per[f"{conv}/{k}"] = v
      if not k.startswith("bleu"):
        ci[f"{conv}/{k}"] = list(bs.mean_ci(v, idx, opts.alpha))

  progress("rule-based CheXpert labels")
  lab_p, lab_r = labeler.label_many(preds), labeler.label_many(refs)
  for k, v in clinical_f1(lab_p, lab_r, opts.uncertain).items():
    metrics[f"chexpert/{k}"] = v
  bp, br = binarize(lab_p, opts.uncertain), binarize(lab_r, opts.uncertain)
  for which, ix_lab in (("14", IDX14), ("5", IDX5)):
    for avg in ("micro", "macro"):
      pos = 0 if avg == "micro" else 1

      def stat(ix: np.ndarray, ix_lab: np.ndarray = ix_lab, pos: int = pos) -> np.ndarray:
        return f1_from_counts(f1_counts(bp[ix], br[ix]), ix_lab)[pos]

      ci[f"chexpert/f1_{avg}_{which}"] = list(
        bs.percentile_ci(bs.resample_stat(stat, idx), opts.alpha)
      )
  per["chexpert/agreement_14"] = (bp == br).mean(1)

  for name, scorer in (("semscore", sem), ("ratescore", rate)):
    if scorer is None:
      metrics[name], ci[name] = None, None
      notes[name] = "not computed: no local model given"
      continue
    progress(name)
    try:
      v = scorer.score(preds, refs)
    except Exception as e:  # a model-based metric failing must not cost the others
      _log.exception("%s not computed", name)
      metrics[name], ci[name] = None, None
      notes[name] = f"not computed: {type(e).__name__}: {e}"
    else:
      per[name] = v
      metrics[name] = float(v.mean())
      ci[name] = list(bs.mean_ci(v, idx, opts.alpha))

  rows = []
  for i, r in enumerate(recs):
    row = {"id": r["id"], "model": r["model"]}
    row.update({k: float(v[i]) for k, v in per.items()})
    row["labels_prediction"] = {o: _lab(lab_p[i, j]) for j, o in enumerate(OBSERVATIONS)}
    row["labels_reference"] = {o: _lab(lab_r[i, j]) for j, o in enumerate(OBSERVATIONS)}
    for k in ("tpf", "tokens_per_second"):
      row[k] = _num((r.get("stats") or {}).get(k))
    rows.append(row)
  summary = {"n": n, "metrics": metrics, "ci": ci, "speed": speed_summary(recs), "notes": notes}
  return summary, rows


def _lab(v: float) -> int | None:
  return None if np.isnan(v) else int(v)


def evaluate_predictions(
  records: Iterable[Mapping[str, Any]],
  *,
  options: EvalOptions | None = None,
  labeler: CheXpertLabeler | None = None,
  progress: Progress | None = None,
) -> dict[str, Any]:
  """Evaluates generated reports; returns a JSON-serialisable dict.

  `progress`, when given, receives a line as each model and metric starts.

  Returns:
    {"options": {...}, "models": {model: {"n", "metrics", "ci", "speed", "notes"}},
     "per_study": [{"id", "model", <per-study scores>, "labels_prediction",
     "labels_reference", "tpf", "tokens_per_second"}, ...],
     "not_computed": [metric names reported as None],
     "notes": {metric: why it is n/a or what to know about it}}
  """
  opts = options or EvalOptions()
  for c in opts.conventions:
    if c not in CONVENTIONS:
      raise ValueError(f"unknown lexical convention {c!r}; choose from {CONVENTIONS}")
  recs = validate_records(records)
  labeler = labeler or CheXpertLabeler()
  sem = SemScorer(opts.semscore_model, device=opts.device) if opts.semscore_model else None
  rate = (
    RaTEScorer(opts.ratescore_model, opts.ratescore_embed_model, device=opts.device)
    if opts.ratescore_model
    else None
  )
  groups: dict[str, list[dict[str, Any]]] = {}
  for r in recs:
    groups.setdefault(r["model"], []).append(r)
  models, rows = {}, []
  for i, (name, grp) in enumerate(groups.items(), 1):
    prefix = f"model {i}/{len(groups)} {name!r} ({len(grp)} studies)"
    step = (lambda what, p=prefix: progress(f"{p}: {what}")) if progress else (lambda what: None)
    models[name], grp_rows = _evaluate_group(grp, opts, labeler, sem, rate, step)
    rows.extend(grp_rows)
  notes: dict[str, str] = {}
  for m in models.values():
    for k, why in m["notes"].items():
      # One line per metric; the model is named only where models differ.
      notes[k] = why if notes.get(k, why) == why else "differs by model (see models.<name>.notes)"
  not_computed = sorted(
    {
      k
      for m in models.values()
      for k, v in m["metrics"].items()
      if v is None and not k.startswith("chexpert/f1/")
    }
  )
  opt_dict = dataclasses.asdict(opts)
  for k in ("semscore_model", "ratescore_model", "ratescore_embed_model"):
    opt_dict[k] = os.fspath(opt_dict[k]) if opt_dict[k] else None
  return {
    "options": opt_dict,
    "models": models,
    "per_study": rows,
    "not_computed": not_computed,
    "notes": notes,
  }
