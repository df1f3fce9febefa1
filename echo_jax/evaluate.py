"""Evaluate generated chest X-ray reports.

  python -m echo_jax.evaluate --predictions P.jsonl [P2.jsonl ...] [--references R.jsonl] \\
      --out DIR [--images-root ROOT] [--semscore-model DIR] \\
      [--ratescore-model DIR [--ratescore-embed-model DIR]] [--uncertain positive|negative] \\
      [--no-meteor | --meteor-timeout SECONDS]

Prediction lines: {"id", "prediction", "reference" (unless --references),
"model" (optional; default: the file name), "stats" (optional: tpf,
tokens_per_second, tokens, forwards, seconds), "image_path" (optional)}.
Reference lines: {"id", "reference"} or {"id", "findings", "impression"} (joined
as "Findings: ... Impression: ..."), plus optional "image_path".

Writes DIR/metrics.json, DIR/per_study.jsonl, DIR/per_study.csv, DIR/report.html
and DIR/quality_vs_tpf.png (when the records carry TPF). SemScore and RaTEScore
use local model directories only and are "n/a" without them; a metric that cannot
be computed (METEOR past --meteor-timeout, say) is "n/a" with its reason under
"notes" and never stops the others. A bad file or flag is one line
"error: <what> in <file>[:<line>]: <why>; <what to do>" and exit status 2
(docs/EVALUATION.md lists the checks).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from echo_jax.eval import echo_release
from echo_jax.eval.html_report import render_html
from echo_jax.eval.lexical import CONVENTIONS
from echo_jax.eval.pipeline import EvalOptions, evaluate_predictions
from echo_jax.eval.plots import quality_vs_tpf_png
from echo_jax.eval.records import load_records, read_jsonl
from echo_jax.eval.safe_text import displayable
from echo_jax.user_errors import UserError, run_cli

__all__ = ["evaluate_predictions", "load_records", "main", "read_jsonl", "write_outputs"]


_CSV_SKIP = ("labels_prediction", "labels_reference")


def write_outputs(
  result: Mapping[str, Any],
  records: Sequence[Mapping[str, Any]],
  out_dir: str,
  images_root: str | None = None,
  max_studies: int = 100,
) -> dict[str, str]:
  """Writes metrics.json, per-study jsonl/csv, report.html and the TPF plot; returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  paths = {
    k: os.path.join(out_dir, f)
    for k, f in (
      ("metrics", "metrics.json"),
      ("per_study_jsonl", "per_study.jsonl"),
      ("per_study_csv", "per_study.csv"),
      ("html", "report.html"),
      ("plot", "quality_vs_tpf.png"),
    )
  }
  summary = {k: v for k, v in result.items() if k != "per_study"}
  with open(paths["metrics"], "w") as f:
    json.dump(summary, f, indent=2)
  rows = result["per_study"]
  with open(paths["per_study_jsonl"], "w") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")
  cols = []
  for row in rows:
    cols.extend(k for k in row if k not in _CSV_SKIP and k not in cols)
  with open(paths["per_study_csv"], "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(
      cols
      + [f"pred/{o}" for o in rows[0]["labels_prediction"]]
      + [f"ref/{o}" for o in rows[0]["labels_reference"]]
    )
    for row in rows:
      w.writerow(
        [displayable(v) if isinstance(v, str) else v for v in (row.get(c, "") for c in cols)]
        + list(row["labels_prediction"].values())
        + list(row["labels_reference"].values())
      )
  png = quality_vs_tpf_png(result["models"])
  if png is not None:
    with open(paths["plot"], "wb") as f:
      f.write(png)
  else:
    del paths["plot"]
  with open(paths["html"], "w", encoding="utf-8") as f:
    f.write(
      render_html(result, records, plot_png=png, images_root=images_root, max_studies=max_studies)
    )
  return paths


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
    prog="python -m echo_jax.evaluate", description=__doc__.split("\n\n")[0]
  )
  p.add_argument("--predictions", nargs="+", required=True, help="prediction JSONL file(s)")
  p.add_argument("--references", help="reference JSONL (else each prediction line has 'reference')")
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--images-root", help="root for relative image paths (thumbnails in the HTML)")
  p.add_argument("--semscore-model", help="local BERT directory for SemScore")
  p.add_argument(
    "--ratescore-model", help="local RaTE NER model directory (or one with ner/ and encoder/)"
  )
  p.add_argument("--ratescore-embed-model", help="local entity encoder directory for RaTEScore")
  p.add_argument(
    "--uncertain",
    choices=("positive", "negative"),
    default="positive",
    help="how rule-based CheXpert F1 counts uncertain labels",
  )
  p.add_argument("--conventions", default="r2gen,echo", help="lexical conventions, comma separated")
  p.add_argument(
    "--convention",
    choices=(echo_release.NAME,),
    help="also score as the ECHO authors' released scripts do (echo_jax.eval.echo_release)",
  )
  p.add_argument(
    "--cider-df",
    help="echo-release CIDEr: JSON {num_documents, document_frequency} (e.g. COCO val); "
    "without it the IDF is the evaluated references' (metric cider_corpus_idf)",
  )
  p.add_argument(
    "--judge-model", help="echo-release: local causal LM directory for the perplexity (torch)"
  )
  p.add_argument("--no-meteor", action="store_true", help="skip METEOR (needs java)")
  p.add_argument(
    "--meteor-timeout",
    type=float,
    default=EvalOptions.meteor_timeout_s,
    help="seconds one METEOR call may take; past it METEOR is reported as not computed",
  )
  p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--device", default="cpu", help="torch device for SemScore/RaTEScore")
  p.add_argument("--max-studies", type=int, default=100, help="study cards per model in the HTML")
  return p.parse_args(argv)


def _check_flags(args: argparse.Namespace) -> tuple[str, ...]:
  """User errors for flags, found before any file is read; returns the conventions."""
  conventions = tuple(c.strip() for c in args.conventions.split(",") if c.strip())
  bad = [c for c in conventions if c not in CONVENTIONS]
  if bad or not conventions:
    raise UserError(
      f"unknown lexical convention {bad[0]!r} in --conventions" if bad else "empty --conventions",
      fix=f"choose from {', '.join(CONVENTIONS)}",
    )
  for flag, value, low in (
    ("--n-boot", args.n_boot, 1),
    ("--max-studies", args.max_studies, 0),
  ):
    if value < low:
      raise UserError(
        f"{flag} {value}", why=f"must be at least {low}", fix=f"pass {flag} {low} or more"
      )
  if not args.meteor_timeout > 0:
    raise UserError(f"--meteor-timeout {args.meteor_timeout}", fix="pass a number of seconds > 0")
  for flag, value in (
    ("--semscore-model", args.semscore_model),
    ("--ratescore-model", args.ratescore_model),
    ("--ratescore-embed-model", args.ratescore_embed_model),
    ("--images-root", args.images_root),
  ):
    if value is not None and not os.path.isdir(value):
      raise UserError(f"no directory {value!r} for {flag}", fix="pass an existing local directory")
  if os.path.exists(args.out) and not os.path.isdir(args.out):
    raise UserError("--out is a file", where=args.out, fix="pass a directory (created if missing)")
  return conventions


def _progress_printer() -> Any:
  start = time.monotonic()

  def show(line: str) -> None:
    print(f"[{time.monotonic() - start:6.1f} s] {displayable(line)}", file=sys.stderr, flush=True)

  return show


def main(argv: Sequence[str] | None = None) -> int:
  """The command; returns the exit status (user errors print one line and give 2)."""
  return run_cli(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
  args = parse_args(argv)
  conventions = _check_flags(args)
  records = load_records(args.predictions, args.references)
  progress = _progress_printer()
  progress(f"read {len(records)} records from {len(args.predictions)} file(s)")
  opts = EvalOptions(
    conventions=conventions,
    meteor=not args.no_meteor,
    meteor_timeout_s=args.meteor_timeout,
    uncertain=args.uncertain,
    n_boot=args.n_boot,
    seed=args.seed,
    semscore_model=args.semscore_model,
    ratescore_model=args.ratescore_model,
    ratescore_embed_model=args.ratescore_embed_model,
    device=args.device,
  )
  result = evaluate_predictions(records, options=opts, progress=progress)
  if args.convention == echo_release.NAME:
    progress("scoring the echo-release convention")
    judge = (
      echo_release.JudgePerplexity(args.judge_model, args.device) if args.judge_model else None
    )
    echo_release.add_to_result(
      result,
      records,
      cider_df=args.cider_df,
      judge=judge,
      meteor=not args.no_meteor,
      n_boot=args.n_boot,
      seed=args.seed,
    )
    print(f"echo-release CIDEr IDF: {result['echo_release']['cider_idf']}")
  progress("writing outputs")
  try:
    paths = write_outputs(
      result, records, args.out, images_root=args.images_root, max_studies=args.max_studies
    )
  except OSError as e:
    raise UserError(
      "cannot write the outputs",
      where=e.filename or args.out,
      why=e.strerror or str(e),
      fix="pass a writable --out directory",
    ) from None
  for name, m in result["models"].items():
    shown = {
      k: (round(v, 4) if v is not None else "n/a")
      for k, v in m["metrics"].items()
      if "/f1/" not in k
    }
    print(f"{displayable(name)} (N={m['n']}): {json.dumps(shown)}")
    print(f"{displayable(name)} speed: {json.dumps(m['speed'])}")
  for metric, why in result["notes"].items():
    if metric not in ("semscore", "ratescore") or "no local model" not in why:
      print(f"note: {metric}: {displayable(why)}")
  print("wrote " + ", ".join(paths.values()))
  return 0


if __name__ == "__main__":
  sys.exit(main())
