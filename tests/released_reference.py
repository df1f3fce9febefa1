"""A PyTorch reference of the released ECHO decoding algorithm, for parity tests.

Written from the algorithm's description, on transformers' Qwen2.5-VL with explicit 4-D
attention masks and a `DynamicCache`, one report at a time (the released code decodes
batch size 1):

1. one global block grid from sequence index 0 over prompt and response: token i may
   attend token j iff j // B <= i // B;
2. the whole prompt (length L, images included) is prefilled under that mask, then the
   cache is cut back to a = (L // B) * B, the last block boundary inside the prompt;
3. blocks n = L // B, ... are decoded; the first one holds the prompt's tail (L - a
   tokens, recomputed together with the first response tokens, never re-predicted)
   and B - (L - a) masks; the budget ends with the block holding index L + G - 1;
4. multi-step: per block up to `steps` denoising forwards that are not kept in the cache;
   at step s, k_s = B // steps tokens are due (the remainder to the first steps): every
   masked position whose greedy confidence (softmax probability of the argmax) is
   strictly above tau is committed if there are at least k_s of them, else the k_s most
   confident; once nothing is masked, one more forward writes the block into the cache;
5. one step, fused: the forward that predicts block n takes [block n-1 | block n] (2B
   tokens) and keeps only block n-1 in the cache; the first block has only its own B
   tokens and keeps nothing;
6. stop after a block whose response positions hold EOS; the report is cut at the first
   EOS (and at the first leftover mask).

Keeping "not stored" forwards out of the cache is done by cropping the cache back to
its length before the forward.
"""

from __future__ import annotations

import numpy as np
import torch


def block_mask(rows: range, cols: int, block_len: int) -> torch.Tensor:
  """Additive float mask (1, 1, len(rows), cols) of the global block grid."""
  i = torch.tensor(list(rows))[:, None] // block_len
  j = torch.arange(cols)[None, :] // block_len
  allowed = j <= i
  mask = torch.zeros(allowed.shape, dtype=torch.float32)
  mask[~allowed] = torch.finfo(torch.float32).min
  return mask[None, None]


def transfer_counts(block_len: int, steps: int) -> list[int]:
  base, extra = divmod(block_len, steps)
  return [base + (1 if s < extra else 0) for s in range(steps)]


def commit(cur: torch.Tensor, logits: torch.Tensor, mask_id: int, k: int, tau: float):
  """Greedy threshold rule on one block: returns the block with the chosen masks filled."""
  probs = torch.softmax(logits.float(), dim=-1)
  conf, tokens = probs.max(dim=-1)
  masked = cur == mask_id
  conf = torch.where(masked, conf, torch.tensor(-float("inf")))
  high = conf > tau
  if int(high.sum()) >= k:
    chosen = high
  else:
    chosen = torch.zeros_like(masked)
    chosen[torch.topk(conf, min(k, int(masked.sum()))).indices] = True
  return torch.where(chosen, tokens, cur)


class ReleasedReference:
  """Decodes one prompt with `model` (a transformers Qwen2_5_VLForConditionalGeneration)."""

  def __init__(self, model, *, mask_id: int, eos_id: int):
    self.model = model.eval()
    self.mask_id = mask_id
    self.eos_id = eos_id

  def _forward(self, tokens, positions, mask, cache, keep: int, **vision):
    """Run tokens against the cache; afterwards the cache holds only `keep` more slots."""
    start = cache.get_seq_length()
    with torch.no_grad():
      out = self.model(
        input_ids=tokens[None],
        position_ids=positions[:, None],
        attention_mask=mask,
        past_key_values=cache,
        use_cache=True,
        **vision,
      )
    extra = cache.get_seq_length() - (start + keep)
    if extra > 0:
      cache.crop(-extra)  # a negative count removes that many slots from the end
    return out.logits[0]

  @torch.no_grad()
  def generate(
    self,
    prompt: np.ndarray,
    positions: np.ndarray,
    *,
    block_len: int,
    steps: int,
    gen_length: int,
    tau: float = 0.85,
    pixel_values: np.ndarray | None = None,
    image_grid_thw: np.ndarray | None = None,
  ) -> tuple[list[int], int]:
    """(report ids, decode forwards). prompt (L,), positions (3, L) of the prompt."""
    from transformers import DynamicCache

    B, L = block_len, len(prompt)
    num_blocks = -(-(L + gen_length) // B)
    total = num_blocks * B
    x = torch.full((total,), self.mask_id, dtype=torch.long)
    x[:L] = torch.as_tensor(prompt, dtype=torch.long)
    pos = torch.zeros((3, total), dtype=torch.long)
    pos[:, :L] = torch.as_tensor(positions, dtype=torch.long)
    pos[:, L:] = int(positions[:, -1].max()) + 1 + torch.arange(total - L)[None]

    vision = {}
    if pixel_values is not None:
      vision = dict(
        pixel_values=torch.as_tensor(pixel_values, dtype=torch.float32),
        image_grid_thw=torch.as_tensor(image_grid_thw, dtype=torch.long),
      )
    cache = DynamicCache()
    a = (L // B) * B
    self._forward(x[:L], pos[:, :L], block_mask(range(L), L, B), cache, keep=a, **vision)

    counts = transfer_counts(B, steps)
    forwards = 0
    prev = None
    for n in range(L // B, num_blocks):
      s, e = n * B, (n + 1) * B
      cur = x[s:e].clone()
      if steps == 1:  # fused one-step decode
        if prev is None:
          logits = self._forward(cur, pos[:, s:e], block_mask(range(s, e), e, B), cache, keep=0)
        else:
          both = torch.cat([prev, cur])
          rows = range(s - B, e)
          logits = self._forward(both, pos[:, s - B : e], block_mask(rows, e, B), cache, keep=B)
          logits = logits[B:]
        forwards += 1
        cur = commit(cur, logits, self.mask_id, counts[0], tau)
        prev = cur.clone()
      else:
        for step in range(steps + 1):
          mask_here = block_mask(range(s, e), e, B)
          if not bool((cur == self.mask_id).any()):
            self._forward(cur, pos[:, s:e], mask_here, cache, keep=B)
            forwards += 1
            break
          logits = self._forward(cur, pos[:, s:e], mask_here, cache, keep=0)
          forwards += 1
          cur = commit(cur, logits, self.mask_id, counts[step], tau)
      x[s:e] = cur
      response_from = max(0, L - s)
      if bool((cur[response_from:] == self.eos_id).any()):
        break

    report = x[L:].tolist()
    for stop in (self.eos_id, self.mask_id):
      if stop in report:
        report = report[: report.index(stop)]
    return report, forwards
