"""ROC AUC against a brute-force count of positive/negative pairs."""

import numpy as np

from echo_jax.eval.auc import per_label_auc, roc_auc


def _pairs(scores, targets):
  pos, neg = scores[targets == 1], scores[targets == 0]
  wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
  return wins / (len(pos) * len(neg))


def test_auc_equals_the_pair_count_with_ties():
  rng = np.random.default_rng(0)
  for _ in range(20):
    scores = rng.integers(0, 5, 30).astype(float)  # many ties
    targets = rng.integers(0, 2, 30)
    assert np.isclose(roc_auc(scores, targets), _pairs(scores, targets))


def test_perfect_inverse_and_undefined():
  assert roc_auc([0.1, 0.2, 0.9], [0, 0, 1]) == 1.0
  assert roc_auc([0.9, 0.2, 0.1], [0, 0, 1]) == 0.0
  assert roc_auc([0.3, 0.3], [0, 1]) == 0.5
  assert roc_auc([0.1, 0.2], [1, 1]) is None


def test_per_label_mask():
  scores = np.array([[0.1, 0.9], [0.8, 0.2], [0.5, 0.5]])
  targets = np.array([[0, 1], [1, 0], [0, 1]])
  mask = np.array([[1, 1], [1, 1], [0, 1]])
  assert per_label_auc(scores, targets, mask) == [1.0, 1.0]
