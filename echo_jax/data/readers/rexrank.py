"""Reader for ReXrank leaderboard JSON files (MIMIC-CXR, IU X-ray, CheXpert Plus test sets).

One JSON object keyed by study id; values like

  {"image_path": ["CXR1_IM-0001/0.png", ...], "frontal_lateral": ["Frontal", "Lateral"],
   "key_image_path": "CXR1_IM-0001/0.png", "report": "Findings: ... Impression: ...",
   "section_findings": "...", "section_impression": "...", "split": "test", "ap_pa": [...]}

The files contain the non-standard literal NaN for missing values; Python's json reads it
and NaN counts as missing. Findings/impression come from section_findings /
section_impression; when both are missing, the "Findings: ... Impression: ..." markers of
`report` are used. A missing split means "test" (these are test sets). With
`key_image_only`, each study keeps just its key (frontal) image, as single-image models are
evaluated on the leaderboard.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from echo_jax.data.readers.common import (
  DatasetFileError,
  EntrySkip,
  clean_text,
  finish,
  json_kind,
  load_json,
  make_study,
  resolve_image,
  split_marked_report,
)
from echo_jax.data.study import SkipLog, Study, normalize_split


def _as_list(value) -> list:
  if isinstance(value, list):
    return value
  if isinstance(value, str):
    return [value]
  return []


def read_rexrank(
  root: str,
  *,
  json_path: str | None = None,
  images_root: str | None = None,
  key_image_only: bool = False,
  splits: Sequence[str] | None = None,
  views: str | Sequence[str] | None = None,
  max_images: int | None = None,
  require: str = "any",
  check_files: bool = True,
  skips: SkipLog | None = None,
) -> list[Study]:
  """Read a ReXrank JSON file.

  Args:
    root: the dataset folder (images are relative to it unless images_root is given).
    json_path: the JSON file (default: the only *.json file in ROOT).
    images_root: folder the image paths are relative to (default ROOT).
    key_image_only: keep only key_image_path (falls back to the first frontal image).
    splits / views / max_images / require / check_files / skips: as in the other readers.
  """
  skips = skips if skips is not None else SkipLog("rexrank")
  if json_path is None:
    found = (
      sorted(f for f in os.listdir(root) if f.endswith(".json")) if os.path.isdir(root) else []
    )
    if len(found) != 1:
      raise DatasetFileError(
        f"{len(found)} .json files", where=root, fix="pass json_path=<the ReXrank file>"
      )
    json_path = os.path.join(root, found[0])
  images_root = images_root or root
  data = load_json(json_path, "ReXrank file")
  if not isinstance(data, dict):
    raise DatasetFileError(
      "ReXrank file is not a JSON object", where=json_path, fix="key the studies by their id"
    )

  studies: list[Study] = []
  for study_id, entry in data.items():
    try:
      if not isinstance(entry, dict):
        raise EntrySkip("missing_field", f"value is a {type(entry).__name__}, not an object")
      split = entry.get("split") if isinstance(entry.get("split"), str) else "test"
      if splits is not None and normalize_split(split) not in splits:
        continue
      findings = clean_text(entry.get("section_findings"), "section_findings")
      impression = clean_text(entry.get("section_impression"), "section_impression")
      if not findings and not impression:
        marked = split_marked_report(clean_text(entry.get("report"), "report"))
        if marked is not None:
          findings, impression = marked
          findings = "" if findings.rstrip(".").lower() == "none" else findings
          impression = "" if impression.rstrip(".").lower() == "none" else impression
      paths = _as_list(entry.get("image_path"))
      if not paths:
        raise EntrySkip("missing_field", "no 'image_path'")
      for p in paths:
        if not isinstance(p, str):
          raise EntrySkip("bad_field", f"image_path holds {json_kind(p)}, not a path string")
      views_in = [v if isinstance(v, str) else "" for v in _as_list(entry.get("frontal_lateral"))]
      views_in += [""] * (len(paths) - len(views_in))
      ap_pa = _as_list(entry.get("ap_pa"))
      view_names = [
        ap_pa[i]
        if v.lower() == "frontal" and i < len(ap_pa) and isinstance(ap_pa[i], str) and ap_pa[i]
        else v
        for i, v in enumerate(views_in[: len(paths)])
      ]
      pairs = list(zip(paths, view_names))
      if key_image_only:
        key = entry.get("key_image_path")
        if isinstance(key, str) and key:
          pairs = [(key, dict(pairs).get(key, "Frontal"))]
        else:
          pairs = sorted(pairs, key=lambda pv: pv[1].lower() != "frontal")[:1]
      images = [(resolve_image(images_root, p, check_file=check_files), v) for p, v in pairs]
      studies.append(
        make_study(
          str(study_id),
          images,
          findings,
          impression,
          split,
          views=views,
          max_images=max_images,
          require=require,
        )
      )
    except EntrySkip as e:
      skips.skip(str(study_id), e.reason, e.detail)
  return finish(studies, skips)
