"""Stopping: EOS, the output cut, and the repetition-loop guard.

A report stops after the block (or token) that contains EOS; its text is cut
at the first EOS. A badly distilled one-step model tends to loop instead of
emitting EOS; the optional guard stops a report as soon as one n-gram has
occurred more than `max_repeats` times, and the sampler counts such reports.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True, kw_only=True)
class RepetitionGuard:
  """Stop a report once some `ngram`-gram occurs more than `max_repeats` times."""

  ngram: int = 8
  max_repeats: int = 4

  def validate(self) -> None:
    if self.ngram < 1 or self.max_repeats < 1:
      raise ValueError(
        f"RepetitionGuard(ngram={self.ngram}, max_repeats={self.max_repeats}): both must be >= 1"
      )


def has_eos(tokens_BT: jax.Array, valid_BT: jax.Array, eos_id: int) -> jax.Array:
  """bool [B]: an EOS among the valid (response) positions."""
  return jnp.any((tokens_BT == eos_id) & valid_BT, axis=-1)


def repeats_ngram(
  buf_BR: jax.Array,
  begin_B: jax.Array,
  end_B: jax.Array,
  start: jax.Array,
  width: int,
  guard: RepetitionGuard,
) -> jax.Array:
  """bool [B]: an n-gram ending in [start, start + width) occurs > max_repeats times.

  The response of example b is `buf_BR[b, begin_B[b]:end_B[b]]`. Only n-grams
  that end in the newly written window are tested, against every n-gram of
  the response written up to the window's end (the earlier ones were tested
  when they were written). `start` is shared (int32 []) or per example ([B]).
  """
  n, r = guard.ngram, buf_BR.shape[1]
  if n > r:
    return jnp.zeros(buf_BR.shape[:1], bool)
  num = r - n + 1  # n-grams, by their first index
  grams_BGn = jnp.stack([buf_BR[:, i : i + num] for i in range(n)], axis=-1)
  first_G = jnp.arange(num)
  start_B = jnp.broadcast_to(start, buf_BR.shape[:1])
  # Count only n-grams written so far: the buffer past the window is not output yet.
  written_B = jnp.minimum(end_B, start_B + width)
  inside_BG = (first_G[None, :] >= begin_B[:, None]) & (first_G[None, :] + n <= written_B[:, None])
  new_first_BW = start_B[:, None] + jnp.arange(width)[None, :] - (n - 1)
  new_ok_BW = (new_first_BW >= begin_B[:, None]) & (new_first_BW + n <= end_B[:, None])
  new_BWn = jnp.take_along_axis(grams_BGn, jnp.clip(new_first_BW, 0, num - 1)[..., None], axis=1)
  same_BWG = jnp.all(new_BWn[:, :, None, :] == grams_BGn[:, None, :, :], axis=-1)
  count_BW = jnp.sum(same_BWG & inside_BG[:, None, :], axis=-1)
  return jnp.any(new_ok_BW & (count_BW > guard.max_repeats), axis=-1)


def cut_at_eos(
  resp_BR: jax.Array, length_B: jax.Array, eos_id: int, pad_id: int
) -> tuple[jax.Array, jax.Array]:
  """(tokens_BR, report_len_B): pad from the first EOS on (and beyond `length_B`)."""
  idx_R = jnp.arange(resp_BR.shape[1])
  is_eos = (resp_BR == eos_id) & (idx_R[None, :] < length_B[:, None])
  first = jnp.where(jnp.any(is_eos, axis=-1), jnp.argmax(is_eos, axis=-1), length_B)
  keep = idx_R[None, :] < first[:, None]
  return jnp.where(keep, resp_BR, pad_id).astype(jnp.int32), first.astype(jnp.int32)
