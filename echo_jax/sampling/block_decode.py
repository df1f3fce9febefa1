"""The block-diffusion decoding loop shared by the multi-step and one-step samplers.

Blocks of `block_len` (T) tokens are decoded left to right, all examples of
the batch in lockstep (the KV cache length is shared): block n starts fully
<|MASK|> and is denoised until nothing is masked. Steps: each denoising
forward runs the block against the cache (`num_append=0`) and commits
positions by `commit.commit_mask`. The finished block n-1 is written into the
cache either by the first forward of block n (fused: [block n-1 clean | block
n masked], 2T tokens in, `num_append=T`, logits of the last T) or by its own
forward right before block n's first step (unfused, as the released
multi-step code does). Fusing changes no token: block n-1's keys are computed
with the same block-causal mask either way; it saves one forward per block.
The last block is never written (nothing reads it).

Forward accounting: `forwards_B` counts every decode forward while the example
is unfinished and has work in it (the fused forward once; an unfused append
forward separately); the prefill is not counted. `batch_forwards` counts
model calls of the batch.

Recording (`record_rollout`, the DCD teacher rollout): greedy decoding on
the aligned grid that commits, at each step of a block, every masked position
with confidence >= threshold or else the single most confident one
(`steps = block_len`), and records per committed position the distribution
(or its top-k), the commit step and the token. With a prefix model the
finished block written into the cache (and used for EOS and loop checks) is
that model's one-step prediction of the block instead of the recorded tokens.

Grids: "aligned" (the model pads the context so the response starts on a
block boundary) or "released", see `released.py`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from echo_jax.sampling import commit, released, stops
from echo_jax.sampling.protocol import DecodeModel, SplittableContext
from echo_jax.sampling.state import BlockState, Records, SampleOutput, SampleStats

GRIDS = ("aligned", "released")


@dataclasses.dataclass(frozen=True, kw_only=True)
class BlockSamplerConfig:
  """Settings shared by the block samplers. Frozen and hashable: a jit static argument."""

  eos_id: int  # <|im_end|>: ends the report
  mask_id: int  # <|MASK|>
  pad_id: int  # written after the first EOS
  block_len: int = 8  # T: tokens per block, as the model was trained
  max_new_tokens: int = 256  # length budget, a multiple of block_len
  sampling: commit.Sampling = commit.Sampling()  # greedy by default
  repetition: stops.RepetitionGuard | None = None  # None = no loop guard
  grid: str = "aligned"  # "aligned" | "released" (the authors' unaligned global grid)

  # The denoising schedule; the subclasses fix or expose these.
  steps: int = 1
  threshold: float = 0.85
  fused_append: bool = True

  def validate(self, model: Any) -> None:
    if self.block_len < 1:
      raise ValueError(f"block_len={self.block_len} must be >= 1")
    if not 1 <= self.steps <= self.block_len:
      raise ValueError(f"steps={self.steps} must be in [1, block_len={self.block_len}]")
    if self.max_new_tokens < 1 or self.max_new_tokens % self.block_len:
      raise ValueError(
        f"max_new_tokens={self.max_new_tokens} must be a positive multiple of "
        f"block_len={self.block_len}"
      )
    if self.grid not in GRIDS:
      raise ValueError(f"grid={self.grid!r}: use one of {GRIDS}")
    self.sampling.validate()
    if self.repetition is not None:
      self.repetition.validate()
    _check_model(model, needs_split=self.grid == "released")

  def sample(
    self, model: DecodeModel, params: Any, context: Any, key: jax.Array | None = None
  ) -> SampleOutput:
    """Decode a batch of reports. Jitted; compiled once per (config, model, shapes)."""
    self.validate(model)
    return _decode_jit(self, model, params, context, key)

  __call__ = sample


@dataclasses.dataclass(frozen=True, kw_only=True)
class Recording:
  """What `record_rollout` records. Frozen and hashable: a jit static argument."""

  top_k: int = 0  # 0: the full distribution; else the k most probable tokens and their ids
  prefix_model: bool = False  # the cache receives the prefix model's one-step blocks


def record_rollout(
  cfg: BlockSamplerConfig,
  recording: Recording,
  model: DecodeModel,
  params: Any,
  context: Any,
  prefix_model: DecodeModel | None = None,
  prefix_params: Any = None,
) -> tuple[SampleOutput, Records]:
  """Greedy threshold decoding that records per committed position (module docstring).

  `cfg.steps` must equal `cfg.block_len`, the grid be aligned and sampling greedy.
  """
  cfg.validate(model)
  if cfg.steps != cfg.block_len or cfg.grid != "aligned" or not cfg.sampling.greedy:
    raise ValueError("recording needs steps == block_len, the aligned grid and greedy sampling")
  if recording.top_k < 0:
    raise ValueError(f"top_k={recording.top_k} must be >= 0 (0 = full distribution)")
  if recording.prefix_model and prefix_model is None:
    raise ValueError("Recording(prefix_model=True) needs the prefix model and its params")
  if not recording.prefix_model:
    prefix_model = prefix_params = None
  return _record_jit(cfg, model, params, context, None, recording, prefix_model, prefix_params)


def _check_model(model: Any, *, needs_split: bool) -> None:
  if not isinstance(model, DecodeModel):
    raise TypeError(
      f"{type(model).__name__} does not implement echo_jax.sampling.protocol.DecodeModel "
      "(context_slots, prefill, extend)"
    )
  try:
    hash(model)
  except TypeError as e:
    raise TypeError(f"the model must be hashable (it is a jit static argument): {e}") from e
  if needs_split and not isinstance(model, SplittableContext):
    raise TypeError(
      f"{type(model).__name__} lacks context_lengths/split_context "
      "(protocol.SplittableContext), needed by this sampler"
    )


def _key_at(key: jax.Array | None, block: jax.Array, step: jax.Array) -> jax.Array | None:
  if key is None:
    return None
  return jax.random.fold_in(jax.random.fold_in(key, block), step)


class _BlockLoop:
  """The pieces of the block loop, built at trace time for one (config, model, params).

  Every per-example quantity (its block index, first position, prompt tail and block
  budget) lives in the state, so rows of one batch may be at different blocks: the
  lockstep `_decode` keeps them together, and continuous batching (continuous.py)
  moves a finished row out and a new study in while the others go on.
  """

  def __init__(self, cfg, model, params, key, rec=None, aux=None, aux_params=None):
    self.cfg, self.model, self.params, self.key = cfg, model, params, key
    self.rec, self.aux, self.aux_params = rec, aux, aux_params
    T = self.T = cfg.block_len
    self.due_S = jnp.asarray(commit.transfer_schedule(T, cfg.steps), jnp.int32)
    self.num_blocks = cfg.max_new_tokens // T + (1 if cfg.grid == "released" else 0)
    self.threshold = cfg.threshold
    if rec is not None:  # commit at >= tau
      self.threshold = jnp.nextafter(jnp.float32(cfg.threshold), jnp.float32(-1.0))
    self.idx_T = jnp.arange(T, dtype=jnp.int32)
    self.later = "fused" if cfg.fused_append else "append"

  def start(self, context: Any, *, per_row: bool = False) -> BlockState:
    """Prefill, then decode every example's first block (no previous block to append).

    `per_row`: the cache keeps one length per row (continuous batching)."""
    cfg, model, T = self.cfg, self.model, self.T
    if cfg.grid == "released":
      head, tail_BT, tail_len_B = released.split_prompt(model, context, T)
      # As released: blocks up to the one holding prompt + budget - 1.
      blocks_B = (tail_len_B + cfg.max_new_tokens + T - 1) // T
    else:
      head = context
      batch = jax.tree.leaves(context)[0].shape[0]
      tail_BT = jnp.zeros((batch, T), jnp.int32)
      tail_len_B = jnp.zeros((batch,), jnp.int32)
      blocks_B = jnp.full((batch,), self.num_blocks, jnp.int32)
    batch = tail_BT.shape[0]
    slots = model.context_slots(head, block_len=T)
    cache_length = slots + self.num_blocks * T
    cache, pos0_B = model.prefill(self.params, head, cache_length=cache_length, block_len=T)
    if per_row:
      cache = per_row_cache(cache)
    aux_cache = None
    if self.aux is not None:
      aux_cache, _ = self.aux.prefill(self.aux_params, head, cache_length=cache_length, block_len=T)
    zeros_B = jnp.zeros((batch,), jnp.int32)
    false_B = jnp.zeros((batch,), bool)
    st = BlockState(
      cache=cache,
      block=jnp.int32(0),
      step=jnp.int32(0),
      x_BT=tail_BT,
      masked_BT=jnp.zeros((batch, T), bool),
      prev_BT=tail_BT,
      buf_BNT=jnp.full((batch, self.num_blocks * T), cfg.pad_id, jnp.int32),
      done_B=false_B,
      eos_B=false_B,
      looped_B=false_B,
      forwards_B=zeros_B,
      tokens_B=zeros_B,
      batch_forwards=jnp.int32(0),
      block_B=zeros_B,
      calls_B=zeros_B,
      pos0_B=pos0_B.astype(jnp.int32),
      tail_BT=tail_BT,
      tail_len_B=tail_len_B,
      blocks_B=blocks_B,
      rec=self._empty_records(cache, batch, tail_BT, pos0_B),
      aux_cache=aux_cache,
    )
    return self.run_block(st, "none")

  def _empty_records(self, cache, batch, tail_BT, pos0_B) -> Records | None:
    rec, T = self.rec, self.T
    if rec is None:
      return None
    n_r = self.num_blocks * T
    pos = pos0_B[:, None] + self.idx_T[None, :]
    width = (
      rec.top_k
      or jax.eval_shape(
        lambda: self.model.extend(self.params, cache, tail_BT, pos, block_len=T, num_append=0)
      )[0].shape[-1]
    )
    return Records(
      tokens_BR=jnp.full((batch, n_r), self.cfg.pad_id, jnp.int32),
      clean_BR=jnp.full((batch, n_r), self.cfg.pad_id, jnp.int32),
      steps_BR=jnp.zeros((batch, n_r), jnp.int32),
      probs_BRX=jnp.zeros((batch, n_r, width), jnp.float32),
      ids_BRX=jnp.zeros((batch, n_r, rec.top_k or 1), jnp.int32),
    )

  def positions(self, st: BlockState, block_B: jax.Array) -> jax.Array:
    return st.pos0_B[:, None] + block_B[:, None] * self.T + self.idx_T[None, :]

  def commit_step(self, st: BlockState, logits_BTV: jax.Array) -> BlockState:
    cfg = self.cfg
    key = _key_at(self.key, st.block, st.step)
    if cfg.steps == 1:
      # The only step has every masked position due, so commit_mask would select them
      # all, whatever their confidence: skip the softmax and the ranking.
      tokens, sel = commit.draw_tokens(logits_BTV, cfg.sampling, key), st.masked_BT
    else:
      tokens, conf = commit.choose_tokens(logits_BTV, cfg.sampling, key)
      due = self.due_S[jnp.minimum(st.step, cfg.steps - 1)]
      sel = commit.commit_mask(conf, st.masked_BT, due, self.threshold)
    if self.rec is not None:  # recording decodes in lockstep: every row is at st.block
      st = st.replace(
        rec=_record(st.rec, st.block * self.T, sel, st.step + 1, logits_BTV, self.rec.top_k)
      )
    return st.replace(
      x_BT=jnp.where(sel, tokens, st.x_BT), masked_BT=st.masked_BT & ~sel, step=st.step + 1
    )

  @staticmethod
  def count(st: BlockState, active_B: jax.Array) -> BlockState:
    return st.replace(
      forwards_B=st.forwards_B + active_B.astype(jnp.int32),
      batch_forwards=st.batch_forwards + 1,
      calls_B=st.calls_B + 1,
    )

  def denoise(self, st: BlockState) -> BlockState:
    st = self.count(st, jnp.any(st.masked_BT, axis=-1))
    logits, cache = self.model.extend(
      self.params,
      st.cache,
      st.x_BT,
      self.positions(st, st.block_B),
      block_len=self.T,
      num_append=0,
    )
    return self.commit_step(st.replace(cache=cache), logits)

  def fused(self, st: BlockState) -> BlockState:
    T = self.T
    st = self.count(st, jnp.any(st.masked_BT, axis=-1))
    toks = jnp.concatenate([st.prev_BT, st.x_BT], axis=1)
    pos = jnp.concatenate(
      [self.positions(st, st.block_B - 1), self.positions(st, st.block_B)], axis=1
    )
    logits, cache = self.model.extend(self.params, st.cache, toks, pos, block_len=T, num_append=T)
    return self.commit_step(
      st.replace(cache=keep_finished_lengths(st.cache, cache, st.done_B)), logits[:, T:]
    )

  def append(self, st: BlockState) -> BlockState:
    st = self.count(st, ~st.done_B)
    _, cache = self.model.extend(
      self.params,
      st.cache,
      st.prev_BT,
      self.positions(st, st.block_B - 1),
      block_len=self.T,
      num_append=self.T,
    )
    return st.replace(cache=keep_finished_lengths(st.cache, cache, st.done_B))

  def run_block(self, st: BlockState, first: str) -> BlockState:
    """Decode each unfinished row's block `block_B`; `first` is "none", "fused" or
    "append" (static): how the previous block enters the cache."""
    cfg = self.cfg
    is_tail = self._is_tail(st)
    active_B = ~st.done_B
    st = st.replace(
      step=jnp.int32(0),
      x_BT=jnp.where(is_tail, st.tail_BT, jnp.where(active_B[:, None], cfg.mask_id, cfg.pad_id)),
      masked_BT=~is_tail & active_B[:, None],
    )
    if first == "fused":
      st = self.fused(st)
    elif first == "append":
      st = self.append(st)
    # With one step per block the fused forward was that step (st.step is now 1): the
    # loop below could not run, and leaving it out spares XLA a loop per block.
    if cfg.steps > 1 or first != "fused":
      st = jax.lax.while_loop(
        lambda s: (s.step < cfg.steps) & jnp.any(s.masked_BT), self.denoise, st
      )
    return self.finish_block(st, active_B)

  def advance(self, st: BlockState) -> BlockState:
    """The next block of every unfinished row, after the first."""
    return self.run_block(st, self.later)

  def _is_tail(self, st: BlockState) -> jax.Array:
    """bool [B, T]: positions of the current block holding the prompt's tail."""
    return (self.idx_T[None, :] < st.tail_len_B[:, None]) & (st.block_B == 0)[:, None]

  def finish_block(self, st: BlockState, active_B: jax.Array) -> BlockState:
    cfg, T = self.cfg, self.T
    start_B = st.block_B * T
    resp_BT = ~self._is_tail(st)
    x_BT = st.x_BT
    if self.rec is not None:
      recs = st.rec
      start = st.block * T
      recs = recs.replace(
        tokens_BR=jax.lax.dynamic_update_slice(
          recs.tokens_BR, jnp.where(active_B[:, None], x_BT, cfg.pad_id), (0, start)
        )
      )
      if self.aux is not None:
        pos = self.positions(st, st.block_B)
        masks = jnp.full(x_BT.shape, cfg.mask_id, jnp.int32)
        a_logits, _ = self.aux.extend(
          self.aux_params, st.aux_cache, masks, pos, block_len=T, num_append=0
        )
        x_BT = jnp.argmax(a_logits, axis=-1).astype(jnp.int32)
        _, a_cache = self.aux.extend(
          self.aux_params, st.aux_cache, x_BT, pos, block_len=T, num_append=T
        )
        st = st.replace(aux_cache=a_cache)
      st = st.replace(rec=recs, x_BT=x_BT)
    buf = _put_rows(st.buf_BNT, x_BT, start_B, active_B)
    eos = active_B & stops.has_eos(x_BT, resp_BT, cfg.eos_id)
    looped = jnp.zeros_like(eos)
    if cfg.repetition is not None:
      looped = (
        active_B
        & ~eos
        & stops.repeats_ngram(buf, st.tail_len_B, start_B + T, start_B, T, cfg.repetition)
      )
    out_of_budget = st.block_B + 1 >= st.blocks_B
    return st.replace(
      buf_BNT=buf,
      prev_BT=st.x_BT,
      tokens_B=st.tokens_B + jnp.where(active_B, jnp.sum(resp_BT, axis=-1), 0),
      eos_B=st.eos_B | eos,
      looped_B=st.looped_B | looped,
      done_B=st.done_B | eos | looped | out_of_budget,
      block=st.block + 1,
      # A finished row stays at its last block: its later forwards are ignored, and with
      # per-row cache lengths they write nothing it keeps (keep_finished_lengths).
      block_B=st.block_B + active_B.astype(jnp.int32),
    )

  def output(self, st: BlockState) -> SampleOutput:
    """The reports and costs of the state's rows (each cut at its first EOS)."""
    cfg, T = self.cfg, self.T
    width = self.num_blocks * T
    # The response of example b starts at its tail length on the block grid.
    r = cfg.max_new_tokens + (T if cfg.grid == "released" else 0)
    src_BR = st.tail_len_B[:, None] + jnp.arange(r)[None, :]
    resp = jnp.take_along_axis(st.buf_BNT, jnp.minimum(src_BR, width - 1), axis=1)
    resp = jnp.where(src_BR < width, resp, cfg.pad_id)
    # Decoded response tokens are exactly the committed ones: tokens_B.
    tokens_BR, lengths_B = stops.cut_at_eos(resp, st.tokens_B, cfg.eos_id, cfg.pad_id)
    stats = SampleStats(
      forwards_B=st.forwards_B,
      tokens_B=st.tokens_B,
      eos_B=st.eos_B,
      looped_B=st.looped_B,
      batch_forwards=st.batch_forwards,
    )
    return SampleOutput(tokens_BR=tokens_BR, lengths_B=lengths_B, stats=stats)


def per_row_cache(cache: Any) -> Any:
  """`cache` with one length per row (continuous batching), or a TypeError saying why not."""
  if not all(callable(getattr(cache, name, None)) for name in ("per_row", "put_row")):
    raise TypeError(
      f"continuous batching needs a cache with one length per row, and "
      f"{type(cache).__name__} has no per_row() / put_row() (see KVCache in "
      "echo_jax/models/decoder.py); decode this model in lockstep"
    )
  return cache.per_row()


def keep_finished_lengths(before: Any, after: Any, done_B: jax.Array) -> Any:
  """`after` (an extend of `before`) with the finished rows' lengths of `before`.

  With per-row cache lengths a finished row must not grow: what its ignored forward
  just wrote then lies past its length (never attended, overwritten later), and its
  row cannot run out of slots however long the others go on. Shared lengths (lockstep)
  are left as they are."""
  if jnp.ndim(after.length) == 0:
    return after
  return after.replace(length=jnp.where(done_B, before.length, after.length))


def _put_rows(buf_BR: jax.Array, x_BT: jax.Array, start_B: jax.Array, active_B: jax.Array):
  """Row b of buf with x_BT[b] written at start_B[b] where active_B[b]."""
  put = jax.vmap(lambda row, x, s: jax.lax.dynamic_update_slice(row, x, (s,)))
  return jnp.where(active_B[:, None], put(buf_BR, x_BT.astype(buf_BR.dtype), start_B), buf_BR)


def _decode(
  cfg: BlockSamplerConfig,
  model: DecodeModel,
  params: Any,
  context: Any,
  key: jax.Array | None,
  rec: Recording | None = None,
  aux: DecodeModel | None = None,
  aux_params: Any = None,
):
  loop = _BlockLoop(cfg, model, params, key, rec, aux, aux_params)
  st = loop.start(context)
  st = jax.lax.while_loop(
    lambda s: (s.block < loop.num_blocks) & ~jnp.all(s.done_B),
    loop.advance,
    st,
  )
  out = loop.output(st)
  if rec is None:
    return out
  return out, st.rec.replace(clean_BR=st.buf_BNT)


def _record(
  recs: Records, start: jax.Array, sel_BT: jax.Array, step: jax.Array, logits_BTV, top_k: int
) -> Records:
  """Writes the distribution and step of the positions committed now (sel_BT) into recs."""
  T = sel_BT.shape[1]

  def put(buf, new, cond):
    old = jax.lax.dynamic_slice_in_dim(buf, start, T, axis=1)
    return jax.lax.dynamic_update_slice_in_dim(buf, jnp.where(cond, new, old), start, axis=1)

  probs = jax.nn.softmax(logits_BTV.astype(jnp.float32), axis=-1)
  ids = jnp.zeros(probs.shape[:2] + (1,), jnp.int32)
  if top_k:
    probs, ids = jax.lax.top_k(probs, top_k)
  return recs.replace(
    steps_BR=put(recs.steps_BR, jnp.broadcast_to(step, sel_BT.shape), sel_BT),
    probs_BRX=put(recs.probs_BRX, probs, sel_BT[..., None]),
    ids_BRX=put(recs.ids_BRX, ids.astype(jnp.int32), sel_BT[..., None]),
  )


_decode_jit = jax.jit(_decode, static_argnums=(0, 1))
_record_jit = jax.jit(_decode, static_argnums=(0, 1, 5, 6))
