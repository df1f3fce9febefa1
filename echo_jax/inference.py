"""Batch report generation: studies -> fixed-shape batches -> a sampler -> report texts.

    generator = ReportGenerator(model, tokenizer, example_fn, batch_size=8)
    rows = generator.generate(studies, OneStepSampler(eos_id=..., mask_id=..., pad_id=...,
                                                      block_len=8, max_new_tokens=256))
    speed_summary(rows)  # {"tpf": ..., "tokens_per_second": ..., "ms_per_report": ...}

`model` is an `EchoVLM`, or a `(decode_model, params)` pair of any model implementing
`echo_jax.sampling.protocol.DecodeModel` whose context is a `DecodeContext`.
`example_fn` is the training pipeline's `StudyExamples` (or any callable returning the
same fields): every study becomes a left-padded context of the same static shape, so
the sampler compiles once per (sampler, batch size, context shapes); the response
fields of the example are not used.

Batching: studies are taken in order, `batch_size` at a time; the last batch is padded
by repeating its last study and the padded rows are dropped from the result.
Continuous batching (`batching="continuous"`, sampling/continuous.py): a row whose report
has ended takes the next study at once instead of idling until its batch's longest report
ends; every study gets the same tokens as in lockstep batches of the same size. Rows then
come out in the order they finish (`generate` still returns them in input order), and a
row's `batch_forwards` counts the batch's model calls while the study held its row.

`iter_rows` yields each batch's rows as soon as it is decoded and can skip studies whose
example raises a given error (an unreadable image): the batch is then filled from the
following studies, so the good studies of a batch holding a bad one are still decoded. With a
`mesh`, the parameters are placed by the logical-axis rules (models/sharding.py) and
the batch is split over the mesh's batch axes ("data", "fsdp"); `batch_size` should be
a multiple of their size (otherwise the batch is replicated).

Timing: each batch is timed from the sampler call to `jax.block_until_ready` on its
output (one host sync per batch; the sampler itself never syncs). Host work (image
loading, tokenizing) is not timed: the next batch is prepared in a background thread
while the device decodes. Compilation is excluded by a warm-up: the first time a
(sampler, batch shapes) pair is seen, the first batch is decoded once untimed, then
decoded again for the result. A row's `seconds` is its batch's wall time divided by the
real (not padded) studies in that batch (with continuous batching: each device call's
time divided among the studies that finished in it), so the rows' seconds add up to the
timed wall time; `speed_summary` derives tokens per second and milliseconds per report.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import itertools
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from echo_jax import runs
from echo_jax.data import tokenizer as tokenizer_lib
from echo_jax.data.pipeline import stack_examples
from echo_jax.models import sharding as sharding_lib
from echo_jax.models.decode_model import DecodeContext, EchoDecodeModel
from echo_jax.sampling import (
  AutoregressiveSampler,
  MultiStepSampler,
  OneStepSampler,
  continuous,
  stops,
)
from echo_jax.sampling.state import SampleOutput

Row = dict[str, Any]
BATCHING = ("lockstep", "continuous")

__all__ = [
  "BATCHING",
  "SAMPLERS",
  "ReportGenerator",
  "Row",
  "Skipped",
  "batch_context",
  "lockstep_occupancy",
  "make_sampler",
  "row_stats",
  "sampler_ids",
  "speed_summary",
]


def batch_context(batch: Mapping[str, Any]) -> DecodeContext:
  """A stacked StudyExamples batch -> the samplers' DecodeContext (positions to (3, B, P))."""
  return DecodeContext(
    tokens_BP=np.asarray(batch["context_tokens"], np.int32),
    positions_3BP=np.swapaxes(np.asarray(batch["context_positions"], np.int32), 0, 1),
    valid_BP=np.asarray(batch["context_valid"]).astype(bool),
    vision=batch.get("vision"),
  )


def _context_shardings(
  context: DecodeContext, mesh: Mesh, rules: sharding_lib.LogicalRules
) -> DecodeContext:
  """Batch dimension of every context leaf on the batch axes (dim 1 of positions_3BP)."""
  size = context.tokens_BP.shape[0]

  def along_batch(ndim: int, batch_dim: int = 0) -> NamedSharding:
    return sharding_lib.batch_sharding(mesh, ndim, rules, batch_dim=batch_dim, batch_size=size)

  return DecodeContext(
    tokens_BP=along_batch(2),
    positions_3BP=along_batch(3, batch_dim=1),
    valid_BP=along_batch(2),
    vision=jax.tree.map(lambda x: along_batch(np.ndim(x)), context.vision),
  )


@dataclasses.dataclass(frozen=True)
class Skipped:
  """A study left out of generation: `reason` is the error's short key (BadImageError.reason)."""

  study: Any
  reason: str
  detail: str


@dataclasses.dataclass
class _Prepared:
  studies: list[Any]  # padded to batch_size (empty when every study was skipped)
  real: int
  context: DecodeContext | None
  skipped: list[Skipped]


def _signature(context: Any) -> tuple:
  leaves, treedef = jax.tree.flatten(context)
  return treedef, tuple((np.shape(x), np.dtype(x.dtype).name) for x in leaves)


class ReportGenerator:
  """Generates reports for lists of studies with any sampler; see the module docstring."""

  def __init__(
    self,
    model: Any,
    tokenizer: tokenizer_lib.Tokenizer,
    example_fn: Callable[[Any], Mapping[str, Any]],
    batch_size: int,
    mesh: Mesh | None = None,
    *,
    params: Any = None,
    rules: sharding_lib.LogicalRules = sharding_lib.DEFAULT_LOGICAL_RULES,
    prefetch: bool = True,
    batching: str = "lockstep",
  ):
    """`model`: an EchoVLM, or a DecodeModel with `params`, or a (decode_model, params) pair.
    `batching`: "lockstep" or "continuous" (see the module docstring)."""
    if batch_size < 1:
      raise ValueError(f"batch_size={batch_size} must be >= 1")
    if batching not in BATCHING:
      raise ValueError(f"batching={batching!r}: use one of {BATCHING}")
    if isinstance(model, tuple) and len(model) == 2:
      model, params = model
    if isinstance(model, nnx.Module):
      model, params = EchoDecodeModel.from_model(model)
    if params is None:
      raise ValueError("pass the weights: an EchoVLM, a (decode_model, params) pair or params=")
    if mesh is not None:
      params = jax.device_put(params, sharding_lib.param_shardings(params, mesh, rules))
    self.decode_model = model
    self.params = params
    self.tokenizer = tokenizer
    self.example_fn = example_fn
    self.batch_size = batch_size
    self.mesh = mesh
    self.rules = tuple(rules)
    self.prefetch = prefetch
    self.batching = batching
    self._warm: set[tuple] = set()
    self._continuous: dict[Any, continuous.ContinuousDecoder] = {}

  @classmethod
  def from_run(
    cls,
    run: runs.Run,
    batch_size: int,
    *,
    examples: Callable[[Any], Mapping[str, Any]] | None = None,
    mesh: Mesh | None = None,
    **options: Any,
  ) -> ReportGenerator:
    """The generator of a loaded run (`echo_jax.runs.load_run`): its model, tokenizer
    and example builder (`examples` replaces the builder, e.g. sized for more images).
    Decode with `run.sampler()`, the sampler the run was trained for."""
    return cls(run.model, run.tokenizer, examples or run.examples(), batch_size, mesh, **options)

  # ---------------------------------------------------------------- batches
  def batches(self, studies: Sequence[Any]) -> Iterator[tuple[list[Any], int, DecodeContext]]:
    """(batch studies padded to batch_size, number of real ones, context on the devices)."""
    for batch in self._prepared(studies, skip=()):
      if batch.real:
        yield batch.studies, batch.real, batch.context

  def _prepared(self, studies: Sequence[Any], skip: tuple[type, ...]) -> Iterator[_Prepared]:
    """Prepared batches in study order; the next one is built while the caller decodes."""
    pending = iter(studies)
    prepare = functools.partial(self._prepare_next, pending, skip)
    if not self.prefetch or len(studies) <= self.batch_size:
      while (batch := prepare()) is not None:
        yield batch
      return
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
      future = pool.submit(prepare)
      while (batch := future.result()) is not None:
        future = pool.submit(prepare)
        yield batch

  def _prepare_next(self, pending: Iterator[Any], skip: tuple[type, ...]) -> _Prepared | None:
    """The next batch_size usable studies of `pending`, or None when it is exhausted.

    A study whose example raises one of `skip` is set aside with its error and the batch
    is filled from the following studies, so one bad study never costs its neighbours.
    """
    good: list[tuple[Any, Mapping[str, Any]]] = []
    skipped: list[Skipped] = []
    for study in pending:
      try:
        good.append((study, self.example_fn(study)))
      except skip as e:
        skipped.append(Skipped(study, getattr(e, "reason", type(e).__name__), str(e)))
        continue
      if len(good) == self.batch_size:
        break
    if not good:
      return _Prepared([], 0, None, skipped) if skipped else None
    real = len(good)
    good += [good[-1]] * (self.batch_size - real)  # pad by repeating the last study
    context = batch_context(stack_examples([example for _, example in good]))
    return _Prepared([study for study, _ in good], real, self.place(context), skipped)

  def _prepare(self, chunk: list[Any]) -> tuple[list[Any], int, DecodeContext]:
    batch = self._prepare_next(iter(chunk), ())
    return batch.studies, batch.real, batch.context

  def place(self, context: DecodeContext) -> DecodeContext:
    """Move a host context to the devices (split over the mesh's batch axes if any)."""
    if self.mesh is None:
      return jax.device_put(context)
    return jax.device_put(context, _context_shardings(context, self.mesh, self.rules))

  # ---------------------------------------------------------------- decoding
  def decode(
    self, sampler: Any, context: DecodeContext, key: jax.Array | None = None
  ) -> tuple[SampleOutput, float]:
    """One batch: (host copy of the sampler's output, wall seconds excluding compilation)."""
    sig = (sampler, _signature(context), key is None)
    if sig not in self._warm:
      jax.block_until_ready(sampler(self.decode_model, self.params, context, key))
      self._warm.add(sig)
    start = time.perf_counter()
    out = jax.block_until_ready(sampler(self.decode_model, self.params, context, key))
    seconds = time.perf_counter() - start
    return jax.device_get(out), seconds

  def text(self, tokens: Sequence[int]) -> str:
    """Report text of response ids: cut at the first EOS, special tokens dropped."""
    return tokenizer_lib.decode(self.tokenizer, tokens)

  def generate(
    self,
    studies: Sequence[Any],
    sampler: Any,
    progress: bool | str = False,
    key: jax.Array | None = None,
  ) -> list[Row]:
    """One row per study, in order (see `Row` fields in `rows_of`).

    `progress`: a tqdm bar over studies (a string is its description). `key`: the PRNG
    key of a sampling (non-greedy) sampler; batch i uses fold_in(key, i). A study that
    cannot be prepared raises; `iter_rows` can skip such studies instead.
    """
    indexed: list[tuple[int, Row]] = []
    for batch, _ in self._decoded(studies, sampler, progress=progress, key=key, skip=()):
      indexed += batch
    return [row for _, row in sorted(indexed, key=lambda pair: pair[0])]

  def iter_rows(
    self,
    studies: Sequence[Any],
    sampler: Any,
    *,
    progress: bool | str = False,
    key: jax.Array | None = None,
    skip: tuple[type[BaseException], ...] = (),
  ) -> Iterator[tuple[list[Row], list[Skipped]]]:
    """(rows, skipped) batch by batch, as soon as each batch is decoded.

    rows: the batch's studies in order (as `generate`); with continuous batching, the
    studies that finished during one device call, in the order they finished. skipped:
    the studies met while filling this batch whose example raised one of `skip` (e.g. the
    images' BadImageError); they are left out and the batch is filled from the next
    studies. Errors not in `skip` propagate. A batch of only skipped studies yields
    ([], skipped) without decoding.
    """
    for batch, skipped in self._decoded(studies, sampler, progress=progress, key=key, skip=skip):
      yield [row for _, row in batch], skipped

  def _decoded(
    self,
    studies: Sequence[Any],
    sampler: Any,
    *,
    progress: bool | str,
    key: jax.Array | None,
    skip: tuple[type[BaseException], ...],
  ) -> Iterator[tuple[list[tuple[int, Row]], list[Skipped]]]:
    """iter_rows with each row's index among the decoded studies (their input order)."""
    bar = None
    if progress:
      from tqdm.auto import tqdm

      desc = progress if isinstance(progress, str) else type(sampler).__name__
      bar = tqdm(total=len(studies), desc=desc, unit="report")
    decoded = self._lockstep if self.batching == "lockstep" else self._continuously
    try:
      for rows, skipped in decoded(studies, sampler, key, tuple(skip)):
        if bar is not None:
          bar.update(len(rows) + len(skipped))
        yield rows, skipped
    finally:
      if bar is not None:
        bar.close()

  def _lockstep(self, studies, sampler, key, skip):
    index = done = 0
    for batch in self._prepared(studies, skip=skip):
      rows: list[tuple[int, Row]] = []
      if batch.real:
        k = None if key is None else jax.random.fold_in(key, index)
        out, seconds = self.decode(sampler, batch.context, k)
        rows = list(enumerate(self.rows_of(batch.studies[: batch.real], out, seconds), done))
        index += 1
        done += batch.real
      yield rows, batch.skipped

  def _continuously(self, studies, sampler, key, skip):
    """Continuous batching (sampling/continuous.py): a finished row takes the next study."""
    decoder = self._continuous.get(sampler)
    if decoder is None:
      decoder = continuous.ContinuousDecoder(sampler, self.decode_model, self.params)
      self._continuous[sampler] = decoder
    waiting: dict[int, Any] = {}  # index -> study, from preparation until it finishes
    skipped: list[Skipped] = []
    indices = itertools.count()

    def chunks():
      for batch in self._prepared(studies, skip=skip):
        skipped.extend(batch.skipped)
        if not batch.real:
          continue
        ids = np.full((self.batch_size,), -1, np.int32)
        for b, study in enumerate(batch.studies[: batch.real]):
          ids[b] = next(indices)
          waiting[int(ids[b])] = study
        yield batch.context, ids

    for box, seconds in decoder.run(chunks(), key):
      count = int(box.count)
      rows = []
      for k in range(count):
        index = int(box.ids_K[k])
        study = waiting.pop(index)
        rows.append(
          (
            index,
            self._row(
              study,
              box.tokens_KR[k],
              length=int(box.lengths_K[k]),
              tokens=int(box.tokens_K[k]),
              forwards=int(box.forwards_K[k]),
              batch_forwards=int(box.calls_K[k]),
              seconds=seconds / max(count, 1),
              looped=bool(box.looped_K[k]),
              eos=bool(box.eos_K[k]),
            ),
          )
        )
      now, skipped[:] = list(skipped), []
      yield rows, now
    if skipped:  # studies skipped after the last decoded one
      yield [], list(skipped)

  def rows_of(self, studies: Sequence[Any], out: SampleOutput, seconds: float) -> list[Row]:
    """Rows of the first len(studies) examples of a decoded batch.

    Row: id, prediction (text), reference (the study's report), images (the study's
    image_paths), tokens (committed response
    tokens, also those after EOS inside its block), length (report tokens before EOS),
    forwards (decode forwards, prefill excluded), batch_forwards (the model calls of its
    lockstep batch: the batch runs until its longest report ends), seconds (batch time /
    real studies),
    looped (stopped by the repetition guard), eos (ended by EOS, not the budget).
    """
    n = len(studies)
    tokens_BR = np.asarray(out.tokens_BR)
    lengths = np.asarray(out.lengths_B)
    stats = out.stats
    return [
      self._row(
        study,
        tokens_BR[b],
        length=int(lengths[b]),
        tokens=int(stats.tokens_B[b]),
        forwards=int(stats.forwards_B[b]),
        batch_forwards=int(stats.batch_forwards),
        seconds=seconds / n,
        looped=bool(stats.looped_B[b]),
        eos=bool(stats.eos_B[b]),
      )
      for b, study in enumerate(studies)
    ]

  def _row(self, study: Any, tokens_R: Any, *, length: int, **stats: Any) -> Row:
    return {
      "id": study.id,
      "prediction": self.text(tokens_R[:length]),
      "reference": study.report,
      # Each row names its own study's images: with continuous batching rows finish out
      # of order, and a dataset's reader may build a new Study object on every read.
      "images": list(getattr(study, "image_paths", ())),
      "tokens": stats["tokens"],
      "length": length,
      "forwards": stats["forwards"],
      "batch_forwards": stats["batch_forwards"],
      "seconds": stats["seconds"],
      "looped": stats["looped"],
      "eos": stats["eos"],
    }


def row_stats(row: Row) -> dict[str, Any]:
  """The `stats` record of one row as echo_jax.evaluate reads it."""
  seconds = float(row["seconds"])
  return {
    "tpf": row["tokens"] / max(row["forwards"], 1),
    "tokens_per_second": row["tokens"] / seconds if seconds > 0 else None,
    "tokens": row["tokens"],
    "forwards": row["forwards"],
    "batch_forwards": row["batch_forwards"],
    "seconds": seconds,
    "looped": row["looped"],
    "eos": row["eos"],
  }


def lockstep_occupancy(rows: Sequence[Mapping[str, Any]]) -> float | None:
  """The rows' own forwards / the forwards their lockstep batches ran; None without any.

  `rows` are generator rows or their `row_stats` records (both hold forwards and
  batch_forwards)."""
  lockstep = sum(int(r.get("batch_forwards", 0)) for r in rows)
  return sum(int(r["forwards"]) for r in rows) / lockstep if lockstep else None


def speed_summary(rows: Sequence[Row]) -> dict[str, float]:
  """tpf = all tokens / all forwards; tokens_per_second = all tokens / timed wall time;
  ms_per_report = timed wall time / reports (compilation excluded, see the module doc);
  lockstep_occupancy = the rows' own forwards / the forwards their batches ran (1.0 when
  every report of a batch needs as many forwards as its longest; its inverse bounds what
  refilling finished rows with new studies could gain)."""
  if not rows:
    raise ValueError("no rows: generate at least one report first")
  tokens = sum(int(r["tokens"]) for r in rows)
  forwards = sum(int(r["forwards"]) for r in rows)
  seconds = sum(float(r["seconds"]) for r in rows)
  occupancy = lockstep_occupancy(rows)
  return {
    "reports": len(rows),
    "tokens": tokens,
    "forwards": forwards,
    "seconds": seconds,
    "tpf": tokens / max(forwards, 1),
    "tokens_per_second": tokens / seconds if seconds > 0 else float("nan"),
    "ms_per_report": 1000.0 * seconds / len(rows),
    "lockstep_occupancy": float("nan") if occupancy is None else occupancy,
    "eos_rate": sum(bool(r["eos"]) for r in rows) / len(rows),
    "loops": sum(bool(r["looped"]) for r in rows),
  }


def sampler_ids(token_ids: Any) -> dict[str, int]:
  """eos_id / mask_id / pad_id keyword arguments of the samplers from a TokenIds."""
  return {"eos_id": token_ids.eos, "mask_id": token_ids.mask, "pad_id": token_ids.pad}


SAMPLERS = ("one_step", "multi_step", "ar")


def make_sampler(
  name: str,
  token_ids: Any,
  *,
  block_len: int = 8,
  max_new_tokens: int = 256,
  steps: int | None = None,
  threshold: float = 0.85,
  repetition: stops.RepetitionGuard | None = None,
) -> Any:
  """A greedy sampler by name: "one_step" (ECHO), "multi_step" (ECHO_Base, `steps`
  defaults to block_len) or "ar" (next-token logits, ECHO_AR). The block samplers'
  budget is rounded up to a multiple of block_len."""
  ids = sampler_ids(token_ids)
  if name == "ar":
    return AutoregressiveSampler(
      eos_id=ids["eos_id"],
      pad_id=ids["pad_id"],
      max_new_tokens=max_new_tokens,
      repetition=repetition,
    )
  budget = -(-max_new_tokens // block_len) * block_len
  common = dict(ids, block_len=block_len, max_new_tokens=budget, repetition=repetition)
  if name == "one_step":
    return OneStepSampler(**common)
  if name == "multi_step":
    return MultiStepSampler(**common, steps=steps or block_len, threshold=threshold)
  raise ValueError(f"unknown sampler {name!r}; use one of {SAMPLERS}")
