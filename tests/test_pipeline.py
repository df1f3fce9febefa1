"""The Grain pipeline: exact mid-epoch restore, per-process slices, eval padding, global arrays."""

import dataclasses

import jax
import ml_collections
import numpy as np
import pytest
from absl import flags

from echo_jax.data import pipeline
from echo_jax.train import mesh as mesh_lib


@dataclasses.dataclass(frozen=True)
class Encode:
  """Record (an int) -> fixed-shape example; records divisible by 7 count as truncated."""

  width: int = 3

  def __call__(self, record: int) -> dict:
    return {
      "tokens": np.full((self.width,), record, np.int32),
      "truncated": np.int32(record % 7 == 0),
    }


def ids(batch) -> list[int]:
  return [int(x) for x in np.asarray(batch["tokens"])[:, 0]]


def test_restore_mid_epoch_is_exact():
  records = list(range(10))  # batch 4 over 10 records: batches straddle epoch ends
  ds = pipeline.train_dataset(
    records, Encode(), global_batch_size=4, seed=3, process_index=0, process_count=1
  )
  it = pipeline.GlobalBatchIterator(ds)
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [ids(next(it)) for _ in range(5)]

  fresh = pipeline.GlobalBatchIterator(
    pipeline.train_dataset(
      records, Encode(), global_batch_size=4, seed=3, process_index=0, process_count=1
    )
  )
  fresh.set_state(state)
  assert [ids(next(fresh)) for _ in range(5)] == expected


def test_every_epoch_is_a_new_permutation_and_seeded():
  records = list(range(12))

  def first_epochs(seed):
    it = pipeline.GlobalBatchIterator(
      pipeline.train_dataset(
        records, Encode(), global_batch_size=4, seed=seed, process_index=0, process_count=1
      )
    )
    flat = [i for _ in range(6) for i in ids(next(it))]
    return flat[:12], flat[12:]

  e1, e2 = first_epochs(0)
  assert sorted(e1) == records and sorted(e2) == records
  assert e1 != e2 and e1 != records
  assert first_epochs(0) == (e1, e2)  # same seed, same order
  assert first_epochs(1)[0] != e1


def test_processes_read_disjoint_slices_that_cover_the_epoch():
  records = list(range(16))
  seen = []
  for index in range(2):
    it = pipeline.GlobalBatchIterator(
      pipeline.train_dataset(
        records, Encode(), global_batch_size=4, seed=5, process_index=index, process_count=2
      )
    )
    batches = [ids(next(it)) for _ in range(4)]  # 4 local batches of 2 = one epoch's half
    assert all(len(b) == 2 for b in batches)
    seen.append([i for b in batches for i in b])
  assert not set(seen[0]) & set(seen[1])
  assert sorted(seen[0] + seen[1]) == records


def test_truncation_is_counted_and_not_sent_to_devices():
  it = pipeline.GlobalBatchIterator(
    pipeline.train_dataset(
      list(range(14)),
      Encode(),
      global_batch_size=7,
      seed=0,
      num_epochs=1,
      process_index=0,
      process_count=1,
    )
  )
  batches = list(it)
  assert len(batches) == 2 and all("truncated" not in b for b in batches)
  assert it.num_truncated == 2  # records 0 and 7
  assert it.num_examples == 14


def test_eval_pads_last_batch_and_marks_padding():
  records = list(range(10))
  ds = pipeline.eval_dataset(
    records, Encode(), global_batch_size=4, process_index=0, process_count=1
  )
  batches = list(pipeline.GlobalBatchIterator(ds))
  assert len(batches) == 3
  valid = np.concatenate([np.asarray(b["example_valid"]) for b in batches])
  tokens = np.concatenate([np.asarray(b["tokens"])[:, 0] for b in batches])
  np.testing.assert_array_equal(valid, [True] * 10 + [False] * 2)
  np.testing.assert_array_equal(tokens[:10], records)  # unshuffled, each once


def test_eval_processes_yield_equal_batch_counts():
  records = list(range(9))  # 5 + 4 examples over 2 processes, local batch 2 -> 3 batches each
  per_process = []
  for index in range(2):
    ds = pipeline.eval_dataset(
      records, Encode(), global_batch_size=4, process_index=index, process_count=2
    )
    batches = list(pipeline.GlobalBatchIterator(ds))
    per_process.append(batches)
  assert [len(b) for b in per_process] == [3, 3]
  valid_ids = [
    int(t)
    for batches in per_process
    for b in batches
    for t, v in zip(np.asarray(b["tokens"])[:, 0], b["example_valid"])
    if v
  ]
  assert sorted(valid_ids) == records


def test_global_arrays_are_split_over_batch_axes():
  mesh = mesh_lib.make_mesh(ml_collections.ConfigDict(dict(data=2, fsdp=2, tensor=2)))
  it = pipeline.GlobalBatchIterator(
    pipeline.train_dataset(
      list(range(8)), Encode(), global_batch_size=8, seed=0, process_index=0, process_count=1
    ),
    mesh,
  )
  batch = next(it)
  assert isinstance(batch["tokens"], jax.Array) and batch["tokens"].shape == (8, 3)
  assert batch["tokens"].sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"), None)
  # 4 batch shards, each held by the 2 "tensor" devices.
  shard_rows = sorted(
    {(s.index[0].start, s.index[0].stop) for s in batch["tokens"].addressable_shards}
  )
  assert shard_rows == [(0, 2), (2, 4), (4, 6), (6, 8)]


def test_bad_batch_sizes_are_reported():
  with pytest.raises(ValueError, match="multiple of the 3 processes"):
    pipeline.train_dataset(
      [1, 2], Encode(), global_batch_size=4, seed=0, process_index=0, process_count=3
    )
  with pytest.raises(ValueError, match="empty"):
    pipeline.eval_dataset([], Encode(), global_batch_size=4)


@pytest.mark.slow
def test_worker_processes_restore_exactly():
  flags.FLAGS.mark_as_parsed()  # Grain's workers read absl flags; main.py parses them for real
  records = list(range(20))
  make = lambda: pipeline.GlobalBatchIterator(
    pipeline.train_dataset(
      records,
      Encode(),
      global_batch_size=4,
      seed=1,
      worker_count=2,
      process_index=0,
      process_count=1,
    )
  )
  it = make()
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [ids(next(it)) for _ in range(4)]
  fresh = make()
  fresh.set_state(state)
  assert [ids(next(fresh)) for _ in range(4)] == expected
