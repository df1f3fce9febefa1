"""The authors' released block grid ("released" protocol), for their checkpoints.

The released inference code (midea-ai/ECHO: inference/generate_vl_block.py,
inference/generate_echo.py, eval/EasyEval/generate_vl_block.py) lays one
global block grid from sequence index 0 over the prompt and the response:

1. prefill the whole prompt (length L) with the block-causal mask of that grid;
2. crop the cache back to a = (L // B) * B, the last block boundary inside the
   prompt;
3. the first decoded block is [prompt tail (t = L - a tokens) | B - t masks];
   the tail is recomputed with the first response tokens, in one bidirectional
   block, and is never re-predicted (only masks are committed);
4. decode blocks up to ceil((L + gen_length) / B), i.e. ceil((t + G) / B)
   blocks (one more than G / B when t > 0);
5. EOS is looked for only among response positions (the tail may hold the
   user turn's <|im_end|>), then the text is cut at the first EOS.

Prefill-then-crop equals prefilling only the head (the first a tokens): under
the block-causal mask no head token attends a tail token. So here the model
splits each example's prompt into head and tail (`SplittableContext`), the
head is prefilled (left-padded by a multiple of B, so its grid is the global
one), and the tail enters the first block. Commit rule, step schedule, fused
one-step decode and stopping are those of the aligned grid.

Batches: the released code decodes one example at a time (its canvas is
`torch.full((1, total_length), ...)`), so only batch size 1 is defined there.
Here a batch may mix prompt lengths: every example has its own tail length
and block budget while the cache length stays shared, because each head is
re-padded on the left to the same bucket; each example gets exactly the
tokens it gets alone.

Two things the released code does that are not reproduced: a committed token
equal to <|MASK|> is re-masked there (here a committed position is final),
and the multi-step code writes the final block into the cache even after EOS
(no token depends on it).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from echo_jax.sampling.protocol import DecodeModel


def split_prompt(
  model: DecodeModel, context: Any, block_len: int
) -> tuple[Any, jax.Array, jax.Array]:
  """(head context, tail_BT int32 [B, block_len], tail_len_B int32 [B]) on the global grid."""
  lengths_B = jnp.asarray(model.context_lengths(context), jnp.int32)
  tail_len_B = lengths_B % block_len
  head, tail_BT = model.split_context(context, tail_len_B, max_tail=block_len)
  return head, jnp.asarray(tail_BT, jnp.int32), tail_len_B
