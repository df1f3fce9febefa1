"""Drawing pathologies into a frontal view.

Most findings replace lung air with fluid or tissue: they add
`fill * air_depth * region` to the attenuation map, so a fully filled region
(fill = 1) is as dense as the soft tissue around it and its vessels disappear
(the silhouette sign). Cardiomegaly, mediastinal widening and rib fractures
change the anatomy itself (`anatomy_modifiers`). Sizes are chosen so every
finding stays several pixels wide at 168 x 168.
"""

from __future__ import annotations

import numpy as np

from echo_jax.data.synthetic.anatomy import (
  Anatomy,
  Frontal,
  costophrenic_point,
  hilum,
  lateral_wall,
  lung_sd,
  with_modifiers,
)
from echo_jax.data.synthetic.raster import blur, smooth_noise, soft, splat_curves

HEART_SCALE = {"mild": 1.22, "moderate": 1.38, "severe": 1.55}
# Fluid height above the lateral costophrenic angle at the midline and at the lateral
# wall, relative to the dome top (None = angle only): small blunts the angle,
# moderate hides the hemidiaphragm, large reaches the mid lung.
EFFUSION_LEVEL = {"small": (None, 0.15), "moderate": (0.04, 0.20), "large": (0.30, 0.42)}
PNEUMOTHORAX_SHRINK = {"small": 0.16, "moderate": 0.26, "large": 0.42}
EDEMA_FILL = {"mild": 0.28, "moderate": 0.42, "severe": 0.58}


def anatomy_modifiers(findings: dict, rng: np.random.Generator) -> dict:
  """Anatomy field changes for findings that reshape normal structures."""
  mods: dict = {}
  if "cardiomegaly" in findings:
    mods["heart_scale"] = HEART_SCALE[findings["cardiomegaly"]["severity"]]
  if "enlarged_cardiomediastinum" in findings:
    mods["mediastinum_scale"] = rng.uniform(1.9, 2.3)
  if "fracture" in findings:
    f = findings["fracture"]
    mods["fracture"] = (f["side"], int(f["rib"]) - 1, float(rng.uniform(0.40, 0.52)))
  return mods


def _sides(attrs: dict) -> tuple[str, ...]:
  s = attrs["side"]
  return ("right", "left") if s == "bilateral" else (s,)


def _fill(fr: Frontal, region: np.ndarray, amount: float | np.ndarray) -> None:
  """Replace `amount` of the lung air in `region` by water density; hide vessels there."""
  region = region * fr.lung
  fr.extra += amount * fr.air_depth * region
  fr.markings *= 1 - np.clip(region * amount * 1.2, 0, 1)


def lobe_region(fr: Frontal, side: str, lobe: str, rng: np.random.Generator) -> np.ndarray:
  """Soft mask of one lobe's projection on the PA view, with an irregular margin."""
  v, a = fr.v, fr.a
  px = fr.canvas.pixel
  wobble = 0.04 * smooth_noise(rng, fr.canvas.size, fr.canvas.size / 12)
  if side == "right":
    if lobe == "upper":
      sd = v - (-0.12) + wobble
    elif lobe == "middle":
      sd = np.maximum.reduce([-0.10 - v, v - 0.30, a - 0.50]) + wobble
    else:
      sd = np.maximum(0.06 - v, np.minimum(0.30 - v, 0.50 - a)) + wobble
  else:
    sd = (v - 0.02 + wobble) if lobe == "upper" else (0.08 - v + wobble)
  return soft(sd, 2 * px) * fr.side_mask(side)


def _pick_point(fr: Frontal, region: np.ndarray, rng: np.random.Generator, margin: float) -> tuple:
  """Random canonical point well inside `region` and the lung (margin in lung units)."""
  sd = lung_sd(fr.a, fr.v, fr.side, fr.anat)
  ok = np.flatnonzero(((region > 0.9) & (fr.lung > 0.9) & (sd < -margin)).ravel())
  if ok.size == 0:  # degenerate anatomy: fall back to any lung pixel of the region
    ok = np.flatnonzero(((region > 0.5) & (fr.lung > 0.5)).ravel())
  i = int(rng.choice(ok))
  return float(fr.u.ravel()[i]), float(fr.v.ravel()[i])


def draw_effusion(fr: Frontal, attrs: dict) -> None:
  """Fluid layering in the costophrenic angle with a meniscus climbing laterally."""
  for side in _sides(attrs):
    a_cp, v_cp = costophrenic_point(fr.anat, side)
    above_dome, lateral = EFFUSION_LEVEL[attrs["severity"]]
    medial = 0.0 if above_dome is None else v_cp - fr.anat.dome(side) + above_dome
    top = v_cp - medial - (lateral + medial * 0.3) * np.clip(fr.a / a_cp, 0, 1) ** 3
    region = soft(top - fr.v, 0.02) * fr.side_mask(side)
    _fill(fr, region, 0.97)


def draw_pneumothorax(fr: Frontal, attrs: dict) -> None:
  """Lung retracted toward the hilum: lucent rim without vessels, visceral pleural edge."""
  side = attrs["side"]
  f = PNEUMOTHORAX_SHRINK[attrs["severity"]]
  ha, hv = hilum(fr.anat, side)
  a2 = ha + (fr.a - ha) / (1 - f)
  v2 = hv + (fr.v - hv) / (1 - f)
  sd_collapsed = lung_sd(a2, v2, side, fr.anat) * (1 - f)
  px = fr.canvas.pixel
  collapsed = soft(sd_collapsed, 0.7 * px)
  space = fr.lung * (1 - collapsed) * fr.side_mask(side)
  if attrs["severity"] == "small":  # apical only
    space = space * soft(fr.v - (fr.anat.apex_v + 0.40), 0.03)
  fr.markings *= 1 - space
  fr.extra -= 0.12 * space
  edge = 4 * collapsed * (1 - collapsed) * fr.side_mask(side) * (fr.lung > 0.3)
  if attrs["severity"] == "small":
    edge = edge * soft(fr.v - (fr.anat.apex_v + 0.42), 0.03)
  fr.extra += 0.14 * edge
  fr.extra += 0.25 * f * fr.air_depth * collapsed * fr.lung * fr.side_mask(side)


def draw_consolidation(fr: Frontal, attrs: dict, rng: np.random.Generator) -> None:
  """Dense lobar consolidation; pneumonia adds air bronchograms."""
  region = lobe_region(fr, attrs["side"], attrs["lobe"], rng)
  texture = 0.88 + 0.08 * smooth_noise(rng, fr.canvas.size, fr.canvas.size / 30)
  _fill(fr, region, texture)
  if attrs.get("pneumonia"):
    ha, hv = hilum(fr.anat, attrs["side"])
    sgn = -1.0 if attrs["side"] == "right" else 1.0
    cu, cv = _pick_point(fr, region, rng, 0.05)
    curves = []
    for _ in range(5):
      start = np.array([sgn * ha, hv]) * 0.5 + np.array([cu, cv]) * 0.5 + rng.normal(0, 0.03, 2)
      ang = np.arctan2(cv - hv, cu - sgn * ha) + rng.normal(0, 0.6)
      turn = ang + np.cumsum(rng.normal(0, 0.15, 5))
      steps = np.stack([np.cos(turn), np.sin(turn)], 1)
      pts = start + np.cumsum(steps * 0.045, 0)
      curves.append((np.concatenate([start[None], pts]), np.linspace(1.0, 0.5, 6)))
    lines = blur(splat_curves(fr.canvas, curves), 0.7 * fr.canvas.size / 224)
    fr.extra -= 0.5 * fr.air_depth * np.clip(lines, 0, 1) * region * fr.lung


def draw_opacity(fr: Frontal, attrs: dict, rng: np.random.Generator) -> None:
  """Patchy, ill-defined opacity confined to a lobe."""
  region = lobe_region(fr, attrs["side"], attrs["lobe"], rng)
  patches = np.clip(smooth_noise(rng, fr.canvas.size, fr.canvas.size / 22) + 0.6, 0, 1.6) / 1.6
  _fill(fr, region * blur(patches, 1.5), 0.62)


def draw_lesion(fr: Frontal, attrs: dict, rng: np.random.Generator) -> None:
  """Round nodule or lobulated mass inside the lobe."""
  region = lobe_region(fr, attrs["side"], attrs["lobe"], rng)
  mass = attrs["kind"] == "mass"
  r0 = rng.uniform(0.085, 0.12) if mass else rng.uniform(0.036, 0.05)
  cu, cv = _pick_point(fr, region, rng, r0 * 0.8)
  ang = np.arctan2(fr.v - cv, fr.u - cu)
  lob = 1 + (0.12 * np.sin(3 * ang + rng.uniform(0, 6)) + 0.07 * np.sin(5 * ang)) * mass
  sd = np.hypot(fr.u - cu, fr.v - cv) - r0 * lob
  body = soft(sd, 1.2 * fr.canvas.pixel)
  fr.extra += 0.95 * fr.air_depth * body * np.maximum(fr.lung, 0.3)
  fr.markings *= 1 - body


def draw_edema(fr: Frontal, attrs: dict, rng: np.random.Generator) -> None:
  """Bilateral perihilar haze, indistinct vessels and Kerley B septal lines at the bases."""
  sev = attrs["severity"]
  haze = np.zeros_like(fr.u)
  for side in ("right", "left"):
    ha, hv = hilum(fr.anat, side)
    d = np.hypot(fr.a - ha, (fr.v - hv) * 0.8)
    haze += np.exp(-((d / 0.40) ** 2)) * fr.side_mask(side)
  texture = 1 + 0.15 * smooth_noise(rng, fr.canvas.size, fr.canvas.size / 25)
  fr.extra += EDEMA_FILL[sev] * fr.air_depth * fr.lung * (0.25 + 0.75 * haze) * texture
  fr.markings = blur(fr.markings, 1.3 * fr.canvas.size / 224) * 1.5
  n_lines = {"mild": 4, "moderate": 6, "severe": 8}[sev]
  curves = []
  for side in ("right", "left"):
    sgn = -1.0 if side == "right" else 1.0
    v_lo = costophrenic_point(fr.anat, side)[1] - 0.06
    for v in np.linspace(v_lo - 0.30, v_lo, n_lines) + rng.uniform(-0.01, 0.01, n_lines):
      a_out = float(lateral_wall(np.asarray(v), fr.anat)) - 0.006
      length = rng.uniform(0.05, 0.08)
      curves.append(
        (np.array([[sgn * a_out, v], [sgn * (a_out - length), v + rng.normal(0, 0.005)]]), 1.0)
      )
  lines = blur(splat_curves(fr.canvas, curves), 0.5 * fr.canvas.size / 224)
  fr.extra += 0.55 * np.clip(lines, 0, 1.5) * fr.air_depth * (fr.lung > 0.2)


def draw_atelectasis(fr: Frontal, attrs: dict, rng: np.random.Generator) -> None:
  """Plate-like or linear band(s), nearly horizontal, in the lower or middle lobe."""
  half = 0.026 if attrs["pattern"] == "plate-like" else 0.015
  for side in _sides(attrs):
    region = lobe_region(fr, side, attrs["lobe"], rng)
    cu, cv = _pick_point(fr, region, rng, 0.12)
    length = rng.uniform(0.22, 0.30)
    tilt = rng.uniform(-0.25, 0.25)
    c, s = np.cos(tilt), np.sin(tilt)
    along = ((fr.u - cu) * c + (fr.v - cv) * s) / (0.5 * length)
    # A shallow arc with tapered ends rather than a straight bar.
    perp = (
      -(fr.u - cu) * s + (fr.v - cv) * c - rng.uniform(-0.025, 0.025) * np.clip(along, -1, 1) ** 2
    )
    d = np.hypot(np.maximum(np.abs(along) - 1, 0) * 0.5 * length, perp)
    band = soft(d - half * (1.1 - 0.5 * np.clip(along, -1, 1) ** 2), 1.5 * fr.canvas.pixel)
    fr.extra += 1.0 * fr.air_depth * band * np.maximum(fr.lung, 0.5)
    fr.markings *= 1 - band


def draw_pleural_thickening(fr: Frontal, attrs: dict) -> None:
  """Smooth soft-tissue rim along the lateral chest wall, inside the lung edge."""
  side = attrs["side"]
  depth = lateral_wall(fr.v, fr.anat) - fr.a
  v_cp = costophrenic_point(fr.anat, side)[1]
  # Undulating inner margin: plaque-like bumps, unlike the smooth normal lung edge.
  width = 0.03 + 0.05 * np.sin(fr.v * 14.0 + 1.3) ** 2
  rim = (
    soft(depth - width, fr.canvas.pixel)
    * soft(-0.45 - fr.v, 0.02)
    * soft(fr.v - (v_cp - 0.08), 0.02)
  )
  _fill(fr, rim * fr.side_mask(side), 0.95)


def draw_findings(fr: Frontal, findings: dict, rng: np.random.Generator) -> None:
  """Adds every pathology of `findings` to the frontal layers (devices are separate)."""
  order = (
    ("pleural_thickening", lambda at: draw_pleural_thickening(fr, at)),
    ("edema", lambda at: draw_edema(fr, at, rng)),
    ("consolidation", lambda at: draw_consolidation(fr, at, rng)),
    ("lung_opacity", lambda at: draw_opacity(fr, at, rng)),
    ("lung_lesion", lambda at: draw_lesion(fr, at, rng)),
    ("atelectasis", lambda at: draw_atelectasis(fr, at, rng)),
    ("pleural_effusion", lambda at: draw_effusion(fr, at)),
    ("pneumothorax", lambda at: draw_pneumothorax(fr, at)),
  )
  for kind, draw in order:
    if kind in findings:
      draw(findings[kind])


def anatomy_for(anat: Anatomy, findings: dict, rng: np.random.Generator) -> Anatomy:
  """The patient's anatomy with the shape-changing findings applied."""
  return with_modifiers(anat, **anatomy_modifiers(findings, rng))
