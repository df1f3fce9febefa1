"""Lexical metrics: our cleaning/tokenising and recombination match the packages' numbers."""

import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
from rouge_score import rouge_scorer

from echo_jax.eval import bootstrap as bs
from echo_jax.eval import lexical
from echo_jax.eval.lexical import (
  bleu_from_stats,
  bleu_stats,
  echo_tokenize,
  lexical_metrics,
  r2gen_clean,
)

PREDS = [
  "Findings: The lungs are clear. No pleural effusion or pneumothorax. Impression: No acute process.",
  "Findings: Moderate cardiomegaly. Small left effusion. Impression: Cardiomegaly.",
  "Findings: Right lower lobe opacity, possibly pneumonia. Impression: Possible pneumonia.",
  "Findings: ET tube 4 cm above the carina. Impression: Tubes in place.",
  "",
]
REFS = [
  "Findings: Lungs are clear. There is no effusion. Impression: No acute cardiopulmonary process.",
  "Findings: Cardiomegaly is moderate. Small left pleural effusion. Impression: Cardiomegaly and effusion.",
  "Findings: Right lower lobe consolidation. Impression: Pneumonia.",
  "Findings: The endotracheal tube terminates 4 cm above the carina. Impression: Support devices in place.",
  "Findings: Normal chest. Impression: Normal.",
]


def test_r2gen_clean_follows_r2gen_recipe():
  assert (
    r2gen_clean("1. Small left effusion. 2. Cardiomegaly.")
    == "small left effusion . cardiomegaly ."
  )
  assert (
    r2gen_clean("Lungs  are clear..  No (acute) process: none_ ")
    == "lungs are clear . no acute process none ."
  )
  assert r2gen_clean("The heart's size/shape is normal") == "the hearts sizeshape is normal ."


def test_echo_tokenize_detaches_full_stops():
  assert echo_tokenize("Findings: Lungs clear. Impression: Normal.") == [
    "findings:",
    "lungs",
    "clear",
    ".",
    "impression:",
    "normal",
    ".",
  ]


def test_bleu_recombination_matches_pycocoevalcap():
  p = [r2gen_clean(t) if t else "" for t in PREDS]
  r = [r2gen_clean(t) for t in REFS]
  score, per_image = Bleu(4).compute_score(
    {i: [x] for i, x in enumerate(r)}, {i: [x] for i, x in enumerate(p)}, verbose=0
  )
  stats = bleu_stats(p, r)
  np.testing.assert_allclose(bleu_from_stats(stats), score, rtol=1e-12)
  np.testing.assert_allclose(
    bleu_from_stats(stats[:, None, :]).T, np.asarray(per_image), rtol=1e-9, atol=1e-12
  )


def test_bootstrap_bleu_equals_package_on_a_resample():
  p = [r2gen_clean(t) for t in PREDS]
  r = [r2gen_clean(t) for t in REFS]
  idx = bs.bootstrap_indices(len(p), n_boot=3, seed=1)
  stats = bleu_stats(p, r)
  for row in idx:
    gts = {k: [r[j]] for k, j in enumerate(row)}
    res = {k: [p[j]] for k, j in enumerate(row)}
    score, _ = Bleu(4).compute_score(gts, res, verbose=0)
    np.testing.assert_allclose(bleu_from_stats(stats[row]), score, rtol=1e-12)


def test_r2gen_convention_matches_package_scores():
  res = lexical_metrics(PREDS, REFS, "r2gen", meteor=False)
  p = {i: [r2gen_clean(t)] for i, t in enumerate(PREDS)}
  r = {i: [r2gen_clean(t)] for i, t in enumerate(REFS)}
  rl, rl_per = Rouge().compute_score(r, p)
  cd, cd_per = Cider().compute_score(r, p)
  assert res.corpus["rouge_l"] == pytest.approx(rl, rel=1e-12)
  assert res.corpus["cider_d"] == pytest.approx(cd, rel=1e-12)
  np.testing.assert_allclose(res.per_study["rouge_l"], rl_per)
  np.testing.assert_allclose(res.per_study["cider_d"], cd_per)
  assert res.corpus["meteor"] is None and "meteor" not in res.per_study


def test_echo_convention_rouge_is_mean_of_rouge_score():
  res = lexical_metrics(PREDS, REFS, "echo", meteor=False)
  sc = rouge_scorer.RougeScorer(["rougeL", "rouge2"])
  want = [
    sc.score(" ".join(echo_tokenize(r)), " ".join(echo_tokenize(p))) for p, r in zip(PREDS, REFS)
  ]
  np.testing.assert_allclose(res.per_study["rouge_l"], [w["rougeL"].fmeasure for w in want])
  assert res.corpus["rouge_l"] == pytest.approx(np.mean([w["rougeL"].fmeasure for w in want]))
  assert res.corpus["rouge_2"] == pytest.approx(np.mean([w["rouge2"].fmeasure for w in want]))
  assert res.per_study["rouge_l"][-1] == 0.0  # empty prediction


def test_identical_reports_score_perfectly():
  res = lexical_metrics(REFS, REFS, "r2gen", meteor=False)
  for k in ("bleu_1", "bleu_4", "rouge_l"):
    assert res.corpus[k] == pytest.approx(1.0, abs=1e-6)
  res_e = lexical_metrics(REFS, REFS, "echo", meteor=False)
  assert res_e.corpus["rouge_l"] == pytest.approx(1.0)


def test_meteor_not_computed_without_java(monkeypatch):
  monkeypatch.setattr(lexical.shutil, "which", lambda name: None)
  assert lexical.meteor_scores(["a b"], ["a b"]) is None
  res = lexical_metrics(PREDS, REFS, "r2gen", meteor=True)
  assert res.corpus["meteor"] is None


@pytest.mark.slow
def test_meteor_jar_runs_offline():
  if not lexical.java_available():
    pytest.skip("no java")
  out = lexical.meteor_scores(
    ["the lungs are clear .", "small effusion ."], ["the lungs are clear .", "no effusion ."]
  )
  assert out is not None
  score, per = out
  assert per[0] == pytest.approx(1.0, abs=1e-6) and 0 < per[1] < 1 and 0 < score < 1


def test_input_validation():
  with pytest.raises(ValueError, match="2 predictions but 1"):
    lexical_metrics(["a", "b"], ["a"])
  with pytest.raises(ValueError, match="convention"):
    lexical_metrics(["a"], ["a"], "coco")
  with pytest.raises(TypeError, match="prediction at index 0"):
    lexical_metrics([None], ["a"])
