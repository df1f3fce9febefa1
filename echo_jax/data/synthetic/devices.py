"""Support devices (tubes, lines, pacemaker) for frontal and lateral views.

Devices are radiopaque: they are drawn as strokes with a high attenuation per
pixel so they stay visible over the dense mediastinum. Paths are polylines in
the canonical frame of each view, following the anatomy they sit in (trachea,
oesophagus, jugular vein and superior vena cava, right heart).
"""

from __future__ import annotations

import numpy as np

from echo_jax.data.synthetic.anatomy import Anatomy
from echo_jax.data.synthetic.raster import Canvas, blur, soft, splat_curves


def _jitter(rng: np.random.Generator, pts: list, sigma: float = 0.01) -> np.ndarray:
  p = np.asarray(pts, np.float32)
  return p + rng.normal(0, sigma, p.shape).astype(np.float32)


def _smooth_path(pts: np.ndarray, n: int = 40) -> np.ndarray:
  """Quadratic-ish smoothing of a control polyline by repeated corner cutting."""
  for _ in range(3):
    q = 0.75 * pts[:-1] + 0.25 * pts[1:]
    r = 0.25 * pts[:-1] + 0.75 * pts[1:]
    pts = np.concatenate([pts[:1], np.stack([q, r], 1).reshape(-1, 2), pts[-1:]])
  return pts


def frontal_paths(
  attrs: dict, anat: Anatomy, rng: np.random.Generator
) -> list[tuple[np.ndarray, float]]:
  """Stroke polylines (canonical frontal frame) and weights for every device."""
  devices = attrs["devices"]
  curves: list[tuple[np.ndarray, float]] = []
  if "endotracheal_tube" in devices:
    tip = anat.carina_v - rng.uniform(0.10, 0.17)
    for off, w in ((-0.022, 0.9), (0.022, 0.9), (0.0, 0.6)):
      curves.append((np.array([[0.01 + off, -1.2], [0.01 + off, tip]]), w))
  if "enteric_tube" in devices:
    stomach_v = anat.dome_v_left + 0.16
    pts = _jitter(
      rng,
      [
        [-0.01, -1.2],
        [0.02, -0.4],
        [0.04, 0.2],
        [0.10, stomach_v - 0.05],
        [0.30, stomach_v],
        [0.38, stomach_v + 0.06],
        [0.30, stomach_v + 0.09],
      ],
    )
    curves.append((_smooth_path(pts), 1.4))
  if "central_venous_catheter" in devices:
    s = -1.0 if attrs.get("catheter_side", "right") == "right" else 1.0
    pts = [[s * 0.30, -1.2], [s * 0.22, -0.85], [s * 0.12, -0.58]]
    pts += [[-0.02, -0.45]] if s > 0 else []
    pts += [[-0.07, -0.32], [-0.07, -0.16 + rng.uniform(-0.03, 0.03)]]
    curves.append((_smooth_path(_jitter(rng, pts, 0.008)), 1.4))
  if "pacemaker" in devices:
    for lead in pacemaker_leads(attrs, anat, rng):
      curves.append((lead, 1.6))
  return curves


def pacemaker_generator(attrs: dict) -> tuple[float, float]:
  """Canonical (u, v) of the pacemaker generator on the frontal view."""
  return (0.55 if attrs.get("pacemaker_side", "left") == "left" else -0.55), -0.58


def pacemaker_leads(attrs: dict, anat: Anatomy, rng: np.random.Generator) -> list[np.ndarray]:
  gu, gv = pacemaker_generator(attrs)
  s = 1.0 if gu > 0 else -1.0
  entry = [[gu - s * 0.05, gv], [s * 0.20, -0.66], [s * 0.05, -0.52], [-0.05, -0.30]]
  ra = entry + [[-0.12, anat.heart_cy - 0.12], [-0.05, anat.heart_cy - 0.16]]
  rv = entry + [[-0.06, anat.heart_cy - 0.02], [anat.heart_cx + 0.14, anat.heart_cy + 0.14]]
  return [_smooth_path(_jitter(rng, ra, 0.006)), _smooth_path(_jitter(rng, rv, 0.006))]


def draw_devices(
  canvas: Canvas,
  u: np.ndarray,
  v: np.ndarray,
  curves: list,
  generator_uv: tuple | None,
) -> np.ndarray:
  """Attenuation of device strokes (+ pacemaker can) on one view."""
  strokes = blur(splat_curves(canvas, curves), 0.6 * canvas.size / 224) if curves else 0.0
  out = np.zeros_like(u) + strokes
  if generator_uv is not None:
    gu, gv = generator_uv
    sd = np.maximum(np.abs(u - gu) - 0.08, np.abs(v - gv) - 0.055) - 0.02
    can = soft(sd, canvas.pixel)
    out += 2.2 * can + 0.5 * soft(sd + 0.03, canvas.pixel)
  return out


def draw_frontal_devices(fr, attrs: dict, rng: np.random.Generator) -> None:
  """Adds all devices of `attrs` to a frontal view's attenuation."""
  curves = frontal_paths(attrs, fr.anat, rng)
  gen = pacemaker_generator(attrs) if "pacemaker" in attrs["devices"] else None
  fr.extra += draw_devices(fr.canvas, fr.u, fr.v, curves, gen)
