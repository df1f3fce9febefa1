"""Coherence measured exactly, where only a synthetic benchmark can: its grammar is known.

The synthetic reports are built from a finite phrase table (`data/synthetic/phrases.py`),
so every sentence a correct model writes is one of a few hundred enumerable sentences.
Two figures follow that ROUGE cannot give:

- **grammar-valid share**: of all sentences in the generated reports, the share that are
  sentences of the benchmark's grammar. A one-step decoder's mean-field failure mixes two
  paraphrases into a sentence that is neither ("No lungs are intact."), which scores
  partial n-gram credit but is invalid here.
- **exact-findings rate**: the share of reports whose 14 CheXpert labels (read by the
  rule-based labeler) all equal the labels of the reference report.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence

import numpy as np

from echo_jax.data.synthetic.reports import enumerate_sentences
from echo_jax.eval.clinical import binarize

_SECTION = re.compile(r"\b(?:findings|impression)\s*:", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:!?])")


def normalize_sentence(text: str) -> str:
  """Case-folded, single-spaced, no space before punctuation (how sentences are compared)."""
  return _SPACE_BEFORE_PUNCT.sub(r"\1", " ".join(text.split())).lower()


def split_sentences(report: str) -> list[str]:
  """The sentences of a report, section headers ("Findings:", "Impression:") removed.

  A trailing fragment without a final period is a sentence too (an invalid one, unless
  it happens to equal a grammar sentence without its period, which none does).
  """
  body = _SECTION.sub(" ", report)
  return [s for s in (p.strip() for p in _SENTENCE_END.split(body)) if s]


@functools.cache
def benchmark_sentences() -> frozenset[str]:
  """Every sentence of the synthetic grammar (all templates x slot values), normalized."""
  return frozenset(normalize_sentence(text) for _, text, _ in enumerate_sentences())


def grammar_counts(reports: Iterable[str], grammar: frozenset[str] | None = None) -> np.ndarray:
  """[N, 2] int: (valid sentences, all sentences) per report."""
  grammar = benchmark_sentences() if grammar is None else grammar
  rows = []
  for report in reports:
    sentences = [normalize_sentence(s) for s in split_sentences(report)]
    rows.append((sum(s in grammar for s in sentences), len(sentences)))
  return np.asarray(rows, np.int64).reshape(-1, 2)


def grammar_valid_share(reports: Iterable[str], grammar: frozenset[str] | None = None) -> float:
  """Valid sentences / all sentences, pooled over the reports (0.0 when there are none)."""
  valid, total = grammar_counts(reports, grammar).sum(0)
  return float(valid / total) if total else 0.0


def exact_findings(
  pred_labels_NC: np.ndarray, ref_labels_NC: np.ndarray, uncertain: str = "positive"
) -> np.ndarray:
  """bool [N]: every one of the 14 binarized labels of the prediction equals the reference's."""
  pred, ref = binarize(pred_labels_NC, uncertain), binarize(ref_labels_NC, uncertain)
  if pred.shape != ref.shape:
    raise ValueError(f"label arrays differ in shape: {pred.shape} vs {ref.shape}")
  return np.all(pred == ref, axis=-1)


def coherence_metrics(
  predictions: Sequence[str],
  pred_labels_NC: np.ndarray,
  ref_labels_NC: np.ndarray,
  uncertain: str = "positive",
) -> dict[str, float]:
  """{"grammar_valid_share", "exact_findings"} of one model's reports."""
  exact = exact_findings(pred_labels_NC, ref_labels_NC, uncertain)
  return {
    "grammar_valid_share": grammar_valid_share(predictions),
    "exact_findings": float(np.mean(exact)) if len(exact) else 0.0,
  }
