"""The 14 CheXpert observations and how synthetic findings map onto them.

Values are 1 (positive) or 0 (negative). `No Finding` is 1 exactly when no
pathology is present (support devices alone do not count, as in CheXpert).
Each report statement mentions exactly the observations its finding maps to
here, so a mention + negation labeler reading the report recovers these labels.
"""

from __future__ import annotations

from collections.abc import Mapping

CHEXPERT_LABELS: tuple[str, ...] = (
  "Atelectasis",
  "Cardiomegaly",
  "Consolidation",
  "Edema",
  "Enlarged Cardiomediastinum",
  "Fracture",
  "Lung Lesion",
  "Lung Opacity",
  "No Finding",
  "Pleural Effusion",
  "Pleural Other",
  "Pneumonia",
  "Pneumothorax",
  "Support Devices",
)

# Finding type -> the observations a positive statement about it mentions.
FINDING_LABELS: dict[str, tuple[str, ...]] = {
  "atelectasis": ("Atelectasis",),
  "cardiomegaly": ("Cardiomegaly",),
  "consolidation": ("Consolidation",),  # + Pneumonia when attributes say so
  "edema": ("Edema",),
  "enlarged_cardiomediastinum": ("Enlarged Cardiomediastinum",),
  "fracture": ("Fracture",),
  "lung_lesion": ("Lung Lesion",),
  "lung_opacity": ("Lung Opacity",),
  "pleural_effusion": ("Pleural Effusion",),
  "pleural_thickening": ("Pleural Other",),
  "pneumothorax": ("Pneumothorax",),
  "support_devices": ("Support Devices",),
}


def finding_labels(kind: str, attrs: Mapping) -> tuple[str, ...]:
  """Observations that a positive finding of type `kind` with `attrs` asserts."""
  if kind not in FINDING_LABELS:
    raise ValueError(f"unknown finding type {kind!r}; expected one of {sorted(FINDING_LABELS)}")
  extra = ("Pneumonia",) if kind == "consolidation" and attrs.get("pneumonia") else ()
  return FINDING_LABELS[kind] + extra


def labels_from_findings(findings: Mapping[str, Mapping]) -> dict[str, int]:
  """The 14 CheXpert labels (name -> 0/1, in CHEXPERT_LABELS order) of a finding set."""
  labels = dict.fromkeys(CHEXPERT_LABELS, 0)
  for kind, attrs in findings.items():
    for name in finding_labels(kind, attrs):
      labels[name] = 1
  pathology = any(v for k, v in labels.items() if k not in ("No Finding", "Support Devices"))
  labels["No Finding"] = 0 if pathology else 1
  return labels
