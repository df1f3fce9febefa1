"""Autoregressive decoding: one token per forward (TPF = 1), ECHO_AR and baselines.

`logits="next"` (default) is for autoregressive models, whose logit at a
token predicts the next one. The first response token is predicted by the
last context token: the model moves it out of the context
(`SplittableContext.split_context`) and the sampler feeds it as the first
step, so every forward feeds the previous token and appends its keys/values.

`logits="at"` is for diffusion models (logit i scores the token at i): each
forward feeds [previous token | <|MASK|>] and reads the mask's logit. That is
exactly one-step block diffusion with block_len = 1, and runs as such.

Greedy by default; temperature / top-k / top-p as in `commit.Sampling`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from echo_jax.sampling import commit, stops
from echo_jax.sampling.block_decode import (
  BlockSamplerConfig,
  _check_model,
  _put_rows,
  keep_finished_lengths,
  per_row_cache,
)
from echo_jax.sampling.one_step import OneStepSampler
from echo_jax.sampling.protocol import DecodeModel
from echo_jax.sampling.state import SampleOutput, SampleStats, TokenState

LOGIT_MODES = ("next", "at")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AutoregressiveSampler:
  """Token-by-token sampler; frozen and hashable (a jit static argument)."""

  eos_id: int
  pad_id: int
  mask_id: int = -1  # only used with logits="at"
  max_new_tokens: int = 256
  sampling: commit.Sampling = commit.Sampling()
  repetition: stops.RepetitionGuard | None = None
  logits: str = "next"  # "next": logit i predicts token i+1; "at": logit i scores token i

  def validate(self, model: Any) -> None:
    if self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 1")
    if self.logits not in LOGIT_MODES:
      raise ValueError(f"logits={self.logits!r}: use one of {LOGIT_MODES}")
    if self.logits == "at" and self.mask_id < 0:
      raise ValueError('logits="at" feeds <|MASK|> tokens: set mask_id')
    self.sampling.validate()
    if self.repetition is not None:
      self.repetition.validate()
    _check_model(model, needs_split=self.logits == "next")

  def as_block_sampler(self) -> BlockSamplerConfig:
    """The equivalent one-step block sampler (block_len = 1) for logits="at"."""
    return OneStepSampler(
      eos_id=self.eos_id,
      mask_id=self.mask_id,
      pad_id=self.pad_id,
      block_len=1,
      max_new_tokens=self.max_new_tokens,
      sampling=self.sampling,
      repetition=self.repetition,
    )

  def sample(
    self, model: DecodeModel, params: Any, context: Any, key: jax.Array | None = None
  ) -> SampleOutput:
    """Decode a batch of reports. Jitted; compiled once per (config, model, shapes)."""
    if self.logits == "at":
      return self.as_block_sampler().sample(model, params, context, key)
    self.validate(model)
    return _decode_jit(self, model, params, context, key)

  __call__ = sample


class _TokenLoop:
  """The pieces of the token loop, built at trace time (see block_decode._BlockLoop):
  each row has its own step `t_B`, so continuous batching can refill finished rows."""

  def __init__(self, cfg: AutoregressiveSampler, model: DecodeModel, params: Any, key):
    self.cfg, self.model, self.params, self.key = cfg, model, params, key

  def start(self, context: Any, *, per_row: bool = False) -> TokenState:
    """Prefill all but each prompt's last token, which the first step feeds."""
    batch = jax.tree.leaves(context)[0].shape[0]
    r = self.cfg.max_new_tokens
    model = self.model
    head, last_BT = model.split_context(context, jnp.ones((batch,), jnp.int32), max_tail=1)
    slots = model.context_slots(head, block_len=1)
    cache, pos0_B = model.prefill(self.params, head, cache_length=slots + r, block_len=1)
    if per_row:
      cache = per_row_cache(cache)
    false_B = jnp.zeros((batch,), bool)
    zeros_B = jnp.zeros((batch,), jnp.int32)
    return TokenState(
      cache=cache,
      t=jnp.int32(0),
      last_B=jnp.asarray(last_BT, jnp.int32)[:, 0],
      buf_BR=jnp.full((batch, r), self.cfg.pad_id, jnp.int32),
      done_B=false_B,
      eos_B=false_B,
      looped_B=false_B,
      forwards_B=zeros_B,
      batch_forwards=jnp.int32(0),
      t_B=zeros_B,
      calls_B=zeros_B,
      pos0_B=pos0_B.astype(jnp.int32),
    )

  def step(self, st: TokenState) -> TokenState:
    """One token for every unfinished row."""
    cfg = self.cfg
    r = cfg.max_new_tokens
    active_B = ~st.done_B
    logits, cache = self.model.extend(
      self.params,
      st.cache,
      st.last_B[:, None],
      (st.pos0_B + st.t_B)[:, None],
      block_len=1,
      num_append=1,
    )
    k = None if self.key is None else jax.random.fold_in(self.key, st.t)
    tok_B = commit.draw_tokens(logits, cfg.sampling, k)[:, 0]
    tok_B = jnp.where(active_B, tok_B, cfg.pad_id)
    buf = _put_rows(st.buf_BR, tok_B[:, None], st.t_B, active_B)
    eos = active_B & (tok_B == cfg.eos_id)
    looped = jnp.zeros_like(eos)
    if cfg.repetition is not None:
      begin_B = jnp.zeros_like(st.t_B)
      looped = (
        active_B & ~eos & stops.repeats_ngram(buf, begin_B, st.t_B + 1, st.t_B, 1, cfg.repetition)
      )
    return st.replace(
      cache=keep_finished_lengths(st.cache, cache, st.done_B),
      t=st.t + 1,
      last_B=tok_B,
      buf_BR=buf,
      eos_B=st.eos_B | eos,
      looped_B=st.looped_B | looped,
      done_B=st.done_B | eos | looped | (st.t_B + 1 >= r),
      forwards_B=st.forwards_B + active_B.astype(jnp.int32),
      batch_forwards=st.batch_forwards + 1,
      t_B=st.t_B + active_B.astype(jnp.int32),
      calls_B=st.calls_B + 1,
    )

  advance = step  # the name the block loop has for one decoding step of the batch

  def output(self, st: TokenState) -> SampleOutput:
    cfg = self.cfg
    tokens_BR, lengths_B = stops.cut_at_eos(st.buf_BR, st.forwards_B, cfg.eos_id, cfg.pad_id)
    stats = SampleStats(
      forwards_B=st.forwards_B,
      tokens_B=st.forwards_B,
      eos_B=st.eos_B,
      looped_B=st.looped_B,
      batch_forwards=st.batch_forwards,
    )
    return SampleOutput(tokens_BR=tokens_BR, lengths_B=lengths_B, stats=stats)


def _decode(
  cfg: AutoregressiveSampler, model: DecodeModel, params: Any, context: Any, key: jax.Array | None
) -> SampleOutput:
  loop = _TokenLoop(cfg, model, params, key)
  st = loop.start(context)
  r = cfg.max_new_tokens
  st = jax.lax.while_loop(lambda s: (s.t < r) & ~jnp.all(s.done_B), loop.step, st)
  return loop.output(st)


_decode_jit = jax.jit(_decode, static_argnums=(0, 1))
