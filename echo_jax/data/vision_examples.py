"""Study -> one fixed-shape example of the vision pretraining stage (images and targets only).

Fields (T = len(targets.TARGET_NAMES), N = max_patches):
  vision        VisionInputs  the study's patches padded to N (batch dim added by batching)
  targets       float32 (T,)  0/1 per target of echo_jax/data/synthetic/targets.py
  target_mask   float32 (T,)  1 where the target is known: all of them for a synthetic study
                              (its finding set is in Study.meta["findings"]); only the 14
                              CheXpert labels for a real dataset that ships labels

A study with neither a finding set nor labels cannot teach the tower anything: ValueError.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from echo_jax.data import images
from echo_jax.data.synthetic import targets as targets_lib
from echo_jax.models.config import VisionConfig
from echo_jax.models.vision_layout import prepare_vision_inputs


def study_targets(study: Any) -> tuple[np.ndarray, np.ndarray]:
  """(targets, target_mask) of a study (see the module docstring)."""
  findings = (study.meta or {}).get("findings")
  if isinstance(findings, dict):
    values = targets_lib.targets_from_findings(findings)
    return values, np.ones_like(values)
  if study.labels:
    return targets_lib.targets_from_labels(study.labels)
  raise ValueError(
    f"study {study.id}: no finding set and no labels, so no vision targets; "
    "the vision stage needs the synthetic benchmark or a dataset with CheXpert labels"
  )


@dataclasses.dataclass(frozen=True)
class VisionExamples:
  """The `transform` of the vision stage (picklable for Grain workers)."""

  vision_config: VisionConfig
  image_config: images.ImageConfig
  max_patches: int

  def __call__(self, study: Any) -> dict[str, Any]:
    patches, grid_thw = images.load_study_images(study.image_paths, self.image_config, study.images)
    if len(patches) > self.max_patches:
      raise ValueError(
        f"study {study.id}: its images have {len(patches)} patches > "
        f"data.max_patches={self.max_patches}; raise data.max_patches or lower data.max_pixels"
      )
    vision = prepare_vision_inputs([patches], [grid_thw], self.vision_config, self.max_patches)
    values, mask = study_targets(study)
    return {
      "vision": jax.tree.map(lambda x: x[0], vision),
      "targets": values,
      "target_mask": mask,
    }
