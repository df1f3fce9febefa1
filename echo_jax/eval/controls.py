"""Control rows that tell whether reports come from the image.

- **constant report**: the label-prior baseline. Every test study gets the same report:
  one training report whose label set is the most frequent label set of the training
  split. A model that ignores the image can do no better than this on clinical F1.
- **images of another study**: a model decodes each test study with the images of a
  different test study (a fixed derangement) and is scored against the study's own
  reference. If its clinical F1 does not fall to the constant-report level, its reports
  were not read from the pixels.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np


def derangement(n: int, seed: int) -> np.ndarray:
  """A permutation `p` of range(n) with p[i] != i for every i (n >= 2).

  A seeded shuffle, then each study takes the images of the next one in shuffled
  order (a single cycle), so no study keeps its own images.
  """
  if n < 2:
    raise ValueError(f"a derangement needs at least 2 studies, got {n}")
  order = np.random.default_rng(seed).permutation(n)
  perm = np.empty(n, np.int64)
  perm[order] = np.roll(order, -1)
  return perm


def with_images_of(studies: Sequence[Any], perm: np.ndarray) -> list[Any]:
  """Study i keeps its id and report but takes the images of study perm[i]."""
  return [
    dataclasses.replace(
      s,
      image_paths=studies[int(j)].image_paths,
      view_positions=studies[int(j)].view_positions,
      images=studies[int(j)].images,
    )
    for s, j in zip(studies, perm, strict=True)
  ]


def _label_key(study: Any) -> tuple:
  labels = study.labels or {}
  return tuple(sorted((k, float(v)) for k, v in labels.items()))


def constant_report(train_studies: Sequence[Any]) -> tuple[str, float]:
  """(report, share): a training report of the most frequent label set, and that set's share.

  Ties between label sets go to the one seen first; the report is the first training
  study's of that set (deterministic for a given split).
  """
  if not train_studies:
    raise ValueError("no training studies to take a constant report from")
  if any(not s.labels for s in train_studies):
    raise ValueError(
      "the constant-report baseline needs labels on every training study "
      "(the synthetic benchmark's labels.json)"
    )
  counts = collections.Counter(_label_key(s) for s in train_studies)
  best, count = max(counts.items(), key=lambda kv: kv[1])  # max keeps the first of ties
  first = next(s for s in train_studies if _label_key(s) == best)
  return first.report, count / len(train_studies)
