"""The dataset-independent study record and the skip log every reader reports to.

A `Study` is what every reader in `echo_jax.data.readers` returns: one imaging study with
its images (absolute paths; or, read from a TFDS dataset, the images' PNG bytes in
`images` with names in `image_paths`), the report split into findings and impression, the split and,
where the dataset has them, labels. Readers never crash on a bad entry and never pass one
through silently: they call `SkipLog.skip(study_id, reason)` and move on; `SkipLog.check()`
stops with a clear error when more than a configurable fraction of entries was bad (a
wrong root or a wrong format is far more likely than a dataset that is 10% broken).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")

# Spellings of the three splits across datasets (MIMIC-CXR "validate", CheXpert "valid",
# ReXGradient "validation", ...), mapped to ours.
_SPLIT_ALIASES = {
  "train": "train",
  "training": "train",
  "val": "val",
  "valid": "val",
  "validate": "val",
  "validation": "val",
  "dev": "val",
  "test": "test",
  "testing": "test",
  "test_public": "test",
}


def normalize_split(name: object) -> str | None:
  """'validate' / 'valid' / 'validation' -> 'val' etc.; None for an unknown or missing name."""
  if not isinstance(name, str):
    return None
  return _SPLIT_ALIASES.get(name.strip().lower())


@dataclasses.dataclass(frozen=True)
class Study:
  """One imaging study: images plus the report, as every reader returns it.

  Attributes:
    id: the dataset's study id (unique within a dataset).
    image_paths: absolute paths of the study's images, frontal views first; when `images`
      is set, names of those images (no file: errors and batch output name them so).
    view_positions: one entry per image ("PA", "AP", "LATERAL", "FRONTAL", ...; "" when
      the dataset does not say).
    findings: the findings section, whitespace-normalized ("" when the report has none).
    impression: the impression section, whitespace-normalized ("" when none).
    split: "train", "val" or "test".
    labels: per-finding labels when the dataset ships them (CheXpert names -> value), else
      None. Values are as the dataset gives them (1 positive, 0 negative, -1 uncertain).
    meta: reader-specific extras (subject id, ...); never fed to the report model. The
      synthetic benchmark's finding set (meta["findings"]) gives the vision pretraining
      stage its targets.
    images: the images' encoded file bytes (PNG in a TFDS dataset), one per image_paths
      entry, or () when the images are read from image_paths. Loaders decode these when
      present (echo_jax.data.images.load_study_images); left out of the repr.
  """

  id: str
  image_paths: tuple[str, ...]
  view_positions: tuple[str, ...]
  findings: str
  impression: str
  split: str
  labels: Mapping[str, float] | None = None
  meta: Mapping[str, Any] | None = None
  images: tuple[bytes, ...] = dataclasses.field(default=(), repr=False)

  def __post_init__(self):
    # Readers build studies from untrusted files: catch a reader bug here, not in training.
    if len(self.image_paths) != len(self.view_positions):
      raise ValueError(
        f"study {self.id!r}: {len(self.image_paths)} image paths but {len(self.view_positions)} view positions"
      )
    if self.images and len(self.images) != len(self.image_paths):
      raise ValueError(
        f"study {self.id!r}: {len(self.images)} encoded images but {len(self.image_paths)} image names"
      )
    if self.split not in SPLITS:
      raise ValueError(f"study {self.id!r}: split {self.split!r} is not one of {SPLITS}")

  @property
  def report(self) -> str:
    """'Findings: {findings} Impression: {impression}', ECHO's target format.

    An empty section leaves its header with no text ("Findings: Impression: ..."), so the
    header order is always the same and no placeholder words enter the training text.
    """
    parts = ["Findings:", self.findings, "Impression:", self.impression]
    return " ".join(p for p in parts if p)


class TooManyBadError(RuntimeError):
  """More than the allowed fraction of a dataset's entries was unusable."""


class SkipLog:
  """Counts good entries and skipped ones (with reasons); thread-safe.

  Readers call `ok()` for each study they return and `skip(id, reason, detail)` for each
  one they drop. The first `log_first` skips of every reason are logged at WARNING, the
  rest at DEBUG, so a broken dataset does not flood the log. `check()` raises
  `TooManyBadError` once the bad fraction exceeds `max_bad_fraction`.
  """

  def __init__(self, name: str = "data", *, max_bad_fraction: float = 0.05, log_first: int = 10):
    if not 0.0 <= max_bad_fraction <= 1.0:
      raise ValueError(f"max_bad_fraction={max_bad_fraction} must lie in [0, 1]")
    self.name = name
    self.max_bad_fraction = max_bad_fraction
    self.log_first = log_first
    self.num_ok = 0
    self.skipped: list[tuple[str, str, str]] = []  # (item id, reason, detail)
    self._reasons: collections.Counter[str] = collections.Counter()
    self._lock = threading.Lock()

  def ok(self, n: int = 1) -> None:
    with self._lock:
      self.num_ok += n

  def skip(self, item_id: str, reason: str, detail: str = "") -> None:
    """Record one dropped entry. `reason` is a short key ("missing_image"), `detail` free text."""
    with self._lock:
      self.skipped.append((str(item_id), reason, detail))
      self._reasons[reason] += 1
      count = self._reasons[reason]
    level = logging.WARNING if count <= self.log_first else logging.DEBUG
    log.log(
      level, "%s: skipped %s (%s)%s", self.name, item_id, reason, f": {detail}" if detail else ""
    )

  @property
  def num_skipped(self) -> int:
    return len(self.skipped)

  @property
  def total(self) -> int:
    return self.num_ok + self.num_skipped

  @property
  def bad_fraction(self) -> float:
    return self.num_skipped / self.total if self.total else 0.0

  def reasons(self) -> collections.Counter[str]:
    """Number of skips per reason."""
    with self._lock:
      return collections.Counter(self._reasons)

  def summary(self) -> str:
    reasons = ", ".join(f"{r}: {n}" for r, n in self.reasons().most_common())
    return (
      f"{self.name}: {self.num_ok} ok, {self.num_skipped} skipped "
      f"({100 * self.bad_fraction:.2f}%){' [' + reasons + ']' if reasons else ''}"
    )

  def check(self) -> None:
    """Raise TooManyBadError when the bad fraction exceeds `max_bad_fraction`."""
    if self.total and self.bad_fraction > self.max_bad_fraction:
      examples = "; ".join(f"{i} ({r}{': ' + d if d else ''})" for i, r, d in self.skipped[:5])
      raise TooManyBadError(
        f"{self.summary()}: more than {100 * self.max_bad_fraction:.2f}% of the entries are unusable. "
        f"First ones: {examples}. Check the dataset root and format (run "
        f"`python -m echo_jax.data.check`), or raise max_bad_fraction if this is expected."
      )
