"""Grammar-valid share and exact-findings rate on hand-made reports."""

import numpy as np
import pytest

from echo_jax.data.synthetic.reports import enumerate_sentences
from echo_jax.eval import coherence


def test_every_generated_sentence_is_in_the_grammar():
  texts = [t for _, t, _ in enumerate_sentences()]
  assert coherence.grammar_valid_share(texts) == 1.0


def test_shares_of_hand_made_reports():
  valid = "The heart size is normal."
  paraphrase = "Normal heart size."  # another template of the same phrase: also valid
  invalid = "The heart is purple."
  # A mean-field mixture: the first half of one paraphrase, the second half of another.
  mixture = "The heart size is normal in size."
  assert coherence.normalize_sentence(mixture) not in coherence.benchmark_sentences()
  report = f"Findings: {valid} {paraphrase} {invalid} Impression: {mixture}"
  assert coherence.split_sentences(report) == [valid, paraphrase, invalid, mixture]
  np.testing.assert_array_equal(coherence.grammar_counts([report]), [[2, 4]])
  assert coherence.grammar_valid_share([report]) == 0.5
  # Pooled over reports: 2 + 1 valid of 4 + 1 sentences.
  assert coherence.grammar_valid_share([report, paraphrase]) == pytest.approx(3 / 5)


def test_case_spacing_and_fragments():
  assert coherence.grammar_valid_share(["findings: normal heart size ."]) == 1.0
  # A report cut mid-sentence ends in an invalid fragment.
  np.testing.assert_array_equal(
    coherence.grammar_counts(["Normal heart size. The heart is"]), [[1, 2]]
  )
  assert coherence.grammar_valid_share([""]) == 0.0


def test_exact_findings_compares_all_14_labels():
  nan = np.nan
  ref = np.full((3, 14), nan)
  ref[:, 1] = 1.0  # Cardiomegaly positive in every reference
  pred = ref.copy()
  pred[1, 2] = 1.0  # an extra positive
  pred[2, 1] = 0.0  # negative where the reference is positive
  pred[0, 3] = 0.0  # negated vs unmentioned: both negative after binarizing
  np.testing.assert_array_equal(coherence.exact_findings(pred, ref), [True, False, False])
  out = coherence.coherence_metrics(["Normal heart size."] * 3, pred, ref)
  assert out == {"grammar_valid_share": 1.0, "exact_findings": pytest.approx(1 / 3)}
