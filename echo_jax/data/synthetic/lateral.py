"""Lateral view: a simpler drawing of the same patient and findings.

Canonical lateral frame: `u` runs from anterior (negative, image left) to
posterior (positive), `v` runs down, as on a left lateral film. Both lungs
project onto one region; the heart is anterior-inferior, the spine posterior.
Findings that a lateral view shows well are drawn (effusion in the posterior
sulcus, cardiac size, lobar opacities on either side of the fissures, lesions,
edema, atelectasis, devices); pneumothorax, rib fractures and pleural
thickening are left to the frontal view.
"""

from __future__ import annotations

import numpy as np

from echo_jax.data.synthetic.anatomy import Anatomy, vessel_tree
from echo_jax.data.synthetic.devices import draw_devices
from echo_jax.data.synthetic.lesions import EDEMA_FILL
from echo_jax.data.synthetic.raster import (
  blur,
  segment_distance,
  smooth_noise,
  soft,
  splat_polylines,
)

_FISSURE = (
  (0.42, -0.48),
  (-0.42, 0.50),
)  # oblique fissure, posterior-superior to anterior-inferior


def _lung_sd(u: np.ndarray, v: np.ndarray, anat: Anatomy) -> np.ndarray:
  t = np.clip(v / (-anat.apex_v), -1, 0)
  half = 0.54 * np.sqrt(np.clip(1 - t * t, 0, 1))
  diaphragm = anat.dome_v_right + 0.04 + 0.5 * (u + 0.2) ** 2
  return np.maximum.reduce([np.abs(u + 0.05) - half, v - diaphragm, anat.apex_v - v])


def _fissure_side(u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Positive posterior-inferior of the oblique fissure (lower lobe), negative in front."""
  (u0, v0), (u1, v1) = _FISSURE
  return (u - u0) * (v1 - v0) - (v - v0) * (u1 - u0)


def _lobe(u: np.ndarray, v: np.ndarray, attrs: dict, noise: np.ndarray) -> np.ndarray:
  side = _fissure_side(u, v) + 0.04 * noise
  if attrs["lobe"] == "lower":
    return soft(-side, 0.02)
  front = soft(side, 0.02)
  if attrs["lobe"] == "middle":
    return front * soft(-0.05 - v, 0.02)
  return front * soft(v + 0.05, 0.02) if attrs["side"] == "right" else front


def _heart_sd(u: np.ndarray, v: np.ndarray, anat: Anatomy) -> np.ndarray:
  rx = 0.29 * (1 + 0.8 * (anat.heart_scale - 1))
  cu = -0.24 + (rx - 0.29) * 0.6  # enlargement extends posteriorly
  return (np.hypot((u - cu) / rx, (v - anat.heart_cy - 0.02) / 0.27) - 1) * 0.27


def _device_paths(attrs: dict, anat: Anatomy, rng: np.random.Generator) -> list:
  devices = attrs["devices"]
  curves = []
  if "endotracheal_tube" in devices:
    tip = anat.carina_v - 0.13
    curves.append((np.array([[-0.14, -1.2], [0.02, tip]]), 1.2))
  if "enteric_tube" in devices:
    sv = anat.dome_v_left + 0.18
    curves.append(
      (np.array([[-0.05, -1.2], [0.16, -0.5], [0.18, 0.2], [0.05, sv - 0.05], [-0.15, sv]]), 1.4)
    )
  if "central_venous_catheter" in devices:
    curves.append((np.array([[-0.05, -1.2], [-0.12, -0.6], [-0.10, -0.18]]), 1.4))
  if "pacemaker" in devices:
    lead = np.array([[-0.70, -0.55], [-0.35, -0.60], [-0.12, -0.30], [-0.15, anat.heart_cy]])
    curves.append((lead, 1.6))
    curves.append((np.concatenate([lead[:3], [[-0.30, anat.heart_cy + 0.18]]]), 1.6))
  return curves


def render_lateral(
  anat: Anatomy, findings: dict, size: int, rng: np.random.Generator
) -> np.ndarray:
  """Attenuation map of a left lateral view with the study's findings."""
  canvas = anat.canvas(size)
  u, v = canvas.grid
  px = canvas.pixel
  body = soft(np.abs(u - 0.05) - 0.80, 2 * px)
  base = 1.25 * body * (0.85 + 0.15 * np.sqrt(np.clip(1 - ((u - 0.05) / 0.85) ** 2, 0, 1)))
  base *= 1 + 0.04 * smooth_noise(rng, size, size / 10)
  lung = soft(_lung_sd(u, v, anat), 1.5 * px) * (1 - soft(_heart_sd(u, v, anat), 1.5 * px))
  if "enlarged_cardiomediastinum" in findings:  # retrosternal space filled in
    lung *= 1 - 0.7 * soft(np.maximum.reduce([u + 0.15, v, -0.55 - v]), 0.03)
  air = 0.70 * np.ones_like(u)
  atten = base - air * lung
  trachea = segment_distance(u, v, (-0.10, -1.2), (0.06, anat.carina_v))
  atten -= 0.2 * soft(trachea - 0.035, px) * body
  spine = soft(np.abs(u - 0.66) - 0.10, px) * (0.22 + 0.06 * (np.cos(2 * np.pi * v / 0.11) > -0.3))
  sternum = soft(np.maximum(np.abs(u + 0.66) - 0.025, np.abs(v + 0.2) - 0.48), px)
  atten += spine * body + 0.15 * sternum
  ribs = 0.035 * soft(np.abs(((v - 0.35 * u) / 0.14) % 1.0 - 0.5) * 0.14 - 0.025, px)
  atten += ribs * lung
  atten += 0.15 * np.exp(-(((u - 0.02) / 0.10) ** 2 + ((v + 0.05) / 0.12) ** 2))
  phi = np.linspace(-np.pi, np.pi, 14, endpoint=False)
  pts, w = vessel_tree(
    rng, np.tile([0.02, -0.05], (14, 1)), phi, np.full(14, 0.22), np.full(14, 0.16), 2
  )
  markings = blur(splat_polylines(canvas, pts, w), 1.0 * size / 224) * lung

  extra = np.zeros_like(u)
  noise = smooth_noise(rng, size, size / 12)
  fill = lambda region, amount: region * lung * air * amount  # noqa: E731
  for kind in ("consolidation", "lung_opacity"):
    if kind in findings:
      region = _lobe(u, v, findings[kind], noise) * soft(_lung_sd(u, v, anat) + 0.02, 0.02)
      if kind == "lung_opacity":
        region = region * np.clip(smooth_noise(rng, size, size / 22) + 0.6, 0, 1.6) / 1.6
      extra += fill(region, 0.8 if kind == "consolidation" else 0.55)
      markings *= 1 - region
  if "lung_lesion" in findings:
    attrs = findings["lung_lesion"]
    region = _lobe(u, v, attrs, noise) * (lung > 0.95) * (_lung_sd(u, v, anat) < -0.15)
    idx = np.flatnonzero(region.ravel() > 0.9)
    if idx.size:
      i = int(rng.choice(idx))
      r0 = 0.10 if attrs["kind"] == "mass" else 0.042
      extra += 0.95 * air * soft(np.hypot(u - u.ravel()[i], v - v.ravel()[i]) - r0, px)
  if "edema" in findings:
    haze = np.exp(-((np.hypot(u - 0.02, v + 0.05) / 0.45) ** 2))
    extra += fill(0.3 + 0.7 * haze, EDEMA_FILL[findings["edema"]["severity"]])
    markings = blur(markings, 1.3 * size / 224) * 1.5
  if "atelectasis" in findings:
    cu, cv = 0.2 + rng.uniform(-0.1, 0.1), anat.dome_v_right - rng.uniform(0.05, 0.15)
    d = segment_distance(u, v, (cu - 0.14, cv - 0.02), (cu + 0.14, cv + 0.02))
    extra += fill(soft(d - 0.022, 1.5 * px), 1.0)
  if "pleural_effusion" in findings:
    attrs = findings["pleural_effusion"]
    rise = {"small": 0.10, "moderate": 0.28, "large": 0.50}[attrs["severity"]]
    floor = anat.dome_v_right + 0.04 + 0.5 * (0.5 + 0.2) ** 2
    top = floor - rise * (0.25 + 0.75 * np.clip((u + 0.6) / 1.1, 0, 1) ** 2)
    amount = 1.0 if attrs["side"] == "bilateral" else 0.8
    extra += fill(soft(top - v, 0.02), amount)
  if "support_devices" in findings:
    attrs = findings["support_devices"]
    gen = (-0.70, -0.55) if "pacemaker" in attrs["devices"] else None
    extra += draw_devices(canvas, u, v, _device_paths(attrs, anat, rng), gen)
  return atten + markings + extra
