"""Control rows: the derangement and the constant-report baseline."""

import numpy as np
import pytest

from echo_jax.data.study import Study
from echo_jax.eval import controls


@pytest.mark.parametrize("n", [2, 3, 7, 200])
@pytest.mark.parametrize("seed", [0, 1, 5])
def test_derangement_is_a_permutation_without_fixed_points(n, seed):
  perm = controls.derangement(n, seed)
  assert sorted(perm.tolist()) == list(range(n))
  assert np.all(perm != np.arange(n))
  np.testing.assert_array_equal(perm, controls.derangement(n, seed))  # fixed per seed


def test_derangement_needs_two():
  with pytest.raises(ValueError, match="at least 2"):
    controls.derangement(1, 0)


def _study(i, labels=None, split="test"):
  return Study(
    id=f"s{i}",
    image_paths=(f"/img/{i}.png",),
    view_positions=("PA",),
    findings=f"findings {i}.",
    impression=f"impression {i}.",
    split=split,
    labels=labels,
  )


def test_with_images_of_swaps_only_the_images():
  studies = [_study(i) for i in range(5)]
  perm = controls.derangement(5, 0)
  swapped = controls.with_images_of(studies, perm)
  for i, s in enumerate(swapped):
    assert s.id == studies[i].id and s.report == studies[i].report
    assert s.image_paths == studies[perm[i]].image_paths != studies[i].image_paths


def test_constant_report_takes_the_most_frequent_label_set():
  normal, sick = {"No Finding": 1, "Edema": 0}, {"No Finding": 0, "Edema": 1}
  train = [_study(0, sick, "train"), _study(1, normal, "train"), _study(2, normal, "train")]
  report, share = controls.constant_report(train)
  assert report == train[1].report
  assert share == pytest.approx(2 / 3)
  with pytest.raises(ValueError, match="labels"):
    controls.constant_report([_study(0, None, "train")])
