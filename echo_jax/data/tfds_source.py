"""A built echo_cxr TFDS dataset as a random-access sequence of `Study` records.

`TfdsStudies(path, split)` reads one split of a dataset that echo_jax/data/tfds_builder.py
built (path: DATA_DIR/echo_cxr/CONFIG/VERSION, or DATA_DIR/echo_cxr/CONFIG for its newest
version) through `tfds.data_source`: no TensorFlow is imported. `studies[i]` reads record i
and returns a `Study` whose `images` hold the record's PNG bytes and whose `image_paths`
are names of them (`image_name`: "tfds:<id>/<k>.png", no file), so
`echo_jax.data.examples.StudyExamples` and the Grain pipeline (echo_jax/data/pipeline.py)
take it where they take a list of studies. Records are read when asked for, never all at
once; the object pickles as (path, split, indices) and reopens the source where it is
unpickled (Grain worker processes).

A slice or `select(indices)` is a view of the same split (the sample hook takes
`studies[:n]`; generate --resume keeps the studies not yet written).
`ids_and_image_counts()` reads every record of the view once (without decoding images)
for the ids and image counts that generate needs before decoding; it is the only call
that touches the whole split.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any, overload

from echo_jax.data import tfds_builder
from echo_jax.data.study import Study


class NotATfdsDatasetError(ValueError):
  """The path is not a built echo_cxr dataset, or lacks the split."""


def image_name(study_id: str, k: int) -> str:
  """The name standing for image k of a study read from a TFDS dataset (it has no path)."""
  return f"tfds:{study_id}/{k}.png"


def _open(path: str, split: str) -> Sequence[dict[str, Any]]:
  """The split's tfds data source; NotATfdsDatasetError in one line naming the path."""
  if not os.path.isdir(path):
    raise NotATfdsDatasetError(
      f"data path {path} is not a folder: pass a built echo_cxr dataset "
      "(DATA_DIR/echo_cxr/CONFIG/1.0.0, built by python -m echo_jax.data.tfds_builder)"
    )
  try:
    builder_dir = tfds_builder.resolve_builder_dir(path)
    with open(os.path.join(builder_dir, "dataset_info.json"), encoding="utf-8") as f:
      name = json.load(f).get("name")
    if name != tfds_builder.NAME:
      raise ValueError(f"{builder_dir} holds the tfds dataset {name!r}, not {tfds_builder.NAME}")
    return tfds_builder.tfds_source(builder_dir, split)
  except (OSError, ValueError) as e:  # JSONDecodeError is a ValueError
    raise NotATfdsDatasetError(str(e)) from None


class TfdsStudies(Sequence[Study]):
  """One split of a built echo_cxr dataset as `Study` records (module docstring)."""

  def __init__(
    self, path: str, split: str, *, indices: Sequence[int] | None = None, max_images: int = 0
  ):
    """`indices`: the records of this view (None: all); `max_images` > 0 keeps the first N
    images of each study (the builder stores frontal views first)."""
    self.path = os.fspath(path)
    self.split = split
    self.max_images = max_images
    self._source = _open(self.path, split)
    n = len(self._source)
    self._indices = None if indices is None else tuple(int(i) for i in indices)
    if max_images < 0:
      raise ValueError(f"max_images={max_images} must be >= 0")
    if self._indices and not all(0 <= i < n for i in self._indices):
      raise IndexError(f"indices out of range for the {n} {split} studies of {self.path}")
    self._index: list[tuple[str, int]] | None = None

  # pickled as its arguments: the source's open files stay in the process that opened them
  def __getstate__(self) -> dict[str, Any]:
    return {
      "path": self.path,
      "split": self.split,
      "indices": self._indices,
      "max_images": self.max_images,
    }

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__init__(
      state["path"], state["split"], indices=state["indices"], max_images=state["max_images"]
    )

  def __len__(self) -> int:
    return len(self._source) if self._indices is None else len(self._indices)

  @overload
  def __getitem__(self, i: int) -> Study: ...
  @overload
  def __getitem__(self, i: slice) -> TfdsStudies: ...
  def __getitem__(self, i):
    if isinstance(i, slice):
      return self.select(range(len(self))[i])
    n = len(self)
    if not -n <= i < n:
      raise IndexError(f"study {i} of {n}")
    j = i % n
    study = self.record_study(self._source[j if self._indices is None else self._indices[j]])
    if self.max_images and len(study.images) > self.max_images:
      keep = self.max_images
      study = dataclasses.replace(
        study,
        image_paths=study.image_paths[:keep],
        view_positions=study.view_positions[:keep],
        images=study.images[:keep],
      )
    return study

  def __iter__(self) -> Iterator[Study]:
    for i in range(len(self)):
      yield self[i]

  def __repr__(self) -> str:
    return f"TfdsStudies({self.path!r}, {self.split!r}, {len(self)} studies)"

  def select(self, indices: Sequence[int]) -> TfdsStudies:
    """The view of this one's studies at `indices` (positions in this view)."""
    base = range(len(self._source)) if self._indices is None else self._indices
    return TfdsStudies(
      self.path, self.split, indices=[base[i] for i in indices], max_images=self.max_images
    )

  @staticmethod
  def record_study(record: dict[str, Any]) -> Study:
    """A builder record as a Study carrying its PNG bytes (decoded only when examples are built)."""
    inputs = tfds_builder.record_to_study_inputs(record, decode=False)
    return Study(
      id=inputs.id,
      image_paths=tuple(image_name(inputs.id, k) for k in range(len(inputs.images))),
      view_positions=inputs.view_positions,
      findings=inputs.findings,
      impression=inputs.impression,
      split=inputs.split,
      images=inputs.images,
    )

  def ids_and_image_counts(self) -> list[tuple[str, int]]:
    """(id, number of images) of every study in order: one read of each record, kept."""
    if self._index is None:
      self._index = [(s.id, len(s.images)) for s in self]
    return self._index
