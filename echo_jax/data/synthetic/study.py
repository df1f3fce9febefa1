"""One synthetic study: sampling, rendering, report and labels, reproducible per (seed, index).

Each study draws from its own random streams, seeded by (seed, index, purpose),
so study k is identical whatever the total number of studies, the worker
count or the order of generation. Splits are assigned in blocks of ten
consecutive indices (8 train, 1 val, 1 test, in a seeded order), so every full
block contributes exactly 80/10/10.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from echo_jax.data.synthetic.anatomy import Anatomy, expose, render_frontal, sample_anatomy
from echo_jax.data.synthetic.devices import draw_frontal_devices
from echo_jax.data.synthetic.findings import sample_findings, validate_findings
from echo_jax.data.synthetic.labels import labels_from_findings
from echo_jax.data.synthetic.lateral import render_lateral
from echo_jax.data.synthetic.lesions import anatomy_for, draw_findings
from echo_jax.data.synthetic.reports import format_report, render_report

SPLITS = ("train", "val", "test")
MIN_IMAGE_SIZE = 64

# Purposes of the per-study random streams.
_SPEC, _TEXT, _PIXELS, _SPLIT = 0, 1, 2, 3


@dataclass(frozen=True)
class SyntheticStudy:
  """A generated study. `images` are uint8 [size, size]: frontal, then lateral if requested."""

  id: str
  index: int
  split: str
  report: str
  findings_text: str
  impression_text: str
  labels: dict[str, int]
  attributes: dict
  images: tuple[np.ndarray, ...]
  views: tuple[str, ...]


def study_id(index: int) -> str:
  return f"synth{index:07d}"


def split_of(index: int, seed: int) -> str:
  """train/val/test for a study index: exactly 8/1/1 in each block of ten indices."""
  order = np.random.default_rng([seed, index // 10, _SPLIT]).permutation(10)
  slot = int(order[index % 10])
  return "train" if slot < 8 else ("val" if slot == 8 else "test")


def render_views(
  anat: Anatomy, findings: dict, image_size: int, lateral: bool, rng: np.random.Generator
) -> list[np.ndarray]:
  """Frontal (and lateral) 8-bit images of `findings` on the patient `anat`.

  `anat` is the normal anatomy; shape-changing findings are applied here, so a
  caller can render the same patient with and without a finding.
  """
  # One stream per stage, so adding a finding leaves the patient's normal
  # structures (vessels, texture, detector noise) pixel-identical.
  seeds = rng.integers(0, 2**63 - 1, 6)
  shape_rng, base_rng, find_rng, dev_rng, noise_rng, lat_rng = (
    np.random.default_rng(s) for s in seeds
  )
  anat = anatomy_for(anat, findings, shape_rng)
  fr = render_frontal(anat, image_size, base_rng)
  draw_findings(fr, findings, find_rng)
  if "support_devices" in findings:
    draw_frontal_devices(fr, findings["support_devices"], dev_rng)
  images = [expose(fr.base + fr.markings + fr.extra, anat, noise_rng)]
  if lateral:
    images.append(expose(render_lateral(anat, findings, image_size, lat_rng), anat, noise_rng))
  return images


def generate_study(
  index: int,
  seed: int,
  lateral: bool = False,
  image_size: int = 224,
  findings: dict | None = None,
  render: bool = True,
) -> SyntheticStudy:
  """Study number `index` of the benchmark with `seed`.

  `findings` overrides the sampled finding set (same patient and text stream),
  e.g. to render a chosen pathology; see findings.py for its format.
  `render=False` skips the pixels (images is empty); text and labels are the
  same either way because pixels draw from their own random stream.
  """
  if index < 0:
    raise ValueError(f"index must be >= 0, got {index}")
  if image_size < MIN_IMAGE_SIZE:
    raise ValueError(
      f"image_size must be >= {MIN_IMAGE_SIZE} so findings stay visible, got {image_size}"
    )
  spec_rng = np.random.default_rng([seed, index, _SPEC])
  anat = sample_anatomy(spec_rng)
  sampled = sample_findings(spec_rng)
  if findings is None:
    findings = sampled
  validate_findings(findings)
  findings_text, impression_text = render_report(
    findings, np.random.default_rng([seed, index, _TEXT])
  )
  images = []
  if render:
    images = render_views(
      anat, findings, image_size, lateral, np.random.default_rng([seed, index, _PIXELS])
    )
  attributes = {
    "findings": findings,
    # Heart scale does not depend on the random stream, so this is the drawn ratio.
    "cardiothoracic_ratio": round(
      anatomy_for(anat, findings, np.random.default_rng(0)).cardiothoracic_ratio, 3
    ),
  }
  return SyntheticStudy(
    id=study_id(index),
    index=index,
    split=split_of(index, seed),
    report=format_report(findings_text, impression_text),
    findings_text=findings_text,
    impression_text=impression_text,
    labels=labels_from_findings(findings),
    attributes=attributes,
    images=tuple(images),
    views=("frontal", "lateral") if lateral else ("frontal",),
  )
