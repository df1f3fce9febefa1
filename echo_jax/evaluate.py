"""Evaluate generated chest X-ray reports.

  python -m echo_jax.evaluate --predictions P.jsonl [P2.jsonl ...] [--references R.jsonl] \\
      --out DIR [--images-root ROOT] [--semscore-model DIR] \\
      [--ratescore-model DIR [--ratescore-embed-model DIR]] [--uncertain positive|negative]

Prediction lines: {"id", "prediction", "reference" (unless --references),
"model" (optional; default: the file name), "stats" (optional: tpf,
tokens_per_second, tokens, forwards, seconds), "image_path" (optional)}.
Reference lines: {"id", "reference"} or {"id", "findings", "impression"} (joined
as "Findings: ... Impression: ..."), plus optional "image_path".

Writes DIR/metrics.json, DIR/per_study.jsonl, DIR/per_study.csv, DIR/report.html
and DIR/quality_vs_tpf.png (when the records carry TPF). SemScore and RaTEScore
use local model directories only and are "n/a" without them.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from echo_jax.eval import echo_release
from echo_jax.eval.pipeline import EvalOptions, evaluate_predictions

__all__ = ["evaluate_predictions", "main", "read_jsonl", "write_outputs"]


def read_jsonl(path: str) -> list[dict[str, Any]]:
  """Reads a JSON-lines file; raises with the line number on malformed input."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no such file: {path!r}")
  out = []
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise ValueError(
          f"{path}:{n}: not valid JSON ({e.msg}); each line must be one JSON object"
        ) from e
  return out


def _reference_text(r: Mapping[str, Any]) -> str:
  if "reference" in r:
    return r["reference"]
  if "findings" in r or "impression" in r:
    return f"Findings: {(r.get('findings') or '').strip()} Impression: {(r.get('impression') or '').strip()}"
  raise ValueError(
    f"reference record {r.get('id')!r} has neither 'reference' nor 'findings'/'impression'"
  )


def load_records(pred_paths: Sequence[str], ref_path: str | None) -> list[dict[str, Any]]:
  """Prediction records with references attached and a model name on each."""
  refs = None
  if ref_path:
    refs = {str(r["id"]): r for r in read_jsonl(ref_path)}
  records = []
  for p in pred_paths:
    default_model = os.path.splitext(os.path.basename(p))[0] if len(pred_paths) > 1 else None
    for r in read_jsonl(p):
      r = dict(r)
      if default_model and not r.get("model"):
        r["model"] = default_model
      if refs is not None:
        ref = refs.get(str(r.get("id")))
        if ref is None:
          raise ValueError(f"{p}: id {r.get('id')!r} has no line in {ref_path}")
        r["reference"] = _reference_text(ref)
        for k in ("image_path", "images"):
          if k in ref and k not in r:
            r[k] = ref[k]
      records.append(r)
  return records


_CSV_SKIP = ("labels_prediction", "labels_reference")


def write_outputs(
  result: Mapping[str, Any],
  records: Sequence[Mapping[str, Any]],
  out_dir: str,
  images_root: str | None = None,
  max_studies: int = 100,
) -> dict[str, str]:
  """Writes metrics.json, per-study jsonl/csv, report.html and the TPF plot; returns their paths."""
  from echo_jax.eval.html_report import render_html
  from echo_jax.eval.plots import quality_vs_tpf_png

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
  with open(paths["per_study_csv"], "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(
      cols
      + [f"pred/{o}" for o in rows[0]["labels_prediction"]]
      + [f"ref/{o}" for o in rows[0]["labels_reference"]]
    )
    for row in rows:
      w.writerow(
        [row.get(c, "") for c in cols]
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
  p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--device", default="cpu", help="torch device for SemScore/RaTEScore")
  p.add_argument("--max-studies", type=int, default=100, help="study cards per model in the HTML")
  return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  records = load_records(args.predictions, args.references)
  opts = EvalOptions(
    conventions=tuple(c.strip() for c in args.conventions.split(",") if c.strip()),
    meteor=not args.no_meteor,
    uncertain=args.uncertain,
    n_boot=args.n_boot,
    seed=args.seed,
    semscore_model=args.semscore_model,
    ratescore_model=args.ratescore_model,
    ratescore_embed_model=args.ratescore_embed_model,
    device=args.device,
  )
  result = evaluate_predictions(records, options=opts)
  if args.convention == echo_release.NAME:
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
  paths = write_outputs(
    result, records, args.out, images_root=args.images_root, max_studies=args.max_studies
  )
  for name, m in result["models"].items():
    shown = {
      k: (round(v, 4) if v is not None else "n/a")
      for k, v in m["metrics"].items()
      if "/f1/" not in k
    }
    print(f"{name} (N={m['n']}): {json.dumps(shown)}")
    print(f"{name} speed: {json.dumps(m['speed'])}")
  print("wrote " + ", ".join(paths.values()))
  return 0


if __name__ == "__main__":
  sys.exit(main())
