"""Sampling a study's findings: which pathologies and devices, with attributes.

A finding set is a JSON-friendly dict `{type: attributes}` with at most one
entry per type, e.g.

  {"pleural_effusion": {"side": "right", "severity": "small"},
   "consolidation": {"side": "left", "lobe": "lower", "pneumonia": True},
   "support_devices": {"devices": ["endotracheal_tube", "enteric_tube"]}}

The same dict drives the pixels (lesions.py, devices.py, lateral.py), the
report (reports.py) and the labels (labels.py), so they cannot disagree.
"""

from __future__ import annotations

import numpy as np

PATHOLOGIES: tuple[str, ...] = (
  "atelectasis",
  "cardiomegaly",
  "consolidation",
  "edema",
  "enlarged_cardiomediastinum",
  "fracture",
  "lung_lesion",
  "lung_opacity",
  "pleural_effusion",
  "pleural_thickening",
  "pneumothorax",
)
DEVICES: tuple[str, ...] = (
  "endotracheal_tube",
  "enteric_tube",
  "central_venous_catheter",
  "pacemaker",
)
GRADES = ("mild", "moderate", "severe")  # cardiomegaly, edema
SIZES = ("small", "moderate", "large")  # effusion, pneumothorax
LOBES = {"right": ("upper", "middle", "lower"), "left": ("upper", "lower")}
RIBS = (4, 5, 6, 7, 8, 9)  # posterior ribs whose lateral arc projects over the lung

# Relative frequency of each pathology among abnormal studies.
_WEIGHTS = {
  "atelectasis": 1.0,
  "cardiomegaly": 1.2,
  "consolidation": 1.1,
  "edema": 0.8,
  "enlarged_cardiomediastinum": 0.5,
  "fracture": 0.6,
  "lung_lesion": 0.9,
  "lung_opacity": 1.0,
  "pleural_effusion": 1.4,
  "pleural_thickening": 0.5,
  "pneumothorax": 0.8,
}
P_NORMAL = 0.3  # share of studies without pathology
P_DEVICES = 0.3


def _side(rng: np.random.Generator, bilateral: float = 0.0) -> str:
  r = rng.random()
  if r < bilateral:
    return "bilateral"
  return "right" if rng.random() < 0.5 else "left"


def _lobe_site(rng: np.random.Generator) -> tuple[str, str]:
  side = _side(rng)
  return side, str(rng.choice(LOBES[side]))


def sample_attributes(kind: str, rng: np.random.Generator) -> dict:
  """Random attributes for one pathology or for the device set."""
  if kind in ("cardiomegaly", "edema"):
    return {"severity": str(rng.choice(GRADES))}
  if kind == "enlarged_cardiomediastinum":
    return {}
  if kind == "pleural_effusion":
    return {"side": _side(rng, bilateral=0.3), "severity": str(rng.choice(SIZES))}
  if kind == "pneumothorax":
    return {"side": _side(rng), "severity": str(rng.choice(SIZES))}
  if kind == "consolidation":
    side, lobe = _lobe_site(rng)
    return {"side": side, "lobe": lobe, "pneumonia": bool(rng.random() < 0.5)}
  if kind == "lung_opacity":
    side, lobe = _lobe_site(rng)
    return {"side": side, "lobe": lobe}
  if kind == "lung_lesion":
    side, lobe = _lobe_site(rng)
    return {"side": side, "lobe": lobe, "kind": "mass" if rng.random() < 0.35 else "nodule"}
  if kind == "atelectasis":
    side = _side(rng, bilateral=0.25)
    lobe = "middle" if side == "right" and rng.random() < 0.3 else "lower"
    return {"side": side, "lobe": lobe, "pattern": "plate-like" if rng.random() < 0.6 else "linear"}
  if kind == "fracture":
    return {"side": _side(rng), "rib": int(rng.choice(RIBS))}
  if kind == "pleural_thickening":
    return {"side": _side(rng)}
  if kind == "support_devices":
    n = 1 if rng.random() < 0.6 else 2
    chosen = set(rng.choice(DEVICES, size=n, replace=False).tolist())
    attrs: dict = {"devices": [d for d in DEVICES if d in chosen]}
    if "central_venous_catheter" in chosen:
      attrs["catheter_side"] = _side(rng)
    if "pacemaker" in chosen:
      attrs["pacemaker_side"] = "left" if rng.random() < 0.85 else "right"
    return attrs
  raise ValueError(f"unknown finding type {kind!r}")


def _sides(attrs: dict) -> set[str]:
  s = attrs.get("side")
  return {"right", "left"} if s == "bilateral" else ({s} if s else set())


def _conflicts(kind: str, attrs: dict, chosen: dict) -> bool:
  """Combinations that would overlap on the image or read as contradictory."""
  pleural = ("pleural_effusion", "pneumothorax", "pleural_thickening")
  if kind in pleural:
    for other in pleural:
      if other in chosen and _sides(attrs) & _sides(chosen[other]):
        return True
  sited = ("consolidation", "lung_opacity", "lung_lesion", "atelectasis")
  if kind in sited:
    here = {(s, attrs["lobe"]) for s in _sides(attrs)}
    for other in sited:
      if other in chosen and here & {(s, chosen[other]["lobe"]) for s in _sides(chosen[other])}:
        return True
  return False


def sample_findings(rng: np.random.Generator) -> dict[str, dict]:
  """A random finding set: 0-3 pathologies without conflicts, devices in ~30% of studies."""
  findings: dict[str, dict] = {}
  if rng.random() >= P_NORMAL:
    n = int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15]))
    kinds = list(_WEIGHTS)
    p = np.array([_WEIGHTS[k] for k in kinds])
    order = rng.choice(len(kinds), size=len(kinds), replace=False, p=p / p.sum())
    for i in order:
      if len(findings) == n:
        break
      kind = kinds[int(i)]
      for _ in range(4):  # a few redraws of the attributes before skipping the type
        attrs = sample_attributes(kind, rng)
        if not _conflicts(kind, attrs, findings):
          findings[kind] = attrs
          break
  if rng.random() < P_DEVICES:
    findings["support_devices"] = sample_attributes("support_devices", rng)
  return findings


def validate_findings(findings: dict) -> None:
  """Raises ValueError when a finding set names unknown types or attribute values."""
  for kind, attrs in findings.items():
    if kind not in PATHOLOGIES and kind != "support_devices":
      raise ValueError(
        f"unknown finding type {kind!r}; expected one of {PATHOLOGIES} or support_devices"
      )
    if not isinstance(attrs, dict):
      raise ValueError(f"attributes of {kind!r} must be a dict, got {type(attrs).__name__}")
    side = attrs.get("side")
    if side is not None and side not in ("right", "left", "bilateral"):
      raise ValueError(f"{kind}: side must be right, left or bilateral, got {side!r}")
    lobe = attrs.get("lobe")
    if lobe is not None and side in LOBES and lobe not in LOBES[side]:
      raise ValueError(f"{kind}: the {side} lung has lobes {LOBES[side]}, got {lobe!r}")
    sev = attrs.get("severity")
    if sev is not None and sev not in GRADES + SIZES:
      raise ValueError(f"{kind}: severity {sev!r} is not one of {GRADES + SIZES}")
    for d in attrs.get("devices", ()):
      if d not in DEVICES:
        raise ValueError(f"unknown device {d!r}; expected one of {DEVICES}")
