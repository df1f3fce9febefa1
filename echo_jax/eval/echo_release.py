"""The ECHO authors' released evaluation convention ("echo-release").

How the released scripts score an English report, restated:

* Both texts are split into findings and impression (`split_sections`: the text after
  "Findings:" up to "Impression:", and after "Impression:" to the end, case-insensitive;
  the Chinese markers 所见：/结论： are read too; a report without both markers gives
  two empty sections), then formatted as
    prediction  "Finding: {findings} Impression: {impression}"   (sic, singular)
    reference   "Findings: {findings} Impression: {impression}."
* ROUGE-L: the F value of the `rouge` package (1.0.1, PyPI) on the lower-cased strings,
  per report, averaged. That package's ROUGE-L is summary-level (sentences split at
  full stops, union LCS), which is why it differs from Google's `rouge-score`.
* CIDEr: plain CIDEr (no clipping, no length penalty; Vedantam et al.), n = 1..4, with
  the document frequencies of a reference corpus. The released scripts use those of
  COCO val (40,504 documents). This project ships none: pass a JSON file
    {"num_documents": 40504, "document_frequency": {"a man": 1234.0, ...}}
  (n-grams as space-joined words) and the metric is `cider`; without one, the IDF is
  taken from the evaluated references and the metric is named `cider_corpus_idf`, so a
  number can never be mistaken for the other. The texts are the lower-cased formatted
  strings, tokenized PTB-style (punctuation split off and dropped).
* METEOR: nltk's `single_meteor_score` per report on the ECHO tokens (lower-cased, "."
  detached, split on spaces), averaged. It needs nltk's WordNet data
  (`python -m nltk.downloader wordnet`); without it the metric is not computed (None).
* Perplexity under a judge causal LM (the paper's Table 2; the released judge is
  Qwen3-1.7B) from a local directory: per report, exp of the mean negative
  log-likelihood of the formatted prediction's tokens given the instruction as a
  prefix; the metric is the mean of the per-report perplexities. Needs torch (the
  optional extra `pip install echo_jax[judge]`).

RaTEScore-positive and SemScore are the model-based metrics of `pipeline.py`, computed
from local weights (SemScore's released encoder is `hiaoxui/sembscore`).

Chinese reports are scored by the authors after machine translation to English; this
convention refuses Chinese text rather than scoring it with English tokenization.
"""

from __future__ import annotations

import collections
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from rouge import Rouge

from echo_jax.eval import bootstrap as bs
from echo_jax.eval.lexical import echo_tokenize
from echo_jax.user_errors import UserError

NAME = "echo-release"
# The English instruction of the released evaluation scripts (the judge's prefix).
JUDGE_PREFIX = (
  "Review this chest X-ray and write a report. Use this format: Findings: {}, Impression: {}."
)
COCO_VAL_DOCUMENTS = 40504

_EN = (
  re.compile(r"Findings:\s*(.*?)\s*Impression:", re.DOTALL | re.IGNORECASE),
  re.compile(r"Impression:\s*(.*?)$", re.DOTALL | re.IGNORECASE),
)
_ZH = (re.compile(r"所见：\s*(.*?)\s*结论：", re.DOTALL), re.compile(r"结论：\s*(.*?)$", re.DOTALL))
_CJK = re.compile(r"[\u4e00-\u9fff]")
# What the PTB tokenizer of the COCO caption tools removes after tokenizing.
_PUNCT = {"''", "'", "``", "`", "-lrb-", "-rrb-", "-lcb-", "-rcb-", ".", "?", "!", ",", ":"}
_PUNCT |= {"-", "--", "...", ";", "(", ")", "[", "]", "{", "}"}
_PTB_SPLIT = re.compile(r"\w+(?:[-']\w+)*|\.\.\.|--|[^\w\s]")


# --- formatting -------------------------------------------------------------------------------


def split_sections(text: str) -> tuple[str, str]:
  """(findings, impression) of a report as the released scripts read it ("" when absent)."""
  for findings_re, impression_re in (_EN, _ZH):
    f, i = findings_re.search(text), impression_re.search(text)
    if f and i:
      return f.group(1).strip(), i.group(1).strip()
  return "", ""


def format_prediction(text: str) -> str:
  f, i = split_sections(text)
  return f"Finding: {f} Impression: {i}"


def format_reference(text: str) -> str:
  f, i = split_sections(text)
  return f"Findings: {f} Impression: {i}."


def _check_english(texts: Sequence[str], what: str) -> None:
  for n, t in enumerate(texts):
    if len(_CJK.findall(t)) > 0.1 * max(len(t), 1):
      raise UserError(
        f"Chinese text in {what} {n}",
        why="the echo-release convention scores English, as the authors do after "
        "translating Chinese reports",
        fix="translate the reports to English first",
      )


# --- metrics ----------------------------------------------------------------------------------


def rouge_l(preds: Sequence[str], refs: Sequence[str]) -> np.ndarray:
  """Per-report ROUGE-L F of the `rouge` package on the formatted, lower-cased pairs."""
  scorer = Rouge(metrics=["rouge-l"])
  out = []
  for p, r in zip(preds, refs, strict=True):
    p, r = format_prediction(p).lower(), format_reference(r).lower()
    out.append(scorer.get_scores(p, r)[0]["rouge-l"]["f"])
  return np.asarray(out, np.float64)


def ptb_tokens(text: str) -> list[str]:
  """Lower-cased PTB-style tokens without punctuation (as the COCO caption tools leave them)."""
  return [t for t in _PTB_SPLIT.findall(text.lower()) if t not in _PUNCT]


def _ngrams(tokens: Sequence[str], n: int = 4) -> collections.Counter:
  counts: collections.Counter = collections.Counter()
  for k in range(1, n + 1):
    for i in range(len(tokens) - k + 1):
      counts[" ".join(tokens[i : i + k])] += 1
  return counts


def load_document_frequency(path: str) -> tuple[dict[str, float], int]:
  """(n-gram -> document frequency, number of documents) from a JSON file (module doc)."""
  what = "a document-frequency file"
  fix = 'give --cider-df a JSON {"num_documents": N, "document_frequency": {n-gram: count}}'
  if not os.path.isfile(path):
    raise UserError(what, where=path, why="no such file", fix=fix)
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise UserError(what, where=path, why=f"not valid JSON ({e})", fix=fix) from None
  if not isinstance(data, dict) or not isinstance(data.get("document_frequency"), dict):
    raise UserError(what, where=path, why="no 'document_frequency' object", fix=fix)
  n = data.get("num_documents")
  if isinstance(n, bool) or not isinstance(n, int) or n < 1:
    raise UserError(what, where=path, why=f"num_documents={n!r} is not a positive int", fix=fix)
  return {str(k): float(v) for k, v in data["document_frequency"].items()}, n


def cider_plain(
  preds: Sequence[str],
  refs: Sequence[str],
  document_frequency: Mapping[str, float] | None = None,
  num_documents: int | None = None,
) -> np.ndarray:
  """Per-report plain CIDEr (x10, one reference each) of the formatted, lower-cased pairs.

  With `document_frequency` / `num_documents` the IDF is that corpus's; without, the
  evaluated references are the corpus (each report's reference is one document).
  """
  hyp = [_ngrams(ptb_tokens(format_prediction(p))) for p in preds]
  ref = [_ngrams(ptb_tokens(format_reference(r))) for r in refs]
  if document_frequency is None:
    df: Mapping[str, float] = collections.Counter(g for r in ref for g in r)
    log_n = math.log(len(ref))
  else:
    df, log_n = document_frequency, math.log(float(num_documents))

  def vector(counts: collections.Counter) -> tuple[list[dict[str, float]], np.ndarray]:
    vec: list[dict[str, float]] = [{} for _ in range(4)]
    for gram, tf in counts.items():
      vec[gram.count(" ")][gram] = tf * (log_n - math.log(max(1.0, df.get(gram, 0.0))))
    return vec, np.asarray([math.sqrt(sum(v * v for v in d.values())) for d in vec])

  scores = []
  for h, r in zip(hyp, ref, strict=True):
    (vh, nh), (vr, nr) = vector(h), vector(r)
    sim = np.zeros(4)
    for n in range(4):
      sim[n] = sum(w * vr[n].get(g, 0.0) for g, w in vh[n].items())
      if nh[n] != 0 and nr[n] != 0:
        sim[n] /= nh[n] * nr[n]
    scores.append(10.0 * sim.mean())
  return np.asarray(scores, np.float64)


def meteor_nltk(
  preds: Sequence[str], refs: Sequence[str], wordnet: Any = None
) -> np.ndarray | None:
  """Per-report nltk METEOR on the ECHO tokens, or None without WordNet data."""
  from nltk.translate.meteor_score import single_meteor_score

  kwargs = {} if wordnet is None else {"wordnet": wordnet}
  out = []
  try:
    for p, r in zip(preds, refs, strict=True):
      hyp = echo_tokenize(format_prediction(p))
      ref = echo_tokenize(format_reference(r))
      out.append(single_meteor_score(ref, hyp, **kwargs))
  except LookupError:
    return None  # nltk's WordNet data is not installed
  return np.asarray(out, np.float64)


class JudgePerplexity:
  """Perplexity of reports under a local causal LM (transformers format)."""

  def __init__(self, model_dir: str, device: str = "cpu", prefix: str = JUDGE_PREFIX):
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
      raise UserError(
        "a judge model directory without config.json",
        where=model_dir,
        fix="pass a local causal LM directory (e.g. Qwen3-1.7B) with --judge-model",
      )
    try:  # torch is a heavy optional dependency, needed only by the judge
      import torch
    except ImportError:
      raise UserError(
        "the judge perplexity without torch", fix='pip install -e ".[judge]"'
      ) from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    self.torch = torch
    self.model_dir = model_dir
    self.device = device
    self.prefix = prefix
    self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    self.model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    self.model = self.model.to(device).eval()
    self.prefix_len = len(self.tokenizer(prefix)["input_ids"])

  def perplexity(self, text: str) -> float:
    """exp(mean NLL of the text's tokens after the prefix)."""
    if not text.strip():
      raise ValueError("the judge scores non-empty text only")
    ids = self.tokenizer(self.prefix + text, return_tensors="pt")["input_ids"].to(self.device)
    labels = ids.clone()
    labels[:, : self.prefix_len] = -100
    with self.torch.no_grad():
      loss = self.model(input_ids=ids, labels=labels).loss
    return float(math.exp(float(loss)))

  def score(self, preds: Sequence[str]) -> np.ndarray:
    """Per-report perplexities of the formatted predictions (never empty: the markers)."""
    return np.asarray([self.perplexity(format_prediction(p)) for p in preds], np.float64)


# --- the convention on an evaluation result ---------------------------------------------------


def add_to_result(
  result: dict[str, Any],
  records: Sequence[Mapping[str, Any]],
  *,
  cider_df: str | None = None,
  judge: JudgePerplexity | None = None,
  wordnet: Any = None,
  meteor: bool = True,
  n_boot: int = 1000,
  seed: int = 0,
  alpha: float = 0.05,
) -> dict[str, Any]:
  """Add the echo-release metrics to an `evaluate_predictions` result, in place.

  Per model: `echo-release/rouge_l`, `echo-release/cider` (or `cider_corpus_idf`),
  `echo-release/meteor`, `echo-release/judge_ppl` (None when not computed), their
  bootstrap CIs and per-study values; `result["echo_release"]` says which IDF and which
  judge the numbers used.
  """
  df, num_docs = load_document_frequency(cider_df) if cider_df else (None, None)
  cider_name = "cider" if cider_df else "cider_corpus_idf"
  groups: dict[str, list[Mapping[str, Any]]] = {}
  for r in records:
    groups.setdefault(str(r.get("model") or "model"), []).append(r)
  rows = {(row["model"], row["id"]): row for row in result["per_study"]}
  for name, recs in groups.items():
    preds = [r["prediction"] for r in recs]
    refs = [r["reference"] for r in recs]
    _check_english(preds, f"{name}: prediction")
    _check_english(refs, f"{name}: reference")
    per: dict[str, np.ndarray | None] = {
      "rouge_l": rouge_l(preds, refs),
      cider_name: cider_plain(preds, refs, df, num_docs),
      "meteor": meteor_nltk(preds, refs, wordnet) if meteor else None,
      "judge_ppl": judge.score(preds) if judge is not None else None,
    }
    idx = bs.bootstrap_indices(len(recs), n_boot, seed)
    summary = result["models"][name]
    for key, values in per.items():
      full = f"{NAME}/{key}"
      if values is None:
        summary["metrics"][full], summary["ci"][full] = None, None
        continue
      summary["metrics"][full] = float(values.mean())
      summary["ci"][full] = list(bs.mean_ci(values, idx, alpha))
      for r, v in zip(recs, values, strict=True):
        row = rows.get((name, str(r["id"])))
        if row is not None:
          row[full] = float(v)
  result["echo_release"] = {
    "rouge": "rouge 1.0.1, ROUGE-L F, formatted and lower-cased pairs",
    "cider_idf": (
      f"document frequencies of {cider_df} ({num_docs} documents)"
      if cider_df
      else "corpus: the evaluated references (no --cider-df given)"
    ),
    "judge": judge.model_dir if judge is not None else None,
  }
  result["not_computed"] = sorted(
    set(result.get("not_computed", []))
    | {k for m in result["models"].values() for k, v in m["metrics"].items() if v is None}
  )
  return result
