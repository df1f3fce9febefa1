"""Reader for ReXGradient-160K (PNG images + one metadata file per split).

Images live under `deid_png/<patient>/<study>/studies/<StudyUID>/series/<SeriesUID>/
instances/<SOPUID>.png`. Reports are split into indication, comparison, findings and
impression in per-split metadata files. The exact layout of those files was NOT verified
against the release, so everything about them is configurable:

- `metadata`: one path or a list of paths (default: every *.json, *.jsonl and *.csv file
  in ROOT/metadata, else in ROOT). Each file may be a JSON list of records, a JSON object
  keyed by study id, JSON lines, or a CSV.
- `fields`: a `RexGradientFields` naming the record keys: the study id, the image path
  list, the view list, findings, impression and split. The defaults ("id", "ImagePath",
  "ImageViewPosition", "Findings", "Impression", "split") are a best guess; override them
  (`fields=RexGradientFields(images="image_paths")`) to match your copy.
- A list-valued field may be a JSON list, or in a CSV a JSON / Python-literal list string,
  or a single path.
- A record without a split field takes it from its file name (train / valid / val /
  validation / test in the name), else it is skipped with reason "bad_split".

Image paths are resolved under `images_root` (default ROOT).
"""

from __future__ import annotations

import ast
import dataclasses
import glob
import json
import os
import re
from collections.abc import Iterator, Sequence

from echo_jax.data.readers.common import (
  DatasetFileError,
  EntrySkip,
  clean_text,
  finish,
  iter_csv,
  json_kind,
  load_json,
  make_study,
  read_bytes,
  resolve_image,
)
from echo_jax.data.study import SkipLog, Study, normalize_split


@dataclasses.dataclass(frozen=True)
class RexGradientFields:
  """Record keys of the ReXGradient metadata files (see the module docstring)."""

  id: str = "id"
  images: str = "ImagePath"
  views: str = "ImageViewPosition"
  findings: str = "Findings"
  impression: str = "Impression"
  split: str = "split"


_SPLIT_IN_NAME = re.compile(r"(train|validation|valid|val|test)", re.IGNORECASE)


def _records(path: str) -> Iterator[dict]:
  name = path.lower()
  if name.endswith((".csv", ".csv.gz")):
    yield from iter_csv(path, "ReXGradient metadata")
    return
  if name.endswith((".jsonl", ".jsonl.gz")):
    # Line by line, so that a line with bad bytes or bad JSON costs only its own record.
    for n, raw in enumerate(read_bytes(path, "ReXGradient metadata").split(b"\n")):
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        yield {
          "__error__": f"line {n + 1}: byte {raw[e.start]:#04x} is not UTF-8",
          "__reason__": "not_utf8",
        }
        continue
      if line.strip():
        try:
          yield json.loads(line)
        except (json.JSONDecodeError, RecursionError) as e:
          yield {"__error__": f"line {n + 1}: not valid JSON ({e})"}
    return
  data = load_json(path, "ReXGradient metadata")
  if isinstance(data, dict):
    for key, value in data.items():
      yield (
        {"__key__": key, **value}
        if isinstance(value, dict)
        else {"__error__": f"{key}: not an object"}
      )
  elif isinstance(data, list):
    yield from data
  else:
    raise DatasetFileError(
      "ReXGradient metadata is not a list or an object",
      where=path,
      fix="give a list of records or an object keyed by study id",
    )


def _as_list(value) -> list:
  if isinstance(value, list):
    return value
  if isinstance(value, str):
    text = value.strip()
    if text.startswith("["):
      for parse in (json.loads, ast.literal_eval):
        try:
          parsed = parse(text)
        except (ValueError, SyntaxError):
          continue
        if isinstance(parsed, list):
          return parsed
      return []
    return [text] if text else []
  return []


def _default_metadata(root: str) -> list[str]:
  for folder in (os.path.join(root, "metadata"), root):
    files = sorted(
      p
      for ext in ("*.json", "*.jsonl", "*.csv", "*.json.gz", "*.jsonl.gz", "*.csv.gz")
      for p in glob.glob(os.path.join(folder, ext))
    )
    if files:
      return files
  raise DatasetFileError(
    "no metadata files (*.json, *.jsonl, *.csv)",
    where=f"{root}/metadata or {root}",
    fix="pass metadata=<file or list of files>",
  )


def read_rexgradient(
  root: str,
  *,
  metadata: str | Sequence[str] | None = None,
  fields: RexGradientFields = RexGradientFields(),
  images_root: str | None = None,
  splits: Sequence[str] | None = None,
  views: str | Sequence[str] | None = None,
  max_images: int | None = None,
  require: str = "any",
  check_files: bool = True,
  skips: SkipLog | None = None,
) -> list[Study]:
  """Read ReXGradient-160K; see the module docstring for the configurable layout."""
  skips = skips if skips is not None else SkipLog("rexgradient")
  files = [metadata] if isinstance(metadata, str) else list(metadata or _default_metadata(root))
  images_root = images_root or root

  studies: list[Study] = []
  seen: set[str] = set()
  for path in files:
    name_split = _SPLIT_IN_NAME.search(os.path.basename(path))
    for n, record in enumerate(_records(path)):
      study_id = f"{os.path.basename(path)}[{n}]"
      try:
        if not isinstance(record, dict) or "__error__" in record:
          detail = record.get("__error__", "") if isinstance(record, dict) else "not an object"
          reason = (
            record.get("__reason__", "missing_field")
            if isinstance(record, dict)
            else "missing_field"
          )
          raise EntrySkip(reason, detail)
        raw_id = record.get(fields.id, record.get("__key__"))
        if raw_id in (None, ""):
          raise EntrySkip("missing_field", f"no {fields.id!r}")
        if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
          raise EntrySkip("bad_field", f"{fields.id!r} is {json_kind(raw_id)}")
        study_id = str(raw_id)
        if study_id in seen:
          raise EntrySkip("duplicate_id", f"id {study_id!r} appears more than once")
        split = record.get(fields.split)
        if not isinstance(split, str) or not split.strip():
          split = name_split.group(1) if name_split else None
        if splits is not None and normalize_split(split) not in splits:
          continue
        if fields.findings not in record and fields.impression not in record:
          raise EntrySkip("missing_field", f"neither {fields.findings!r} nor {fields.impression!r}")
        findings = clean_text(record.get(fields.findings), repr(fields.findings))
        impression = clean_text(record.get(fields.impression), repr(fields.impression))
        paths = _as_list(record.get(fields.images))
        if not paths:
          raise EntrySkip("missing_field", f"no image paths in {fields.images!r}")
        view_list = [v if isinstance(v, str) else "" for v in _as_list(record.get(fields.views))]
        view_list += [""] * (len(paths) - len(view_list))
        images = [
          (resolve_image(images_root, p, check_file=check_files), v.strip())
          for p, v in zip(paths, view_list)
        ]
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
          )
        )
        seen.add(study_id)
      except EntrySkip as e:
        # The record's file is named: one metadata file per split, several per dataset.
        skips.skip(study_id, e.reason, f"{path}: {e.detail}" if e.detail else path)
  return finish(studies, skips)
