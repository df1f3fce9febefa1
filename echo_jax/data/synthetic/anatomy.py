"""Normal frontal (PA) chest anatomy: geometry, patient variation and rendering.

The image is built as an X-ray *attenuation* map A (soft tissue ~1 at the
thickest part of the body, air-filled lung subtracts) and exposed as
I = 1 - exp(-k A), so overlapping structures add the way they do on film.
Findings (see lesions.py) add to the same map before exposure, which keeps
their appearance physically consistent (an effusion replaces lung air with
fluid, a pneumothorax removes lung markings, and so on).

Geometry helpers (`lung_sd`, `lateral_wall`, `dome_v`, `costophrenic_point`,
`hilum`) are plain functions of canonical coordinates so findings and tests can
locate regions without rendering. Side-local coordinate `a` is the distance
from the midline (|u|); side "right" is the patient's right (image left).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from echo_jax.data.synthetic.raster import (
  Canvas,
  blur,
  segment_distance,
  smooth_noise,
  soft,
  splat_polylines,
)

SIDES = ("right", "left")
_APEX_CENTRE = 0.30  # side-local `a` of the lung apex dome
_WAIST_V = 0.30  # `v` where the lateral lung wall is widest


@dataclass(frozen=True)
class Anatomy:
  """One patient's body geometry and exposure, in canonical units.

  The last group of fields are pathology modifiers set by findings (heart and
  mediastinal enlargement, a broken rib); a normal study keeps the defaults.
  """

  scale: float = 1.0
  angle: float = 0.0
  shift_x: float = 0.0
  shift_y: float = 0.0
  body_halfwidth: float = 0.95
  lung_halfwidth: float = 0.76
  apex_v: float = -0.76
  dome_v_right: float = 0.42
  dome_v_left: float = 0.48
  heart_cx: float = 0.08
  heart_cy: float = 0.30
  heart_rx: float = 0.31
  heart_ry: float = 0.28
  heart_tilt: float = 0.25
  mediastinum_halfwidth: float = 0.085
  carina_v: float = -0.22
  rib_v0: float = -0.80
  rib_spacing: float = 0.135
  exposure: float = 1.25
  gamma: float = 1.0
  noise: float = 0.012
  # Pathology modifiers.
  heart_scale: float = 1.0
  mediastinum_scale: float = 1.0
  fracture: tuple[str, int, float] | None = None  # (side, rib index 0-based, break `a`)

  def canvas(self, size: int) -> Canvas:
    return Canvas(size, self.scale, self.angle, self.shift_x, self.shift_y)

  def dome(self, side: str) -> float:
    return self.dome_v_right if side == "right" else self.dome_v_left

  @property
  def heart_halfwidth(self) -> float:
    """Horizontal half-extent of the cardiac silhouette (tilt included)."""
    rx, ry = self.heart_rx * self.heart_scale, self.heart_ry * (1 + 0.25 * (self.heart_scale - 1))
    c, s = np.cos(self.heart_tilt), np.sin(self.heart_tilt)
    return float(np.sqrt((rx * c) ** 2 + (ry * s) ** 2))

  @property
  def cardiothoracic_ratio(self) -> float:
    return self.heart_halfwidth / self.lung_halfwidth


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
  """Random patient: body size, pose, heart, diaphragm and exposure."""
  u = rng.uniform
  dome_r = u(0.36, 0.46)
  return Anatomy(
    scale=u(0.93, 1.05),
    angle=u(-0.05, 0.05),
    shift_x=u(-0.04, 0.04),
    shift_y=u(-0.02, 0.05),
    body_halfwidth=u(0.90, 1.0),
    lung_halfwidth=u(0.72, 0.79),
    apex_v=u(-0.80, -0.72),
    dome_v_right=dome_r,
    dome_v_left=dome_r + u(0.02, 0.08),
    heart_cx=u(0.06, 0.11),
    heart_cy=u(0.27, 0.32),
    heart_rx=u(0.28, 0.32),
    heart_ry=u(0.25, 0.29),
    heart_tilt=u(0.15, 0.35),
    mediastinum_halfwidth=u(0.075, 0.095),
    carina_v=u(-0.26, -0.18),
    rib_v0=u(-0.83, -0.77),
    rib_spacing=u(0.128, 0.142),
    exposure=u(1.05, 1.45),
    gamma=u(0.85, 1.15),
    noise=u(0.006, 0.018),
  )


# --- geometry in side-local coordinates (a = distance from midline) ---------


def lateral_wall(v: np.ndarray, anat: Anatomy) -> np.ndarray:
  """`a` of the lateral lung border at height v (rounded apex, widest at the waist)."""
  t = (v - _WAIST_V) / (_WAIST_V - anat.apex_v)
  upper = _APEX_CENTRE + (anat.lung_halfwidth - _APEX_CENTRE) * np.sqrt(np.clip(1 - t * t, 0, 1))
  lower = anat.lung_halfwidth - 0.10 * (v - _WAIST_V)
  return np.where(v < _WAIST_V, upper, lower)


def _medial_wall(v: np.ndarray, anat: Anatomy) -> np.ndarray:
  t = (v - _WAIST_V) / (_WAIST_V - anat.apex_v)
  return _APEX_CENTRE - (_APEX_CENTRE - 0.04) * np.clip(1 - t * t, 0, 1) ** 0.25


def dome_v(a: np.ndarray, side: str | np.ndarray, anat: Anatomy) -> np.ndarray:
  """`v` of the hemidiaphragm surface at distance `a` from the midline."""
  top = np.where(np.asarray(side) == "right", anat.dome_v_right, anat.dome_v_left)
  return top + 1.5 * (a - 0.36) ** 2


def lung_sd(a: np.ndarray, v: np.ndarray, side: str | np.ndarray, anat: Anatomy) -> np.ndarray:
  """Approximate signed distance to the lung outline (negative inside), heart ignored."""
  return np.maximum.reduce(
    [
      a - lateral_wall(v, anat),
      _medial_wall(v, anat) - a,
      v - dome_v(a, side, anat),
      anat.apex_v - v,
    ]
  )


def costophrenic_point(anat: Anatomy, side: str) -> tuple[float, float]:
  """(a, v) of the lateral costophrenic angle: where the wall meets the diaphragm."""
  v = np.linspace(0.3, 0.95, 400)
  gap = dome_v(lateral_wall(v, anat), side, anat) - v
  i = int(np.argmax(gap <= 0))
  return float(lateral_wall(v[i], anat)), float(v[i])


def hilum(anat: Anatomy, side: str) -> tuple[float, float]:
  return (0.21, -0.02) if side == "right" else (0.23, -0.04)


def heart_sd(u: np.ndarray, v: np.ndarray, anat: Anatomy) -> np.ndarray:
  """Signed distance-like field of the cardiac silhouette (tilted ellipse)."""
  rx = anat.heart_rx * anat.heart_scale
  ry = anat.heart_ry * (1 + 0.25 * (anat.heart_scale - 1))
  cx = anat.heart_cx + 0.35 * (rx - anat.heart_rx)  # enlargement grows mostly to the left
  c, s = np.cos(anat.heart_tilt), np.sin(anat.heart_tilt)
  du, dv = u - cx, v - anat.heart_cy
  x, y = c * du + s * dv, -s * du + c * dv
  ellipse = (np.sqrt((x / rx) ** 2 + (y / ry) ** 2) - 1.0) * min(rx, ry)
  # Below its centre the silhouette drops straight onto the diaphragm.
  skirt = np.maximum(np.abs(du + 0.1 * rx) - 0.88 * rx, anat.heart_cy - v)
  return np.minimum(ellipse, skirt)


def mediastinum_sd(u: np.ndarray, v: np.ndarray, anat: Anatomy) -> np.ndarray:
  """Upper mediastinum (a column above the heart) with the aortic knob on the left."""
  half = anat.mediastinum_halfwidth * anat.mediastinum_scale
  knob = 0.06 * np.exp(-(((v + 0.20) / 0.07) ** 2)) * (u > 0)
  width = half + knob + 0.02 * np.clip(v + 0.1, 0, None)
  return np.maximum(np.abs(u - 0.01) - width, v - (anat.heart_cy + 0.05))


# --- rendering --------------------------------------------------------------


@dataclass
class Frontal:
  """Attenuation layers of one frontal view; findings edit them before `expose`."""

  canvas: Canvas
  anat: Anatomy
  u: np.ndarray
  v: np.ndarray
  a: np.ndarray  # |u|
  side: np.ndarray  # "right"/"left" per pixel
  lung: np.ndarray  # soft lung-air mask (heart and mediastinum removed)
  air_depth: np.ndarray  # attenuation removed by fully aerated lung at each pixel
  base: np.ndarray  # body, bones, airways
  markings: np.ndarray  # pulmonary vessels (removable, e.g. by a pneumothorax)
  extra: np.ndarray  # findings

  def side_mask(self, side: str) -> np.ndarray:
    return (self.side == side).astype(np.float32)


def vessel_tree(
  rng: np.random.Generator,
  starts: np.ndarray,
  angles: np.ndarray,
  lengths: np.ndarray,
  weights: np.ndarray,
  depth: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
  """Branching vessel polylines, all trees grown together one generation at a time.

  starts [T, 2], angles/lengths/weights [T] describe the trunks. Each segment
  is a gently curving polyline of 7 vertices; each spawns two thinner, shorter
  daughters from its distal half. Returns points [N, 7, 2] and weights [N, 7].
  """
  n = 6
  all_pts, all_w = [], []
  for level in range(depth + 1):
    t = len(starts)
    ang = angles[:, None] + np.cumsum(rng.normal(0, 0.07, (t, n)), 1)
    steps = np.stack([np.cos(ang), np.sin(ang)], -1) * (lengths / n)[:, None, None]
    pts = np.concatenate([starts[:, None], starts[:, None] + np.cumsum(steps, 1)], 1)
    all_pts.append(pts)
    all_w.append(weights[:, None] * np.linspace(1.0, 0.6, n + 1)[None])
    if level == depth:
      break
    k = rng.integers(n // 2, n + 1, (2, t))
    rows = np.arange(t)
    sign = np.array([-1.0, 1.0])[:, None]
    starts = pts[rows, k].reshape(-1, 2)
    angles = (ang[rows, k - 1] + sign * rng.uniform(0.25, 0.55, (2, t))).ravel()
    lengths = (lengths * rng.uniform(0.55, 0.75, (2, t))).ravel()
    weights = np.tile(weights * 0.62, 2)
  return np.concatenate(all_pts), np.concatenate(all_w)


def _vessels(canvas: Canvas, anat: Anatomy, rng: np.random.Generator) -> np.ndarray:
  """Branching pulmonary vessels from both hila, tapering toward the periphery."""
  pts_all, w_all = [], []
  r = np.linspace(0, 1.2, 60)
  for side in SIDES:
    sgn = -1.0 if side == "right" else 1.0
    ha, hv = hilum(anat, side)
    phi = np.linspace(-2.1, 1.3, 11) + rng.uniform(-0.1, 0.1, 11)
    inside = (
      lung_sd(ha + r[None] * np.cos(phi)[:, None], hv + r[None] * np.sin(phi)[:, None], side, anat)
      < -0.02
    )
    first_out = np.argmin(inside[:, 1:], axis=1)
    reach = np.where(inside[:, 1:].all(1), 1.2, r[first_out])
    starts = (
      np.array([ha, hv])
      + rng.normal(0, 0.025, (11, 2))
      + 0.04 * np.stack([np.cos(phi), np.sin(phi)], 1)
    )
    pts, w = vessel_tree(rng, starts, phi, reach * 0.48, np.full(11, 0.36), 2)
    pts[..., 0] *= sgn
    pts_all.append(pts)
    w_all.append(w)
  acc = splat_polylines(canvas, np.concatenate(pts_all), np.concatenate(w_all))
  return blur(acc, 1.0 * canvas.size / 224)


def _ribs(u: np.ndarray, v: np.ndarray, a: np.ndarray, anat: Anatomy, pixel: float) -> np.ndarray:
  """Posterior ribs (strong) and anterior ribs (faint), with an optional fracture."""
  sp = anat.rib_spacing
  w = (v - anat.rib_v0 + 0.05 * a - 0.60 * a * a) / sp
  k = np.round(w)
  reach = soft(a - lateral_wall(v, anat) - 0.06, 2 * pixel) * soft(0.05 - a, 2 * pixel)

  def rib_band(frac: np.ndarray, k: np.ndarray) -> np.ndarray:
    half = 0.022 + 0.0015 * k
    band = soft(frac - half, pixel)
    core = soft(frac - 0.55 * half, pixel)
    return 0.09 * band + 0.10 * (band - core)

  post = rib_band(np.abs(w - k) * sp, k) * (k >= 0) * (k <= 9) * reach
  if anat.fracture is not None:
    side, rib, a_break = anat.fracture
    on_side = (u < 0) if side == "right" else (u > 0)
    # The lateral fragment is displaced downward by half a rib space and angulated
    # (displacement grows away from the break), with a lucent gap at the break.
    lateral = on_side & (a > a_break)
    post = np.where(lateral & (k == rib), 0.0, post)
    shift = 0.5 + 1.5 * np.clip(a - a_break, 0, None)
    moved = rib_band(np.abs(w - rib - shift) * sp, np.full_like(w, rib)) * reach
    post = post + moved * lateral * (np.abs(w - rib - shift) < 0.5)
    gap = np.exp(-(((a - a_break) / (2.0 * pixel + 0.008)) ** 2)) * on_side
    post = post * (1 - 0.95 * gap * (np.abs(w - rib - 0.25) < 0.9))
  w2 = (v - anat.rib_v0 - 0.05 - 0.45 * (0.78 - a)) / (sp * 1.05)
  k2 = np.round(w2)
  band2 = soft(np.abs(w2 - k2) * sp - 0.022, pixel)
  ant = 0.045 * band2 * (k2 >= 1) * (k2 <= 6) * soft(0.28 - a, 3 * pixel) * reach
  return post + ant


def _clavicles(a: np.ndarray, v: np.ndarray, pixel: float) -> np.ndarray:
  x = a - 0.08
  centre = -0.53 - 0.55 * x + 0.30 * x * x
  d = np.abs(v - centre)
  band = soft(d - 0.034, pixel) * soft(-x, pixel) * soft(a - 0.74, 2 * pixel)
  return 0.20 * band + 0.08 * (band - soft(d - 0.018, pixel) * band)


def _spine(u: np.ndarray, v: np.ndarray, pixel: float) -> np.ndarray:
  col = soft(np.abs(u) - 0.062, 1.5 * pixel)
  disc = 0.5 + 0.5 * np.cos(2 * np.pi * (v + 1.0) / 0.105)
  pedicles = soft(
    np.hypot((np.abs(u) - 0.045) / 0.016, ((v + 1.0) % 0.105 - 0.03) / 0.022) - 1, 0.08
  )
  return col * (0.10 + 0.05 * (disc > 0.15) * disc) + 0.04 * pedicles * col


def render_frontal(anat: Anatomy, size: int, rng: np.random.Generator) -> Frontal:
  """Normal PA chest radiograph as attenuation layers (no findings yet)."""
  canvas = anat.canvas(size)
  u, v = canvas.grid
  px = canvas.pixel
  a = np.abs(u)
  side = np.where(u < 0, "right", "left")

  # Body: elliptical cross-section, flaring into the shoulders at the top edge.
  wb = anat.body_halfwidth
  width = wb + 0.35 * np.clip(-0.70 - v, 0, None)
  body = soft(a - width, 1.5 * px)
  thick = np.sqrt(np.clip(1 - (a / (width + 0.06)) ** 2, 0, 1)) ** 0.8
  base = 1.05 * thick * body * (1 + 0.04 * smooth_noise(rng, size, size / 10))
  humerus = soft(np.hypot(a - wb - 0.06, v + 0.98) - 0.16, 1.5 * px)
  base = base + 0.25 * humerus * body

  # Lungs minus heart and mediastinum.
  lung = soft(lung_sd(a, v, side, anat), 1.2 * px)
  heart = soft(heart_sd(u, v, anat), 1.2 * px)
  mediast = soft(mediastinum_sd(u, v, anat), 1.2 * px)
  lung = lung * (1 - heart) * (1 - mediast)
  air_depth = 0.72 * (0.55 + 0.45 * thick)
  base = base - air_depth * lung

  # Airways: trachea to the carina, then the main bronchi toward the hila.
  tx = 0.01
  trachea = soft(np.maximum(np.abs(u - tx) - 0.034, v - anat.carina_v), 1.2 * px)
  for sd_side in SIDES:
    ha, hv = hilum(anat, sd_side)
    end = (-ha * 0.8 if sd_side == "right" else ha * 0.8, hv)
    d = segment_distance(u, v, (tx, anat.carina_v), end)
    trachea = np.maximum(trachea, soft(d - 0.022, 1.2 * px))
  base = base - 0.22 * trachea * body

  # Hila and gastric bubble.
  for sd_side in SIDES:
    ha, hv = hilum(anat, sd_side)
    uu = -ha if sd_side == "right" else ha
    base = base + 0.18 * np.exp(-(((u - uu) / 0.07) ** 2 + ((v - hv) / 0.11) ** 2))
  bubble_v = anat.dome_v_left + 0.13
  base = base - 0.25 * soft(np.hypot((u - 0.36) / 0.11, (v - bubble_v) / 0.06) - 1, 0.15)

  base = base + _ribs(u, v, a, anat, px) * body + _clavicles(a, v, px) + _spine(u, v, px) * body
  # Vessels plus a fine interstitial texture that reaches the pleura, so a
  # pneumothorax (which removes markings) shows as a smooth, empty rim.
  texture = 0.035 * np.clip(smooth_noise(rng, size, 1.2 * size / 224) + 0.3, 0, None)
  markings = (_vessels(canvas, anat, rng) + texture) * lung
  return Frontal(
    canvas=canvas,
    anat=anat,
    u=u,
    v=v,
    a=a,
    side=side,
    lung=lung,
    air_depth=air_depth,
    base=base,
    markings=markings,
    extra=np.zeros_like(base),
  )


def expose(atten: np.ndarray, anat: Anatomy, rng: np.random.Generator) -> np.ndarray:
  """Attenuation -> 8-bit film: exposure curve, gamma, detector blur and noise."""
  size = atten.shape[0]
  img = 1.0 - np.exp(-anat.exposure * np.clip(atten, 0, None))
  img = img / (1.0 - np.exp(-anat.exposure * 1.7))
  img = np.clip(img, 0, 1) ** anat.gamma
  img = blur(img, 0.5 * size / 224)
  img = img + rng.normal(0, anat.noise, img.shape).astype(np.float32)
  return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def with_modifiers(anat: Anatomy, **changes) -> Anatomy:
  """Copy of `anat` with pathology modifiers (heart_scale, fracture, ...) applied."""
  return replace(anat, **changes)
