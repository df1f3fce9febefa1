"""What a vision tower can be taught to see in a synthetic study: binary targets per image set.

The vision pretraining stage (`configs/vision.py`) trains the tower on these before the
report is ever seen, the analog of starting from a pretrained medical VLM. Beyond the 14
CheXpert labels, the generator knows what the report will say about each finding (side,
lobe, severity, kind, devices), so the tower is taught those too: a report that says "left
lower lobe" needs a tower that tells left from right.

`targets_from_findings(findings)` gives a float32 vector in `TARGET_NAMES` order; the first
14 entries are the CheXpert labels (so real datasets with CheXpert labels train the same
head, with the attribute entries masked out).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from echo_jax.data.synthetic.findings import DEVICES, LOBES, PATHOLOGIES, RIBS
from echo_jax.data.synthetic.labels import CHEXPERT_LABELS, labels_from_findings

_SIDED = (
  "atelectasis",
  "consolidation",
  "fracture",
  "lung_lesion",
  "lung_opacity",
  "pleural_effusion",
  "pleural_thickening",
  "pneumothorax",
)
_GRADED = ("cardiomegaly", "edema", "pleural_effusion", "pneumothorax")  # 3 levels each
_LOBED = ("atelectasis", "consolidation", "lung_lesion", "lung_opacity")
_LOBE_NAMES = tuple(sorted({lobe for lobes in LOBES.values() for lobe in lobes}))
# Severity words of the generator, ranked (grades for the heart and edema, sizes for pleura).
_LEVEL = {"mild": 0, "small": 0, "moderate": 1, "severe": 2, "large": 2}


def _names() -> tuple[str, ...]:
  names = [f"label/{name}" for name in CHEXPERT_LABELS]
  names += [f"finding/{k}" for k in PATHOLOGIES]
  names += [f"{k}/{side}" for k in _SIDED for side in ("left", "right")]
  names += [f"{k}/at_least_{lvl}" for k in _GRADED for lvl in ("moderate", "severe")]
  names += [f"{k}/{lobe}_lobe" for k in _LOBED for lobe in _LOBE_NAMES]
  names += ["consolidation/pneumonia", "lung_lesion/mass", "atelectasis/plate_like"]
  names += [f"fracture/rib_{r}" for r in RIBS]
  names += [f"device/{d}" for d in DEVICES]
  names += ["device/catheter_right", "device/pacemaker_right"]
  return tuple(names)


TARGET_NAMES: tuple[str, ...] = _names()
NUM_LABELS = len(CHEXPERT_LABELS)  # the first NUM_LABELS targets are the CheXpert labels
_INDEX = {name: i for i, name in enumerate(TARGET_NAMES)}


def targets_from_findings(findings: Mapping[str, Mapping]) -> np.ndarray:
  """float32 [len(TARGET_NAMES)] of 0/1 for a finding set (see findings.py for its format)."""
  out = np.zeros(len(TARGET_NAMES), np.float32)

  def on(name: str) -> None:
    out[_INDEX[name]] = 1.0

  for name, value in labels_from_findings(findings).items():
    if value:
      on(f"label/{name}")
  for kind, attrs in findings.items():
    if kind == "support_devices":
      for device in attrs.get("devices", ()):
        on(f"device/{device}")
      if attrs.get("catheter_side") == "right":
        on("device/catheter_right")
      if attrs.get("pacemaker_side") == "right":
        on("device/pacemaker_right")
      continue
    on(f"finding/{kind}")
    side = attrs.get("side")
    if kind in _SIDED and side in ("left", "right", "bilateral"):
      for s in ("left", "right"):
        if side in (s, "bilateral"):
          on(f"{kind}/{s}")
    level = _LEVEL.get(attrs.get("severity", ""), -1)
    if kind in _GRADED and level >= 1:
      on(f"{kind}/at_least_moderate")
    if kind in _GRADED and level >= 2:
      on(f"{kind}/at_least_severe")
    if kind in _LOBED and attrs.get("lobe") in _LOBE_NAMES:
      on(f"{kind}/{attrs['lobe']}_lobe")
  if findings.get("consolidation", {}).get("pneumonia"):
    on("consolidation/pneumonia")
  if findings.get("lung_lesion", {}).get("kind") == "mass":
    on("lung_lesion/mass")
  if findings.get("atelectasis", {}).get("pattern") == "plate-like":
    on("atelectasis/plate_like")
  if "fracture" in findings and int(findings["fracture"].get("rib", 0)) in RIBS:
    on(f"fracture/rib_{int(findings['fracture']['rib'])}")
  return out


def targets_from_labels(labels: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
  """(targets, mask) from CheXpert labels alone (a real dataset): only the labels are known.

  Uncertain (-1) and missing labels are masked out, as are all attribute targets.
  """
  targets = np.zeros(len(TARGET_NAMES), np.float32)
  mask = np.zeros(len(TARGET_NAMES), np.float32)
  for i, name in enumerate(CHEXPERT_LABELS):
    value = labels.get(name)
    if isinstance(value, int | float) and value in (0, 1):
      targets[i], mask[i] = float(value), 1.0
  return targets, mask
