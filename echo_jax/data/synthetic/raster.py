"""Rasterization primitives for the synthetic radiographs.

Everything is drawn in a *canonical* body frame: `u` runs across the patient
(negative = patient right = image left, as in a PA film), `v` runs down, and the
thorax spans roughly [-1, 1] in both. A `Canvas` maps that frame onto the pixel
grid with a per-patient scale, small rotation and shift, so anatomy and findings
are written once in canonical units and land at the right pixels for any image
size. All operations are vectorized numpy over the whole image (no per-pixel
Python loops).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

__all__ = [
  "Canvas",
  "blur",
  "segment_distance",
  "smooth_noise",
  "soft",
  "splat_curve",
  "splat_curves",
  "splat_polylines",
]


@dataclass(frozen=True)
class Canvas:
  """Pixel grid of `size` x `size` plus the canonical-frame pose of the patient."""

  size: int
  scale: float = 1.0  # canonical unit -> half image width
  angle: float = 0.0  # radians, positive rotates the patient clockwise on screen
  shift_x: float = 0.0  # in half-image-widths
  shift_y: float = 0.0

  @property
  def pixel(self) -> float:
    """Length of one pixel in canonical units (for anti-aliasing widths)."""
    return 2.0 / (self.size * self.scale)

  @functools.cached_property
  def grid(self) -> tuple[np.ndarray, np.ndarray]:
    """Canonical (u, v) of every pixel centre, each float32 [size, size]."""
    c = (np.arange(self.size, dtype=np.float32) + 0.5) / self.size * 2.0 - 1.0
    x = c[None, :] - self.shift_x
    y = c[:, None] - self.shift_y
    cos, sin = np.cos(self.angle), np.sin(self.angle)
    # Inverse rotation (screen -> body frame), then undo the scale.
    u = (cos * x + sin * y) / self.scale
    v = (-sin * x + cos * y) / self.scale
    return u.astype(np.float32), v.astype(np.float32)

  def to_pixel(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Canonical points -> (row, col) in pixel units (pixel centres at k + 0.5)."""
    cos, sin = np.cos(self.angle), np.sin(self.angle)
    x = self.scale * (cos * u - sin * v) + self.shift_x
    y = self.scale * (sin * u + cos * v) + self.shift_y
    col = (x + 1.0) * 0.5 * self.size
    row = (y + 1.0) * 0.5 * self.size
    return row, col


def soft(sd: np.ndarray, width: float) -> np.ndarray:
  """Anti-aliased inside-mask from a signed distance (negative inside), edge `width` wide."""
  return (0.5 - 0.5 * np.tanh(sd * (1.0 / (2.0 * width)))).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _gauss_taps(sigma: float) -> np.ndarray:
  radius = max(1, int(np.ceil(3.0 * sigma)))
  k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
  return (k / k.sum()).astype(np.float32)


def _conv_axis(img: np.ndarray, taps: np.ndarray, axis: int) -> np.ndarray:
  r = len(taps) // 2
  pad = [(0, 0), (0, 0)]
  pad[axis] = (r, r)
  p = np.pad(img, pad, mode="reflect" if img.shape[axis] > r else "edge")
  n = img.shape[axis]
  out = np.zeros_like(img, dtype=np.float32)
  for i, t in enumerate(taps):
    out += t * (p[i : i + n] if axis == 0 else p[:, i : i + n])
  return out


def blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
  """Gaussian blur (separable, reflected borders) with standard deviation `sigma_px` pixels.

  Shifted sums rather than BLAS: small kernels are cheaper this way and the
  result does not depend on how many threads the linear-algebra library uses.
  """
  if sigma_px <= 0:
    return img.astype(np.float32)
  taps = _gauss_taps(float(round(sigma_px, 3)))
  return _conv_axis(_conv_axis(img.astype(np.float32), taps, 0), taps, 1)


@functools.lru_cache(maxsize=16)
def _upsample_index(size: int, n: int) -> tuple[np.ndarray, np.ndarray]:
  """Linear interpolation from n coarse samples (spanning the image) to size pixels."""
  x = (np.arange(size) + 0.5) / size * (n - 1)
  i0 = np.clip(np.floor(x).astype(np.int64), 0, n - 2)
  return i0, (x - i0).astype(np.float32)


def smooth_noise(rng: np.random.Generator, size: int, sigma_px: float) -> np.ndarray:
  """Zero-mean, unit-std, spatially smooth noise field [size, size] (float32).

  Drawn on a coarse grid (about two samples per `sigma_px`), smoothed there and
  interpolated up, so the cost barely depends on the correlation length.
  Elementwise interpolation rather than matrix products keeps it free of BLAS
  threading, which matters when several generator processes share few cores.
  """
  n = int(np.clip(np.ceil(2.0 * size / max(sigma_px, 1e-3)), 4, size))
  coarse = blur(rng.standard_normal((n, n), dtype=np.float32), 1.0)
  i0, f = _upsample_index(size, n)
  rows = coarse[i0] * (1 - f)[:, None] + coarse[i0 + 1] * f[:, None]  # [size, n]
  field = rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]
  field -= field.mean()
  return field / (field.std() + 1e-6)


def segment_distance(
  u: np.ndarray, v: np.ndarray, p0: tuple[float, float], p1: tuple[float, float]
) -> np.ndarray:
  """Euclidean distance from each (u, v) to the segment p0-p1 (canonical units)."""
  du, dv = p1[0] - p0[0], p1[1] - p0[1]
  length2 = du * du + dv * dv + 1e-12
  t = np.clip(((u - p0[0]) * du + (v - p0[1]) * dv) / length2, 0.0, 1.0)
  return np.hypot(u - (p0[0] + t * du), v - (p0[1] + t * dv))


def splat_curve(
  canvas: Canvas,
  points_uv: np.ndarray,
  weights: np.ndarray | float = 1.0,
  out: np.ndarray | None = None,
) -> np.ndarray:
  """Draws one polyline (canonical points [K, 2]); see `splat_curves`."""
  return splat_curves(canvas, [(points_uv, weights)], out)


def _resample(canvas: Canvas, points_uv: np.ndarray, weights) -> tuple[np.ndarray, ...]:
  pts = np.asarray(points_uv, np.float32)
  if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 2:
    raise ValueError(f"points_uv must be [K>=2, 2], got shape {pts.shape}")
  seg = np.hypot(*np.diff(pts, axis=0).T)
  arc = np.concatenate([[0.0], np.cumsum(seg)])
  step = canvas.pixel / 4.0
  s = np.arange(0.0, arc[-1] + step, step, dtype=np.float32)
  w = np.broadcast_to(np.asarray(weights, np.float32), (len(pts),))
  return np.interp(s, arc, pts[:, 0]), np.interp(s, arc, pts[:, 1]), np.interp(s, arc, w) * 0.25


def splat_curves(
  canvas: Canvas,
  curves: list[tuple[np.ndarray, np.ndarray | float]],
  out: np.ndarray | None = None,
) -> np.ndarray:
  """Draws polylines as 1-pixel anti-aliased strokes, added into `out`.

  Each curve is (canonical points [K, 2], weight scalar or one per vertex,
  interpolated along the curve, e.g. to taper vessels). Curves are resampled at
  a quarter pixel and every sample is added bilinearly with a quarter of its
  weight, so a stroke of weight w integrates to about w across its width.
  Blur the result to widen strokes. All curves share one scatter-add.
  """
  size = canvas.size
  if out is None:
    out = np.zeros((size, size), np.float32)
  if not curves:
    return out
  parts = [_resample(canvas, p, w) for p, w in curves]
  u = np.concatenate([p[0] for p in parts])
  v = np.concatenate([p[1] for p in parts])
  w = np.concatenate([p[2] for p in parts])
  row, col = canvas.to_pixel(u, v)
  row, col = row - 0.5, col - 0.5
  r0, c0 = np.floor(row).astype(np.int64), np.floor(col).astype(np.int64)
  fr, fc = row - r0, col - c0
  flat = out.reshape(-1)
  corners = (
    (0, 0, (1 - fr) * (1 - fc)),
    (0, 1, (1 - fr) * fc),
    (1, 0, fr * (1 - fc)),
    (1, 1, fr * fc),
  )
  for dr, dc, wt in corners:
    rr, cc = r0 + dr, c0 + dc
    ok = (rr >= 0) & (rr < size) & (cc >= 0) & (cc < size)
    idx = rr[ok] * size + cc[ok]
    flat += np.bincount(idx, weights=(w * wt)[ok], minlength=size * size).astype(np.float32)
  return out


def splat_polylines(
  canvas: Canvas, points: np.ndarray, weights: np.ndarray, out: np.ndarray | None = None
) -> np.ndarray:
  """Vectorized `splat_curves` for N polylines of K evenly spaced vertices each.

  points [N, K, 2] (canonical), weights [N, K]. Every polyline is sampled at
  the same number of points along its vertex index, enough for a quarter pixel
  on the longest one; weights are scaled by each polyline's own sample spacing
  so strokes integrate to the same density as `splat_curves`.
  """
  size = canvas.size
  if out is None:
    out = np.zeros((size, size), np.float32)
  pts = np.asarray(points, np.float32)
  if pts.ndim != 3 or pts.shape[2] != 2 or pts.shape[1] < 2:
    raise ValueError(f"points must be [N, K>=2, 2], got shape {pts.shape}")
  n, k, _ = pts.shape
  lengths = np.hypot(*np.diff(pts, axis=1).transpose(2, 0, 1)).sum(1)  # [N]
  m = int(np.ceil(lengths.max() / (canvas.pixel / 4.0))) + 1
  t = np.linspace(0.0, k - 1.0, m, dtype=np.float32)
  i0 = np.minimum(t.astype(np.int64), k - 2)
  f = (t - i0)[None, :]
  p = pts[:, i0] * (1 - f)[..., None] + pts[:, i0 + 1] * f[..., None]  # [N, M, 2]
  w = weights[:, i0] * (1 - f) + weights[:, i0 + 1] * f
  w = w * (lengths / (m - 1) / canvas.pixel)[:, None]
  row, col = canvas.to_pixel(p[..., 0].ravel(), p[..., 1].ravel())
  row, col, w = row - 0.5, col - 0.5, w.ravel()
  r0, c0 = np.floor(row).astype(np.int64), np.floor(col).astype(np.int64)
  fr, fc = row - r0, col - c0
  flat = out.reshape(-1)
  corners = (
    (0, 0, (1 - fr) * (1 - fc)),
    (0, 1, (1 - fr) * fc),
    (1, 0, fr * (1 - fc)),
    (1, 1, fr * fc),
  )
  for dr, dc, wt in corners:
    rr, cc = r0 + dr, c0 + dc
    ok = (rr >= 0) & (rr < size) & (cc >= 0) & (cc < size)
    flat += np.bincount(rr[ok] * size + cc[ok], weights=(w * wt)[ok], minlength=size * size).astype(
      np.float32
    )
  return out
