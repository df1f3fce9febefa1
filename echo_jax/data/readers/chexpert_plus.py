"""Reader for CheXpert Plus (`df_chexpert_plus_240401.csv` + the PNG images).

One csv row per image, with columns including path_to_image, frontal_lateral, ap_pa,
deid_patient_id, section_findings, section_impression and split (train / valid). Rows are
grouped into studies by the patientN/studyM part of path_to_image; the study id is
"patientN_studyM" (the id ReXrank uses). Findings and impression come from the
section_findings / section_impression columns, whitespace-normalized (upper case and
numbered lists are kept as written). Many studies have an impression only; pass
require="both" to drop them.

Images: path_to_image ("train/patient1/study1/view1_frontal.jpg") is looked up under
`images_root` (default ROOT/PNG); when that file is missing the same path with a .png
extension is tried, because the csv names the original CheXpert .jpg files while CheXpert
Plus ships PNGs. View position: ap_pa ("AP"/"PA") for frontal images when given, else
frontal_lateral ("Frontal"/"Lateral").
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from echo_jax.data.readers.common import (
  EntrySkip,
  clean_text,
  finish,
  iter_csv,
  make_study,
  resolve_image,
)
from echo_jax.data.study import SkipLog, Study, normalize_split

_STUDY = re.compile(r"(patient\d+)/(study\d+)/")
_REQUIRED = ("path_to_image", "section_findings", "section_impression", "split")


def _image(images_root: str, rel: str, check_files: bool) -> str:
  try:
    return resolve_image(images_root, rel, check_file=check_files)
  except EntrySkip as e:
    if e.reason != "missing_image":
      raise
    return resolve_image(images_root, os.path.splitext(rel)[0] + ".png", check_file=check_files)


def read_chexpert_plus(
  root: str,
  *,
  csv_path: str | None = None,
  images_root: str | None = None,
  splits: Sequence[str] | None = None,
  views: str | Sequence[str] | None = None,
  max_images: int | None = None,
  require: str = "any",
  check_files: bool = True,
  skips: SkipLog | None = None,
) -> list[Study]:
  """Read CheXpert Plus.

  Args:
    root: the dataset folder.
    csv_path: the report csv (default ROOT/df_chexpert_plus_240401.csv).
    images_root: folder path_to_image is relative to (default ROOT/PNG).
    splits / views / max_images / require / check_files / skips: as in the other readers.
  """
  skips = skips if skips is not None else SkipLog("chexpert-plus")
  csv_path = csv_path or os.path.join(root, "df_chexpert_plus_240401.csv")
  images_root = images_root or os.path.join(root, "PNG")

  # study id -> rows, in file order.
  grouped: dict[str, list[dict[str, str]]] = {}
  for i, row in enumerate(iter_csv(csv_path, "CheXpert Plus csv", required=_REQUIRED)):
    match = _STUDY.search((row.get("path_to_image") or "").replace("\\", "/"))
    if match is None:
      skips.skip(
        f"row {i + 2}",
        "missing_field",
        f"path_to_image {row.get('path_to_image')!r} has no patientN/studyM",
      )
      continue
    grouped.setdefault(f"{match.group(1)}_{match.group(2)}", []).append(row)

  studies: list[Study] = []
  for study_id, rows in grouped.items():
    try:
      first = rows[0]
      split = (first.get("split") or "").strip()
      study_split = normalize_split(split)
      if splits is not None and study_split not in splits:
        continue
      findings = clean_text(first.get("section_findings"))
      impression = clean_text(first.get("section_impression"))
      images = []
      for row in rows:
        frontal_lateral = (row.get("frontal_lateral") or "").strip()
        ap_pa = (row.get("ap_pa") or "").strip()
        view = ap_pa if frontal_lateral.lower() == "frontal" and ap_pa else frontal_lateral
        images.append((_image(images_root, row["path_to_image"].strip(), check_files), view))
      meta = {"patient_id": first.get("deid_patient_id", "")}
      studies.append(
        make_study(
          study_id,
          images,
          findings,
          impression,
          split,
          views=views,
          max_images=max_images,
          require=require,
          meta=meta,
        )
      )
    except EntrySkip as e:
      skips.skip(study_id, e.reason, e.detail)
  return finish(studies, skips)
