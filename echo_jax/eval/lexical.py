"""Lexical report metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D) from maintained packages.

Two documented conventions:

* ``"r2gen"``: the R2Gen / pycocoevalcap convention used by most report-generation
  papers. Both texts are cleaned the way R2Gen cleans MIMIC-CXR reports (lower case,
  numbered-list markers and punctuation removed, sentences joined by `` . ``), then
  scored with pycocoevalcap's ``Bleu(4)`` (corpus BLEU, "closest" reference length),
  ``Meteor`` (the METEOR 1.5 jar, needs ``java``), ``Rouge`` (ROUGE-L with
  beta 1.2) and ``Cider`` (CIDEr-D: clipped n-gram tf-idf with a Gaussian length
  penalty, IDF from the evaluated references). pycocoevalcap's PTBTokenizer is not
  used: it starts a Java process per call, and the R2Gen cleaning already leaves
  whitespace-separated tokens.
* ``"echo"``: the convention of the ECHO authors' evaluation. Texts are lower-cased
  and split on whitespace after detaching full stops (``"."`` -> ``" ."``). ROUGE-1/2/L
  F1 come from Google's ``rouge-score`` package per report (the authors used the
  ``rouge`` package, whose ROUGE-L is a summary-level union-LCS, so values differ
  slightly) and are averaged over reports; CIDEr-D is pycocoevalcap's on these
  tokens with corpus IDF; METEOR is the jar's per-report score, averaged.

Every metric returns both a corpus value and per-study values, so bootstrap
confidence intervals can be drawn over studies (``bootstrap.py``). Corpus BLEU is
not a mean of per-study values; the per-study n-gram statistics that it sums are
kept instead (``bleu_stats``), and ``bleu_from_stats`` recombines them exactly as
pycocoevalcap does.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
from collections.abc import Sequence

import numpy as np

from echo_jax.eval.meteor import DEFAULT_MAX_WORDS, MeteorOutcome
from echo_jax.eval.meteor import DEFAULT_TIMEOUT_S as DEFAULT_METEOR_TIMEOUT_S
from echo_jax.eval.meteor import meteor as run_meteor

CONVENTIONS = ("r2gen", "echo")
BLEU_STATS_COLS = 10  # testlen, reflen, guess_1..4, correct_1..4

_log = logging.getLogger(__name__)


@dataclasses.dataclass
class LexicalResult:
  """Corpus values and per-study values of the lexical metrics.

  ``corpus`` maps metric name -> value (None when not computed, e.g. METEOR without
  java). ``per_study`` maps metric name -> float array [N]. ``bleu_stats`` is the
  [N, 10] array of BLEU sufficient statistics (see ``bleu_from_stats``).
  """

  convention: str
  corpus: dict[str, float | None]
  per_study: dict[str, np.ndarray]
  bleu_stats: np.ndarray
  notes: dict[str, str] = dataclasses.field(default_factory=dict)  # metric -> why n/a / caveat


def r2gen_clean(report: str) -> str:
  """Cleans a report the way R2Gen's ``clean_report_mimic_cxr`` does.

  Collapses underscores, spaces and repeated full stops, drops list markers
  ("1. ", " 2. ", ...), lower-cases, splits sentences on ". ", removes punctuation
  from each sentence and joins them with `` . ``. Like R2Gen, the punctuation class
  ``[.,?;*!%^&_+():-\\[\\]{}]`` contains the range ``:-\\[``, i.e. also ``<=>@``.
  """
  t = report.replace("\n", " ")
  for _ in range(7):
    t = t.replace("__", "_")
  for _ in range(6):
    t = t.replace("  ", " ")
  for _ in range(8):
    t = t.replace("..", ".")
  t = t.replace("1. ", "")
  for k in "2345":
    t = t.replace(f". {k}. ", ". ")
  for k in "2345":
    t = t.replace(f" {k}. ", ". ")
  sents = t.strip().lower().split(". ")

  def clean(s: str) -> str:
    s = s.replace('"', "").replace("/", "").replace("\\", "").replace("'", "").strip().lower()
    return re.sub(r"[.,?;*!%^&_+():-\[\]{}]", "", s)

  # R2Gen's filter `sent != []` never drops anything; empty sentences only add
  # extra " ." tokens, which whitespace tokenisation keeps, so keep them too.
  return " . ".join(clean(s) for s in sents) + " ."


def echo_tokenize(report: str) -> list[str]:
  """Tokenises like the ECHO authors' ``prep_reports_eng``: lower, ``.`` -> `` .``, split."""
  return [w for w in str(report).lower().replace(".", " .").split(" ") if w != ""]


def _prepare(texts: Sequence[str], convention: str) -> list[str]:
  if convention == "r2gen":
    return [r2gen_clean(t) for t in texts]
  return [" ".join(echo_tokenize(t)) for t in texts]


def bleu_stats(preds: Sequence[str], refs: Sequence[str]) -> np.ndarray:
  """Per-study BLEU statistics [N, 10] of pre-tokenised (space-joined) texts.

  Uses pycocoevalcap's own ``cook_refs``/``cook_test`` so the n-gram counting is
  the package's; columns are testlen, reflen, guess_1..4, correct_1..4.
  """
  from pycocoevalcap.bleu.bleu_scorer import cook_refs, cook_test

  out = np.zeros((len(preds), BLEU_STATS_COLS), np.float64)
  for i, (p, r) in enumerate(zip(preds, refs)):
    comps = cook_test(p, cook_refs([r]), eff="closest")
    out[i, 0] = comps["testlen"]
    out[i, 1] = comps["reflen"] if np.isscalar(comps["reflen"]) else comps["reflen"][0]
    out[i, 2:6] = comps["guess"]
    out[i, 6:10] = comps["correct"]
  return out


def bleu_from_stats(stats_N10: np.ndarray) -> np.ndarray:
  """Corpus BLEU-1..4 from summed statistics, with pycocoevalcap's smoothing.

  Accepts [N, 10] (one corpus) or [R, N, 10] (R resampled corpora) and returns [4]
  or [R, 4]. Same formula as ``BleuScorer.compute_score``: precision_k =
  (correct_k + 1e-15) / (guess_k + 1e-9), geometric means, brevity penalty when
  the hypotheses are shorter than the references.
  """
  tot = stats_N10.sum(axis=-2)
  tiny, small = 1e-15, 1e-9
  prec = (tot[..., 6:10] + tiny) / (tot[..., 2:6] + small)
  cum = np.cumprod(prec, axis=-1)
  bleu = cum ** (1.0 / np.arange(1, 5))
  ratio = (tot[..., 0] + tiny) / (tot[..., 1] + small)
  bp = np.where(ratio < 1, np.exp(1 - 1 / np.maximum(ratio, tiny)), 1.0)
  return bleu * bp[..., None]


def java_available() -> bool:
  """True when a ``java`` executable is on PATH (needed by the METEOR jar)."""
  return shutil.which("java") is not None


def meteor_outcome(
  preds: Sequence[str], refs: Sequence[str], timeout_s: float = DEFAULT_METEOR_TIMEOUT_S
) -> MeteorOutcome:
  """METEOR 1.5 (pycocoevalcap jar) with the reason when it is not computed (meteor.py)."""
  if not java_available():
    return MeteorOutcome(None, None, "no java executable on PATH")
  # Empty hypotheses become "." as in pycocoevalcap's usage (the jar needs a word).
  return run_meteor([p if p.strip() else "." for p in preds], refs, timeout_s=timeout_s)


def meteor_scores(
  preds: Sequence[str], refs: Sequence[str], timeout_s: float = DEFAULT_METEOR_TIMEOUT_S
) -> tuple[float, np.ndarray] | None:
  """METEOR corpus score and per-study scores, or None when not computed (reason logged)."""
  out = meteor_outcome(preds, refs, timeout_s)
  if out.score is None:
    _log.warning("METEOR not computed: %s", out.reason)
    return None
  return out.score, out.per_study


def cider_d_scores(preds: Sequence[str], refs: Sequence[str]) -> tuple[float, np.ndarray]:
  """pycocoevalcap CIDEr-D (IDF over the given references): corpus mean and per-study."""
  from pycocoevalcap.cider.cider import Cider

  gts = {i: [r] for i, r in enumerate(refs)}
  res = {i: [p] for i, p in enumerate(preds)}
  score, scores = Cider().compute_score(gts, res)
  return float(score), np.asarray(scores, np.float64)


def _check(preds: Sequence[str], refs: Sequence[str], convention: str) -> None:
  if convention not in CONVENTIONS:
    raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
  if len(preds) != len(refs):
    raise ValueError(f"{len(preds)} predictions but {len(refs)} references: pass one per study")
  if len(preds) == 0:
    raise ValueError("no studies to evaluate: predictions are empty")
  for name, seq in (("prediction", preds), ("reference", refs)):
    bad = [i for i, t in enumerate(seq) if not isinstance(t, str)]
    if bad:
      raise TypeError(f"{name} at index {bad[0]} is {type(seq[bad[0]]).__name__}, not str")


def lexical_metrics(
  preds: Sequence[str],
  refs: Sequence[str],
  convention: str = "r2gen",
  meteor: bool = True,
  meteor_timeout_s: float = DEFAULT_METEOR_TIMEOUT_S,
) -> LexicalResult:
  """Lexical metrics of predictions against references under one convention.

  Args:
    preds: generated reports, one per study.
    refs: reference reports, same order.
    convention: ``"r2gen"`` or ``"echo"`` (module docstring).
    meteor: compute METEOR (starts the java jar, ~5 s); False reports it as None.
    meteor_timeout_s: bound on one METEOR call; past it METEOR is None with the reason.

  Returns:
    LexicalResult with metrics bleu_1..bleu_4, meteor, rouge_l, cider_d, and for the
    echo convention also rouge_1, rouge_2.
  """
  _check(preds, refs, convention)
  p_tok = _prepare(preds, convention)
  r_tok = _prepare(refs, convention)
  corpus: dict[str, float | None] = {}
  per: dict[str, np.ndarray] = {}

  stats = bleu_stats(p_tok, r_tok)
  corpus_bleu = bleu_from_stats(stats)
  per_bleu = bleu_from_stats(stats[:, None, :])  # each study as its own corpus
  for k in range(4):
    corpus[f"bleu_{k + 1}"] = float(corpus_bleu[k])
    per[f"bleu_{k + 1}"] = per_bleu[:, k]

  notes: dict[str, str] = {}
  if not meteor:
    corpus["meteor"] = None
    notes["meteor"] = "not computed: switched off"
  else:
    met = meteor_outcome(p_tok, r_tok, meteor_timeout_s)
    if met.score is None:
      _log.warning("METEOR not computed: %s", met.reason)
      corpus["meteor"] = None
      notes["meteor"] = f"not computed: {met.reason}"
    else:
      corpus["meteor"] = met.score if convention == "r2gen" else float(np.mean(met.per_study))
      per["meteor"] = met.per_study
      if met.truncated:
        notes["meteor"] = (
          f"{met.truncated} text(s) longer than {DEFAULT_MAX_WORDS} words cut to that length"
        )

  if convention == "r2gen":
    from pycocoevalcap.rouge.rouge import Rouge

    gts = {i: [r] for i, r in enumerate(r_tok)}
    res = {i: [p] for i, p in enumerate(p_tok)}
    score, scores = Rouge().compute_score(gts, res)
    corpus["rouge_l"] = float(score)
    per["rouge_l"] = np.asarray(scores, np.float64)
  else:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    rows = [scorer.score(r, p) for p, r in zip(p_tok, r_tok)]
    for key, name in (("rouge1", "rouge_1"), ("rouge2", "rouge_2"), ("rougeL", "rouge_l")):
      per[name] = np.asarray([row[key].fmeasure for row in rows], np.float64)
      corpus[name] = float(per[name].mean())

  c_mean, c_per = cider_d_scores(p_tok, r_tok)
  corpus["cider_d"] = c_mean
  per["cider_d"] = c_per
  return LexicalResult(
    convention=convention, corpus=corpus, per_study=per, bleu_stats=stats, notes=notes
  )
