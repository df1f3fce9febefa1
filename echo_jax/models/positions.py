"""Host-side (numpy) 3-D rotary position ids of Qwen2.5-VL, the `get_rope_index` rule.

For one example, walking over its real (non-padding) tokens left to right with a
running position `p` (starting at 0):
  * a text token gets (p, p, p) and p += 1;
  * the merged vision tokens of an image with grid (t, h, w) patches, i.e.
    (t, h/m, w/m) merged tokens for merge size m, get
    (p + ti, p + hi, p + wi) in row-major (ti, hi, wi) order, and then
    p += max(h, w) / m  (still images: t = 1; the temporal scale
    `tokens_per_second` only applies to videos, which are not supported here).
Left padding takes position (0, 0, 0) and is never attended. The response that
follows the context continues at `next_position` = max position + 1, with the
same id in all three rows.
"""

from __future__ import annotations

import numpy as np

from echo_jax.models.config import ModelConfig


def rope_positions(
  tokens_L: np.ndarray,
  grid_thw: np.ndarray | None,
  valid_L: np.ndarray | None,
  config: ModelConfig,
) -> tuple[np.ndarray, int]:
  """Positions (3, L) int32 and the next free position for one example.

  tokens_L: token ids; the images' <|image_pad|> tokens appear in the order of the
    rows of `grid_thw` (num_images, 3), one token per merged 2x2 group of patches.
  valid_L: True for real tokens (None = all real). Padding may be anywhere but is
    normally on the left.
  Raises ValueError when the image tokens and the grids disagree.
  """
  tokens_L = np.asarray(tokens_L)
  if tokens_L.ndim != 1:
    raise ValueError(f"tokens_L must be 1-D, got shape {tokens_L.shape}")
  length = tokens_L.shape[0]
  valid_L = np.ones(length, bool) if valid_L is None else np.asarray(valid_L, bool)
  if valid_L.shape != (length,):
    raise ValueError(f"valid_L has shape {valid_L.shape}, expected ({length},)")
  grids = np.zeros((0, 3), np.int64) if grid_thw is None else np.asarray(grid_thw, np.int64)
  if grids.ndim != 2 or grids.shape[1] != 3:
    raise ValueError(f"grid_thw must have shape (num_images, 3), got {grids.shape}")
  merge = config.vision.spatial_merge_size
  ids = config.tokens
  if np.any(grids[:, 1:] % merge):
    raise ValueError(f"grid_thw {grids.tolist()} has a side not divisible by merge size {merge}")

  real = np.flatnonzero(valid_L)
  toks = tokens_L[real]
  if np.any(toks == ids.video_pad):
    raise ValueError("video tokens (<|video_pad|>) are not supported; only still images are")
  is_image = toks == ids.image_pad
  expected = int(sum(t * (h // merge) * (w // merge) for t, h, w in grids))
  if int(is_image.sum()) != expected:
    raise ValueError(
      f"{int(is_image.sum())} <|image_pad|> tokens but grid_thw {grids.tolist()} "
      f"needs {expected} (t * h/{merge} * w/{merge} per image)"
    )

  pos_3n = np.zeros((3, toks.shape[0]), np.int64)
  p, i, image = 0, 0, 0
  while i < toks.shape[0]:
    if not is_image[i]:
      pos_3n[:, i] = p
      p += 1
      i += 1
      continue
    t, h, w = (int(x) for x in grids[image])
    gh, gw = h // merge, w // merge
    n = t * gh * gw
    if not np.all(is_image[i : i + n]):
      raise ValueError(
        f"image {image} (grid {[t, h, w]}) needs {n} consecutive <|image_pad|> tokens "
        f"starting at real token {i}"
      )
    ti, hi, wi = np.meshgrid(np.arange(t), np.arange(gh), np.arange(gw), indexing="ij")
    pos_3n[:, i : i + n] = p + np.stack([ti.ravel(), hi.ravel(), wi.ravel()])
    p += max(gh, gw)
    i += n
    image += 1

  positions_3L = np.zeros((3, length), np.int32)
  positions_3L[:, real] = pos_3n
  next_position = int(pos_3n.max()) + 1 if pos_3n.size else 0
  return positions_3L, next_position


def batch_rope_positions(
  tokens_BL: np.ndarray,
  grid_thw: list[np.ndarray | None],
  valid_BL: np.ndarray,
  config: ModelConfig,
) -> tuple[np.ndarray, np.ndarray]:
  """`rope_positions` per example: (3, B, L) int32 and next positions (B,) int32."""
  tokens_BL = np.asarray(tokens_BL)
  if len(grid_thw) != tokens_BL.shape[0]:
    raise ValueError(f"grid_thw has {len(grid_thw)} entries for a batch of {tokens_BL.shape[0]}")
  out = [rope_positions(t, g, v, config) for t, g, v in zip(tokens_BL, grid_thw, valid_BL)]
  positions_3BL = np.stack([p for p, _ in out], axis=1)
  return positions_3BL, np.asarray([n for _, n in out], np.int32)
