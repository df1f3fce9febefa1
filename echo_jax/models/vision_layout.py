"""Host-side (numpy) layout of the ViT inputs: patches, rotary ids, attention groups.

Everything data-dependent about Qwen2.5-VL's vision tower (which patches share
a window, which share an image, the 2-D rotary ids) is computed here, once per
example on the host, so that the jitted tower only gathers and attends over
arrays with static shapes.

Order. The Hugging Face image processor emits the patches of an image frame by
frame, and within a frame merge-block by merge-block (2x2 neighbouring patches
are consecutive); several images of one example are concatenated. The tower
keeps exactly this order ("HF order") from input to output: attention does not
depend on token order, so the window permutation HF applies to its hidden
states is replaced by gather indices into windows, and the merged tokens come
out in the order of the <|image_pad|> tokens with no reverse permutation.

Windows. Qwen2.5-VL tiles each frame's merged grid into windows of
`window_size // (patch_size * spatial_merge_size)` merge blocks per side; the
last row/column of windows is partial when the grid side is not a multiple
(HF's `get_window_index` pads then drops). Windows hold at most
E = (units per window side)**2 * merge**2 patches. They are packed, in HF's
window order, into rows of E slots with next-fit: a window goes into the
current row if it fits, else starts a new one. Any two consecutive rows then
hold more than E patches, so `ceil(N / E) * 2 - 1` rows always suffice for N
patches and a window layer costs O(N * E), whatever the image sizes.

Extra shape letters used here: W window rows, E slots per window row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.struct
import numpy as np

from echo_jax.models.config import VisionConfig


@flax.struct.dataclass
class VisionInputs:
  """The images of a batch of examples, padded to `N = max_patches` patches each.

  Fields (all numpy or jax arrays, batch-leading):
    patches_BNC: float32 [B, N, C*T*P*P] flattened patches in HF order; zeros where padded.
    positions_BN2: int32 [B, N, 2] (row, column) patch ids of the 2-D rotary; 0 where padded.
    segments_BN: int32 [B, N] full-attention group (one per image frame, numbered from 0
      within the example); -1 for padding, so padding only ever attends padding.
    window_patch_BWE: int32 [B, W, E] index (into N) of the patch in each window-row slot;
      0 for an empty slot.
    window_id_BWE: int32 [B, W, E] window id of each slot (unique within the example);
      -1 for an empty slot. Slots attend to slots of the same row with the same id.
    window_slot_BN: int32 [B, N] flat slot (row * E + slot) holding each patch; W * E (one
      past the last slot) for padding patches.
    valid_BN: bool [B, N] True for real patches.
  """

  patches_BNC: np.ndarray
  positions_BN2: np.ndarray
  segments_BN: np.ndarray
  window_patch_BWE: np.ndarray
  window_id_BWE: np.ndarray
  window_slot_BN: np.ndarray
  valid_BN: np.ndarray

  @property
  def max_patches(self) -> int:
    return self.patches_BNC.shape[1]


def window_units(config: VisionConfig) -> int:
  """Merge blocks per window side (HF's `vit_merger_window_size`)."""
  return config.window_size // config.spatial_merge_size // config.patch_size


def window_capacity(config: VisionConfig) -> int:
  """E: the most patches one window holds."""
  return window_units(config) ** 2 * config.spatial_merge_size**2


def num_window_rows(config: VisionConfig, max_patches: int) -> int:
  """W: window rows that always suffice for `max_patches` patches under next-fit packing."""
  return max(1, 2 * math.ceil(max_patches / window_capacity(config)) - 1)


def _image_layout(
  t: int, h: int, w: int, config: VisionConfig
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
  """One image's rotary ids [n, 2], frame of each patch [n], and windows (patch ids, HF order)."""
  m = config.spatial_merge_size
  s = window_units(config)
  lh, lw = h // m, w // m
  # Rotary ids: (row, column) of each patch, laid out merge-block-major like the patches.
  rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  rc = np.stack([a.reshape(lh, m, lw, m).transpose(0, 2, 1, 3).ravel() for a in (rows, cols)], -1)
  positions = np.tile(rc, (t, 1))
  frames = np.repeat(np.arange(t), h * w)
  # Windows over the merged grid of each frame; the partial last row/column of windows
  # is what HF's padded `get_window_index` leaves after dropping the padding.
  nwh, nww = -(-lh // s), -(-lw // s)
  win_h = np.arange(lh) // s
  win_w = np.arange(lw) // s
  window_of_unit = (
    np.arange(t)[:, None, None] * (nwh * nww) + win_h[None, :, None] * nww + win_w[None, None, :]
  ).ravel()
  # A stable sort keeps merge blocks row-major inside each window, as HF does.
  order = np.argsort(window_of_unit, kind="stable")
  counts = np.bincount(window_of_unit, minlength=t * nwh * nww)
  starts = np.concatenate([[0], np.cumsum(counts)])
  unit_patches = np.arange(m * m)
  windows = [
    (order[starts[i] : starts[i + 1], None] * (m * m) + unit_patches[None, :]).ravel()
    for i in range(len(counts))
    if counts[i]
  ]
  return positions, frames, windows


def _check_example(
  index: int, patches: np.ndarray, grid_thw: np.ndarray, config: VisionConfig, max_patches: int
) -> None:
  where = f"example {index}"
  if patches.ndim != 2 or patches.shape[1] != config.patch_dim:
    raise ValueError(
      f"{where}: patches have shape {patches.shape}; expected (num_patches, {config.patch_dim}) "
      "= (n, in_channels * temporal_patch_size * patch_size**2) as the HF image processor emits"
    )
  if grid_thw.ndim != 2 or grid_thw.shape[1] != 3:
    raise ValueError(f"{where}: grid_thw has shape {grid_thw.shape}; expected (num_images, 3)")
  m = config.spatial_merge_size
  for t, h, w in grid_thw.tolist():
    if t < 1 or h < m or w < m or h % m or w % m:
      raise ValueError(
        f"{where}: image grid (t={t}, h={h}, w={w}) must have t >= 1 and h, w positive "
        f"multiples of spatial_merge_size={m}"
      )
  n = int(np.prod(grid_thw, axis=1).sum()) if len(grid_thw) else 0
  if n != patches.shape[0]:
    raise ValueError(f"{where}: grid_thw covers {n} patches but {patches.shape[0]} were given")
  if n > max_patches:
    raise ValueError(
      f"{where}: {n} patches exceed max_patches={max_patches}; raise max_patches or "
      "lower the image resolution (max_pixels)"
    )


def prepare_vision_inputs(
  patches: Sequence[np.ndarray],
  grid_thw: Sequence[np.ndarray],
  config: VisionConfig,
  max_patches: int,
) -> VisionInputs:
  """Pad and index a batch of examples' images for `VisionTower`.

  Args:
    patches: one (n_i, C*T*P*P) array per example, the patches of all its images
      concatenated in HF order (as `Qwen2VLImageProcessor` emits `pixel_values`).
    grid_thw: one (num_images_i, 3) int array per example: (t, h, w) in patches.
      An example without images has a (0, 3) grid and (0, C*T*P*P) patches.
    config: the vision tower's config.
    max_patches: N, patches per example after padding; a multiple of spatial_merge_size**2.
  """
  if len(patches) != len(grid_thw):
    raise ValueError(f"got patches for {len(patches)} examples but grid_thw for {len(grid_thw)}")
  unit = config.spatial_merge_size**2
  if max_patches <= 0 or max_patches % unit:
    raise ValueError(f"max_patches={max_patches} must be a positive multiple of {unit}")
  b, n_max = len(patches), max_patches
  e, rows = window_capacity(config), num_window_rows(config, max_patches)
  out = VisionInputs(
    patches_BNC=np.zeros((b, n_max, config.patch_dim), np.float32),
    positions_BN2=np.zeros((b, n_max, 2), np.int32),
    segments_BN=np.full((b, n_max), -1, np.int32),
    window_patch_BWE=np.zeros((b, rows, e), np.int32),
    window_id_BWE=np.full((b, rows, e), -1, np.int32),
    window_slot_BN=np.full((b, n_max), rows * e, np.int32),
    valid_BN=np.zeros((b, n_max), bool),
  )
  for i, (p, g) in enumerate(zip(patches, grid_thw)):
    p, g = np.asarray(p), np.asarray(g, np.int64).reshape(-1, 3)
    _check_example(i, p, g, config, max_patches)
    out.patches_BNC[i, : len(p)] = p
    out.valid_BN[i, : len(p)] = True
    start, frame0, windows = 0, 0, []
    for t, h, w in g.tolist():
      positions, frames, image_windows = _image_layout(t, h, w, config)
      out.positions_BN2[i, start : start + len(frames)] = positions
      out.segments_BN[i, start : start + len(frames)] = frames + frame0
      windows += [win + start for win in image_windows]
      start, frame0 = start + len(frames), frame0 + t
    # Next-fit packing of the windows, in HF order, into rows of e slots.
    row, fill = 0, 0
    for window_id, win in enumerate(windows):
      if fill + len(win) > e:
        row, fill = row + 1, 0
      assert row < rows, "next-fit packing exceeded its proven bound"
      out.window_patch_BWE[i, row, fill : fill + len(win)] = win
      out.window_id_BWE[i, row, fill : fill + len(win)] = window_id
      out.window_slot_BN[i, win] = row * e + fill + np.arange(len(win))
      fill += len(win)
  return out
