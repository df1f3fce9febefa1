"""Reader for MIMIC-CXR-JPG 2.x (PhysioNet) with the MIMIC-CXR free-text reports.

Layout:

  ROOT/files/p10/p10000001/s50000001/<dicom_id>.jpg    images (pXX = first 2 digits of the subject)
  ROOT/mimic-cxr-2.0.0-split.csv.gz                    dicom_id,study_id,subject_id,split
  ROOT/mimic-cxr-2.0.0-metadata.csv.gz                 dicom_id,...,ViewPosition,...
  ROOT/mimic-cxr-2.0.0-chexpert.csv.gz                 optional labels per study
  REPORTS/files/p10/p10000001/s50000001.txt            reports (from MIMIC-CXR, not -JPG)

The .csv files may be gzipped or not. One Study per study_id with all its images (after the
view filter; frontal first). Splits train/validate/test become train/val/test. Reports are
split into findings and impression by the MIT-LCP rules (`sections.py`). CheXpert labels,
when the file is present, become Study.labels {name: 1.0 | 0.0 | -1.0} (blank = not
mentioned = left out).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from echo_jax.data.readers.common import (
  DatasetFileError,
  EntrySkip,
  finish,
  iter_csv,
  make_study,
  resolve_image,
)
from echo_jax.data.readers.sections import findings_impression
from echo_jax.data.study import SkipLog, Study, normalize_split

_PREFIX = "mimic-cxr-2.0.0-"


def _find(root: str, name: str, required: bool) -> str | None:
  for candidate in (name + ".gz", name):
    path = os.path.join(root, candidate)
    if os.path.isfile(path):
      return path
  if required:
    raise DatasetFileError(
      f"no {name}[.gz]", where=root, fix=f"check that {root} is the MIMIC-CXR-JPG root"
    )
  return None


def _labels(path: str) -> dict[str, dict[str, float]]:
  out = {}
  for row in iter_csv(path, "CheXpert labels file", required=("study_id",)):
    values = {}
    for k, v in row.items():
      if k in ("subject_id", "study_id") or v is None or not v.strip():
        continue
      try:
        values[k] = float(v)
      except ValueError:
        continue  # a malformed cell leaves that finding unlabeled
    out[row["study_id"].strip()] = values
  return out


def read_report(path: str) -> str:
  """A report's text (strict UTF-8); EntrySkip for a missing, unreadable or empty file."""
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise EntrySkip("missing_report", f"{path}: {e.strerror}") from None
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise EntrySkip("not_utf8", f"{path}: {e}") from None
  if not text.strip():
    raise EntrySkip("empty_report", path)
  return text


def read_mimic_cxr_jpg(
  root: str,
  *,
  reports_root: str | None = None,
  split_csv: str | None = None,
  metadata_csv: str | None = None,
  chexpert_csv: str | None = None,
  splits: Sequence[str] | None = None,
  views: str | Sequence[str] | None = None,
  max_images: int | None = None,
  require: str = "any",
  check_files: bool = True,
  skips: SkipLog | None = None,
) -> list[Study]:
  """Read MIMIC-CXR-JPG.

  Args:
    root: the MIMIC-CXR-JPG folder (holding files/ and the csv files).
    reports_root: folder holding the reports' files/ tree (default: ROOT).
    split_csv / metadata_csv / chexpert_csv: override the csv paths (default: found in ROOT;
      the chexpert file is optional).
    splits: keep only these splits ("train", "val", "test"); default all.
    views: None (all), "frontal", or ViewPosition names such as ("PA", "AP").
    max_images / require: see `echo_jax.data.readers.common.make_study`.
    check_files: stat every image (missing and zero-byte files are skipped).
    skips: the SkipLog to record skipped studies in.
  """
  skips = skips if skips is not None else SkipLog("mimic-cxr-jpg")
  reports_root = reports_root or root
  split_csv = split_csv or _find(root, _PREFIX + "split.csv", required=True)
  metadata_csv = metadata_csv or _find(root, _PREFIX + "metadata.csv", required=True)
  chexpert_csv = chexpert_csv or _find(root, _PREFIX + "chexpert.csv", required=False)

  view_of = {
    row["dicom_id"].strip(): (row.get("ViewPosition") or "").strip()
    for row in iter_csv(metadata_csv, "metadata file", required=("dicom_id", "ViewPosition"))
  }
  label_map = _labels(chexpert_csv) if chexpert_csv else None

  # study_id -> (subject_id, split, [dicom ids]) in file order.
  grouped: dict[str, tuple[str, str, list[str]]] = {}
  for row in iter_csv(
    split_csv, "split file", required=("dicom_id", "study_id", "subject_id", "split")
  ):
    study = row["study_id"].strip()
    entry = grouped.setdefault(study, (row["subject_id"].strip(), row["split"].strip(), []))
    entry[2].append(row["dicom_id"].strip())

  studies: list[Study] = []
  for study_id, (subject, split, dicoms) in grouped.items():
    try:
      if not study_id.isdigit() or not subject.isdigit() or len(subject) < 2:
        raise EntrySkip(
          "missing_field", f"study_id {study_id!r} / subject_id {subject!r} are not numbers"
        )
      study_split = normalize_split(split)
      if splits is not None and study_split not in splits:
        continue
      folder = f"files/p{subject[:2]}/p{subject}/s{study_id}"
      text = read_report(os.path.join(reports_root, folder + ".txt"))
      findings, impression = findings_impression(text)
      images = [
        (resolve_image(root, f"{folder}/{d}.jpg", check_file=check_files), view_of.get(d, ""))
        for d in dicoms
      ]
      labels = label_map.get(study_id) if label_map is not None else None
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
          labels=labels,
          meta={"subject_id": subject, "dicom_ids": dicoms},
        )
      )
    except EntrySkip as e:
      skips.skip(study_id, e.reason, e.detail)
  return finish(studies, skips)
