"""Continuous batching: a row whose report has ended takes the next study at once.

A lockstep batch (the samplers' `sample`) runs until its longest report ends, and
its finished rows keep computing: on the synthetic benchmark at batch 50 a row
does useful work in only about 80-90% of its batch's forwards. Here the batch's rows are
slots: when one finishes, its result goes to an outbox and the next study takes
its place, while the other rows go on. Shapes stay static (one compilation per
shape): the KV cache keeps one length per row (`KVCache.length` int32 [B]), and
each row has its own block index, positions and budget (block_decode._BlockLoop,
ar._TokenLoop).

The studies arrive in chunks of B (the batch size; the last one padded with id -1).
A chunk is first prefilled and its first block (or first token) decoded as one
batch, exactly as a lockstep batch begins, then its rows move one by one into the
rows that finish. So every study is computed with the same batch shapes, cache
slots and masks as in lockstep decoding, and gets the same tokens (tested in
tests/test_continuous.py); only the batch around it differs, and rows do not
interact.

    for done, seconds in decode_continuously(sampler, model, params, chunks):
      done.ids_K[:done.count]   # the studies that finished, in the order they did

`chunks` yields (context, ids_B): a context of B studies and their int32 ids
(>= 0; -1 for padding rows, which must come last). Each call of the device loop
syncs with the host once: to take the next chunk (one sync per B studies).
Greedy decoding gives the lockstep tokens; with a sampling key the draws differ
from lockstep's (the key is folded with the chunk index and the batch's step).
Not supported: recording rollouts (DCD training decodes in lockstep).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Iterator
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from echo_jax.sampling.ar import AutoregressiveSampler, _TokenLoop
from echo_jax.sampling.block_decode import BlockSamplerConfig, _BlockLoop
from echo_jax.sampling.protocol import DecodeModel


@flax.struct.dataclass
class Slots:
  """The decoding batch: the loop state of its rows and the study each row holds."""

  state: Any  # block_decode/ar loop state with a per-row cache
  ids_B: jax.Array  # int32 [B]: the study in each row; -1 for none


@flax.struct.dataclass
class Outbox:
  """The studies that finished during one call, in the order they finished (K = B)."""

  count: jax.Array  # int32 []: entries [0, count) are filled
  ids_K: jax.Array  # int32 [K]
  tokens_KR: jax.Array  # int32 [K, R]: the report, pad from the first EOS on
  lengths_K: jax.Array  # int32 [K]: tokens before the first EOS
  tokens_K: jax.Array  # int32 [K]: response tokens committed
  forwards_K: jax.Array  # int32 [K]: decode forwards the study took part in
  calls_K: jax.Array  # int32 [K]: model calls of the batch while the study held its row
  eos_K: jax.Array  # bool [K]
  looped_K: jax.Array  # bool [K]


def _loop(cfg: Any, model: DecodeModel, params: Any, key: jax.Array | None):
  if isinstance(cfg, AutoregressiveSampler):
    if cfg.logits == "at":
      return _BlockLoop(cfg.as_block_sampler(), model, params, key)
    return _TokenLoop(cfg, model, params, key)
  if not isinstance(cfg, BlockSamplerConfig):
    raise TypeError(f"{type(cfg).__name__} is not a sampler of echo_jax.sampling")
  return _BlockLoop(cfg, model, params, key)


def _empty_outbox(out: Any) -> Outbox:
  k, r = out.tokens_BR.shape
  zeros_K = jnp.zeros((k,), jnp.int32)
  false_K = jnp.zeros((k,), bool)
  return Outbox(
    count=jnp.int32(0),
    ids_K=jnp.full((k,), -1, jnp.int32),
    tokens_KR=jnp.zeros((k, r), jnp.int32),
    lengths_K=zeros_K,
    tokens_K=zeros_K,
    forwards_K=zeros_K,
    calls_K=zeros_K,
    eos_K=false_K,
    looped_K=false_K,
  )


def _output(loop: Any, slots: Slots) -> Any:
  """The reports and costs of every row (SampleOutput)."""
  return loop.output(slots.state.replace(cache=None))


def _post(box: Outbox, out: Any, slots: Slots, row: jax.Array) -> Outbox:
  """The outbox with the study of `row` appended (if the row holds one); `out` is
  `_output` of `slots` before any of the rows posted with it was replaced."""
  st = slots.state
  at = box.count

  def put(buf, value):
    return jax.lax.dynamic_update_slice_in_dim(buf, value[row][None].astype(buf.dtype), at, 0)

  new = box.replace(
    count=at + 1,
    ids_K=put(box.ids_K, slots.ids_B),
    tokens_KR=put(box.tokens_KR, out.tokens_BR),
    lengths_K=put(box.lengths_K, out.lengths_B),
    tokens_K=put(box.tokens_K, out.stats.tokens_B),
    forwards_K=put(box.forwards_K, out.stats.forwards_B),
    calls_K=put(box.calls_K, st.calls_B),
    eos_K=put(box.eos_K, out.stats.eos_B),
    looped_K=put(box.looped_K, out.stats.looped_B),
  )
  return jax.tree.map(lambda a, b: jnp.where(slots.ids_B[row] >= 0, a, b), new, box)


def _put_row(slots: Slots, row: jax.Array, source: Slots, source_row: jax.Array) -> Slots:
  """Row `row` of the batch replaced by row `source_row` of `source` (in place)."""

  def put(dst, src):
    if jnp.ndim(dst) == 0:  # the batch's counters (steps, blocks, model calls) stay
      return dst
    piece = jax.lax.dynamic_slice_in_dim(src, source_row, 1, 0)
    return jax.lax.dynamic_update_slice_in_dim(dst, piece, row, 0)

  st, src = slots.state, source.state
  cache = st.cache.put_row(row, src.cache, source_row)
  rest = jax.tree.map(put, st.replace(cache=None), src.replace(cache=None))
  ids = put(slots.ids_B, source.ids_B)
  return Slots(state=rest.replace(cache=cache), ids_B=ids)


def _start(loop: Any, context: Any, ids_B: jax.Array) -> Slots:
  st = loop.start(context, per_row=True)
  return Slots(state=st.replace(done_B=st.done_B | (ids_B < 0)), ids_B=ids_B.astype(jnp.int32))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _begin(cfg, model, params, context, ids_B, key) -> Slots:
  """The first chunk becomes the batch."""
  return _start(_loop(cfg, model, params, key), context, ids_B)


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=(3,))
def _serve(cfg, model, params, slots: Slots, context, ids_B, key) -> tuple[Slots, Outbox]:
  """Decode until every study of the chunk has taken a finished row."""
  loop = _loop(cfg, model, params, key)
  staged = _start(loop, context, ids_B)
  waiting = jnp.sum(ids_B >= 0)
  box = _empty_outbox(_output(loop, staged))

  def move(carry):
    slots, taken, box = carry
    free_B = slots.state.done_B
    n = jnp.minimum(jnp.sum(free_B), waiting - taken)
    # The i-th finished row (in row order) takes staged study taken + i.
    rank_B = jnp.cumsum(free_B) - 1
    out = _output(loop, slots)  # each posted row is still the one it was here

    def one(i, c):
      slots, box = c
      row = jnp.argmax(free_B & (rank_B == i))
      box = _post(box, out, slots, row)
      return _put_row(slots, row, staged, taken + i), box

    slots, box = jax.lax.fori_loop(0, n, one, (slots, box))
    return slots, taken + n, box

  def body(carry):
    slots, taken, box = move(carry)
    # Always one step after the moves: a step that only finished rows take changes none
    # of them, and a `lax.cond` around it would make XLA copy the whole cache.
    return slots.replace(state=loop.advance(slots.state)), taken, box

  slots, _, box = jax.lax.while_loop(lambda c: c[1] < waiting, body, (slots, jnp.int32(0), box))
  return slots, box


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=(3,))
def _drain(cfg, model, params, slots: Slots, key) -> tuple[Slots, Outbox]:
  """Decode the batch's last studies to their end and post them all (the finished
  batch is returned only so that its donated buffers are reused, not copied)."""
  loop = _loop(cfg, model, params, key)
  # Every unfinished row advances and stops at its budget, so this loop ends.
  st = jax.lax.while_loop(lambda s: ~jnp.all(s.done_B), loop.advance, slots.state)
  slots = slots.replace(state=st)
  out = _output(loop, slots)
  box = jax.lax.fori_loop(
    0, slots.ids_B.shape[0], lambda b, box: _post(box, out, slots, b), _empty_outbox(out)
  )
  return slots, box


class ContinuousDecoder:
  """Continuous batching of one sampler over one model; compiled once per chunk shape.

  `compile(context, ids_B, key)` compiles the three device functions (start the batch,
  serve a chunk, drain the batch) ahead of time for a chunk's shapes, so callers can
  keep compilation out of their timings; `run` compiles what is missing by itself.
  """

  def __init__(self, sampler: Any, model: DecodeModel, params: Any):
    if isinstance(sampler, AutoregressiveSampler) and sampler.logits == "at":
      sampler.as_block_sampler().validate(model)
    else:
      sampler.validate(model)
    self.sampler, self.model, self.params = sampler, model, params
    self._compiled: dict[Any, tuple[Any, Any, Any]] = {}

  def compile(self, context: Any, ids_B: Any, key: jax.Array | None = None) -> tuple:
    """(begin, serve, drain) compiled for this chunk's shapes (cached)."""
    ids_B = jnp.asarray(np.asarray(ids_B, np.int32))
    spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), (context, ids_B))
    sig = (jax.tree.structure(spec), tuple(jax.tree.leaves(spec)), key is None)
    if sig not in self._compiled:
      cfg, model, params = self.sampler, self.model, self.params
      begin = _begin.lower(cfg, model, params, context, ids_B, key).compile()
      slots = jax.eval_shape(
        lambda p, c, i, k: _begin(cfg, model, p, c, i, k), params, context, ids_B, key
      )
      serve = _serve.lower(cfg, model, params, slots, context, ids_B, key).compile()
      drain = _drain.lower(cfg, model, params, slots, key).compile()
      self._compiled[sig] = (begin, serve, drain)
    return self._compiled[sig]

  def run(
    self, chunks: Iterable[tuple[Any, Any]], key: jax.Array | None = None
  ) -> Iterator[tuple[Outbox, float]]:
    """Decode the chunks (module docstring). Yields, after each device call that
    finished studies, the host copy of its outbox and the wall seconds since the
    previous yield (the first call, which only starts the batch, counts with the
    second; compilation is not counted)."""
    slots, drain = None, None
    seconds = 0.0
    for index, (context, ids_B) in enumerate(chunks):
      ids_B = jnp.asarray(np.asarray(ids_B, np.int32))
      k = None if key is None else jax.random.fold_in(key, index)
      begin, serve, drain_now = self.compile(context, ids_B, k)
      start = time.perf_counter()
      if slots is None:
        slots, drain = jax.block_until_ready(begin(self.params, context, ids_B, k)), drain_now
        seconds += time.perf_counter() - start
        continue
      slots, box = serve(self.params, slots, context, ids_B, k)
      box = jax.device_get(box)
      seconds += time.perf_counter() - start
      if box.count:  # (none when only padding rows were refilled)
        yield box, seconds
        seconds = 0.0
    if slots is not None:
      start = time.perf_counter()
      _, box = drain(self.params, slots, key)
      box = jax.device_get(box)
      yield box, seconds + time.perf_counter() - start


def decode_continuously(
  sampler: Any,
  model: DecodeModel,
  params: Any,
  chunks: Iterable[tuple[Any, Any]],
  key: jax.Array | None = None,
) -> Iterator[tuple[Outbox, float]]:
  """`ContinuousDecoder(sampler, model, params).run(chunks, key)`."""
  return ContinuousDecoder(sampler, model, params).run(chunks, key)
