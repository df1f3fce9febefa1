"""The Grain input pipeline: records -> fixed-shape examples -> global batches on the mesh.

Training: source -> seeded shuffle (a new order every epoch) -> this process's slice ->
`transform` (load images, preprocess, tokenize: a callable the caller provides) ->
batches of the per-process batch size -> optional worker processes -> global jax.Arrays
split over the mesh's batch axes. Every process runs the same shuffle and takes every
`process_count`-th example, so processes read disjoint examples and nobody reads the
whole dataset. The Grain iterator state (a few integers) is checkpointable and restores
exactly mid-epoch.

Evaluation: no shuffle, one pass; the last batch is padded with copies of a real
example whose `example_valid` is False (losses must weight those by zero).

`transform(record) -> dict[str, np.ndarray]` must return the same shapes for every
record (pad inside it). An optional int field `truncated` (1 when the example had to be
cut) is counted by the iterator and not sent to the devices. With worker processes the
transform must be picklable (a module-level function or a dataclass instance).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import jax
import numpy as np
from jax.sharding import Mesh

from echo_jax.models.sharding import batch_sharding

Example = dict[str, Any]
Transform = Callable[[Any], Example]

HOST_ONLY_FIELDS = ("truncated",)  # statistics counted on the host, never sent to devices


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  if not 0 <= index < count:
    raise ValueError(f"process_index={index} must be in [0, process_count={count})")
  return index, count


def _local_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(
      f"global batch size {global_batch_size} must be a positive multiple of the {process_count} processes"
    )
  return global_batch_size // process_count


def stack_examples(examples: Sequence[Example]) -> Example:
  """Stack a list of same-shaped example pytrees along a new leading batch axis."""
  try:
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *examples)
  except ValueError as e:
    shapes = [jax.tree.map(lambda x: np.shape(x), ex) for ex in examples[:2]]
    raise ValueError(
      f"examples of one batch differ in structure or shape (pad inside the transform): {shapes}"
    ) from e


def train_dataset(
  records: Sequence[Any],
  transform: Transform,
  *,
  global_batch_size: int,
  seed: int,
  num_epochs: int | None = None,
  worker_count: int = 0,
  worker_buffer_size: int = 2,
  read_threads: int = 2,
  process_index: int | None = None,
  process_count: int | None = None,
) -> grain.IterDataset:
  """Shuffled, repeated (forever if `num_epochs` is None), per-process training batches.

  Without worker processes, `read_threads` threads prepare up to 2 batches ahead in the
  main process; with `worker_count` > 0, each worker prepares `worker_buffer_size`.
  """
  if not len(records):
    raise ValueError("the training set is empty: check the dataset path and split")
  index, count = _process(process_index, process_count)
  local = _local_batch_size(global_batch_size, count)
  ds = grain.MapDataset.source(records).shuffle(seed=seed).repeat(num_epochs)
  ds = ds[index::count]  # slice before the transform: each process loads only its examples
  ds = ds.map(transform).batch(local, drop_remainder=True, batch_fn=stack_examples)
  # Batches are prefetched by a few threads, not Grain's default of 16 threads x 500.
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=2))
  if worker_count > 0:
    it = it.mp_prefetch(
      grain.MultiprocessingOptions(
        num_workers=worker_count, per_worker_buffer_size=worker_buffer_size
      )
    )
  return it


@dataclasses.dataclass(frozen=True)
class _EvalElement:
  """Local eval index -> example; indices past the end repeat a real one, marked invalid."""

  records: Sequence[Any]
  local_indices: Sequence[int]
  transform: Transform

  def __call__(self, i: int) -> Example:
    valid = i < len(self.local_indices)
    record = self.records[
      self.local_indices[i] if valid else self.local_indices[0] if self.local_indices else 0
    ]
    example = dict(self.transform(record))
    example["example_valid"] = np.asarray(valid)
    return example


def eval_dataset(
  records: Sequence[Any],
  transform: Transform,
  *,
  global_batch_size: int,
  process_index: int | None = None,
  process_count: int | None = None,
) -> grain.MapDataset:
  """One unshuffled pass; every process yields the same number of batches (padded)."""
  if not len(records):
    raise ValueError("the evaluation set is empty: check the dataset path and split")
  index, count = _process(process_index, process_count)
  local = _local_batch_size(global_batch_size, count)
  local_indices = list(range(index, len(records), count))
  per_process = math.ceil(len(records) / count)  # the largest process share
  num_batches = math.ceil(per_process / local)
  element = _EvalElement(records, local_indices, transform)
  return (
    grain.MapDataset.range(num_batches * local).map(element).batch(local, batch_fn=stack_examples)
  )


def to_global(local_batch: Example, mesh: Mesh | None) -> Example:
  """Per-process numpy batch -> global jax.Arrays split over (data, fsdp) on `mesh`."""
  if mesh is None:
    return jax.tree.map(np.asarray, local_batch)

  def one(x: Any) -> jax.Array:
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim), x)

  return jax.tree.map(one, local_batch)


class GlobalBatchIterator:
  """Iterates a Grain dataset and hands out global batches; checkpointable.

  `grain_iterator` is what a checkpoint saves (`get_state` / `set_state`); nothing is
  read ahead here, so the saved state always points at the next batch the loop takes.
  """

  def __init__(self, dataset: grain.IterDataset | grain.MapDataset, mesh: Mesh | None = None):
    if isinstance(dataset, grain.MapDataset):
      dataset = dataset.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=2))
    self.grain_iterator = iter(dataset)
    self.mesh = mesh
    self.num_truncated = 0
    self.num_examples = 0

  def __iter__(self) -> GlobalBatchIterator:
    return self

  def __next__(self) -> Example:
    local = dict(next(self.grain_iterator))
    for name in HOST_ONLY_FIELDS:
      if name in local:
        self.num_truncated += int(np.sum(local.pop(name)))
    self.num_examples += len(next(iter(jax.tree.leaves(local))))
    return to_global(local, self.mesh)

  def get_state(self) -> Mapping[str, Any]:
    return self.grain_iterator.get_state()

  def set_state(self, state: Mapping[str, Any]) -> None:
    self.grain_iterator.set_state(state)
