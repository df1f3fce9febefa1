"""Reader for the R2Gen `annotation.json` layout (IU X-ray, MIMIC-CXR, the synthetic set).

Layout:

  ROOT/annotation.json   {"train": [...], "val": [...], "test": [...]}, entries
                         {"id", "report", "image_path": [relative paths], "split", ...}
  ROOT/images/...        the images; `image_path` is relative to this folder
  ROOT/labels.json       optional: {id: {"labels": {CheXpert name: 0/1}, ...}} (the
                         synthetic benchmark writes it); attached as Study.labels, and
                         its "attributes"."findings" (the finding set) as meta["findings"]

Findings and impression. R2Gen reports are one paragraph without sections. A report that
contains "Findings:" / "Impression:" markers (the synthetic set, reports normalized for
ECHO) is split at them; any other report is kept whole as the findings and the impression
is left empty, so `Study.report` reads "Findings: <report> Impression:". The text is only
whitespace-normalized: R2Gen's own lower-casing/punctuation stripping is not applied.

IU X-ray studies have no view labels (R2Gen's 0.png is usually the frontal view): their
view positions are "", so a view filter drops them; use `max_images` instead.
"""

from __future__ import annotations

import dataclasses
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
from echo_jax.data.study import SkipLog, Study


def _labels_by_id(path: str) -> dict[str, dict]:
  data = load_json(path, "labels file")
  if not isinstance(data, dict):
    raise DatasetFileError(
      "labels file is not an object", where=path, fix="map study ids to {'labels': {...}}"
    )
  return data


def _is_label(value: object) -> bool:
  """1 / 0 / -1 (or a float of them), as CheXpert labels are written."""
  return not isinstance(value, bool) and isinstance(value, (int, float)) and value in (1, 0, -1)


def read_r2gen(
  root: str,
  *,
  annotation: str | None = None,
  images_root: str | None = None,
  labels: str | None = None,
  splits: Sequence[str] | None = None,
  views: str | Sequence[str] | None = None,
  max_images: int | None = None,
  require: str = "any",
  check_files: bool = True,
  group_by_study: bool = False,
  skips: SkipLog | None = None,
) -> list[Study]:
  """Read an R2Gen-layout dataset.

  Args:
    root: the dataset folder.
    annotation: the annotation file (default ROOT/annotation.json).
    images_root: folder the image paths are relative to (default ROOT/images).
    labels: a labels file (default: ROOT/labels.json when it exists, else no labels).
    splits: keep only these splits ("train", "val", "test"); default all.
    views / max_images / require: see `echo_jax.data.readers.common.make_study`.
    check_files: stat every image (missing and zero-byte files are skipped).
    group_by_study: MIMIC-CXR R2Gen files have one entry per image (id = DICOM id); merge
      the entries sharing a 'study_id' into one multi-image study (frontal first, then cut
      to max_images), keeping the first entry's id-independent fields.
    skips: the SkipLog to record skipped entries in (a new one by default).
  """
  skips = skips if skips is not None else SkipLog("r2gen")
  annotation = annotation or os.path.join(root, "annotation.json")
  images_root = images_root or os.path.join(root, "images")
  data = load_json(annotation)
  if not isinstance(data, dict) or not any(k in data for k in ("train", "val", "test")):
    raise DatasetFileError(
      "not an R2Gen annotation file",
      where=annotation,
      fix="give an object with 'train', 'val' and 'test' lists",
    )
  labels_path = labels or os.path.join(os.path.dirname(annotation), "labels.json")
  label_map = _labels_by_id(labels_path) if (labels or os.path.isfile(labels_path)) else None

  studies: list[Study] = []
  seen: set[str] = set()
  for split_key, entries in data.items():
    if splits is not None and split_key not in splits:
      continue
    if not isinstance(entries, list):
      raise DatasetFileError(
        f"'{split_key}' is {json_kind(entries)}", where=annotation, fix="give a list of studies"
      )
    for i, entry in enumerate(entries):
      study_id = f"{split_key}[{i}]"
      try:
        if not isinstance(entry, dict):
          raise EntrySkip("missing_field", f"entry is a {type(entry).__name__}, not an object")
        raw_id = entry.get("id")
        if not isinstance(raw_id, str | int) or raw_id == "":
          raise EntrySkip("missing_field", "no 'id'")
        study_id = str(raw_id)
        if study_id in seen:
          raise EntrySkip("duplicate_id", f"id {study_id!r} appears more than once")
        if "report" not in entry:
          raise EntrySkip("missing_field", "no 'report'")
        report = clean_text(entry["report"], "report")
        marked = split_marked_report(report)
        findings, impression = marked if marked is not None else (report, "")
        rel_paths = entry.get("image_path")
        if isinstance(rel_paths, str):
          rel_paths = [rel_paths]
        if not isinstance(rel_paths, list) or not rel_paths:
          raise EntrySkip("missing_field", "no 'image_path' list")
        images = [(resolve_image(images_root, p, check_file=check_files), "") for p in rel_paths]
        study_labels = None
        if label_map is not None:
          record = label_map.get(study_id)
          if not isinstance(record, dict) or not isinstance(record.get("labels"), dict):
            raise EntrySkip("missing_labels", f"{labels_path} has no labels for {study_id!r}")
          study_labels = dict(record["labels"])
          bad = [k for k, v in study_labels.items() if not _is_label(v)]
          if bad:
            raise EntrySkip(
              "bad_labels", f"{labels_path}: label {bad[0]!r} is {study_labels[bad[0]]!r}"
            )
        meta = {k: entry[k] for k in ("study_id", "subject_id") if k in entry}
        for k, v in meta.items():
          if isinstance(v, bool) or not isinstance(v, str | int):
            raise EntrySkip("bad_field", f"{k} is {json_kind(v)}, not a string or number")
        attributes = record.get("attributes") if label_map is not None else None
        if isinstance(attributes, dict) and isinstance(attributes.get("findings"), dict):
          meta["findings"] = attributes["findings"]  # the synthetic generator's finding set
        meta = meta or None
        studies.append(
          make_study(
            study_id,
            images,
            findings,
            impression,
            split_key,  # the list an entry sits in decides, as in R2Gen
            views=views,
            max_images=max_images,
            require=require,
            labels=study_labels,
            meta=meta,
          )
        )
        seen.add(study_id)
      except EntrySkip as e:
        skips.skip(study_id, e.reason, e.detail)
  if group_by_study:
    studies = _group(studies, max_images)
  return finish(studies, skips)


def _group(studies: list[Study], max_images: int | None) -> list[Study]:
  """Merge per-image entries by their meta 'study_id' (entries without one stay alone)."""
  groups: dict[str, list[Study]] = {}
  for s in studies:
    key = str(s.meta["study_id"]) if s.meta and "study_id" in s.meta else f"id:{s.id}"
    groups.setdefault(key, []).append(s)
  merged = []
  for key, members in groups.items():
    first = members[0]
    pairs = [(p, v) for m in members for p, v in zip(m.image_paths, m.view_positions)]
    pairs = pairs[:max_images] if max_images is not None else pairs
    merged.append(
      dataclasses.replace(
        first,
        id=first.id if key.startswith("id:") else key,
        image_paths=tuple(p for p, _ in pairs),
        view_positions=tuple(v for _, v in pairs),
        meta={**(first.meta or {}), "dicom_ids": [m.id for m in members]},
      )
    )
  return merged
