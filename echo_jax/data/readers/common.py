"""Pieces every reader shares: safe path joins, text cleaning, CSV/JSON loading, view order.

Per-entry problems raise `EntrySkip(reason, detail)`; a reader catches it, records it in
its `SkipLog` and moves to the next entry. Problems with a whole file (the annotation JSON
is missing or not JSON, a CSV row with the wrong number of fields, a truncated .gz) raise
`DatasetFileError` straight away, naming the file and where known the line: nothing can
be read around them. It is a `UserError` (commands print it as one line and exit 2) and a
`ValueError` (what callers of the readers have always caught).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import os
import re
import zlib
from collections.abc import Iterator, Sequence

from echo_jax.data.study import SkipLog, Study, normalize_split
from echo_jax.user_errors import UserError

# View positions that show the chest from the front (MIMIC-CXR ViewPosition values such as
# "PA", "AP", "AP AXIAL", "PA LLD" and CheXpert's "Frontal").
_FRONTAL = ("PA", "AP", "FRONTAL", "POSTEROANTERIOR", "ANTEROPOSTERIOR")


class DatasetFileError(UserError, ValueError):
  """A whole dataset file is unusable; the message names it (and the line where known)."""


class DatasetOptionError(UserError, ValueError):
  """A reader option (format, splits, views, require, ...) has a value it cannot use."""


class EntrySkip(Exception):
  """One dataset entry is unusable; `reason` is a short key, `detail` says what was found."""

  def __init__(self, reason: str, detail: str = ""):
    super().__init__(f"{reason}: {detail}" if detail else reason)
    self.reason = reason
    self.detail = detail


def is_frontal(view: str) -> bool:
  v = view.strip().upper()
  return v in _FRONTAL or v.startswith(("PA ", "AP "))


def view_rank(view: str) -> int:
  """Sort key putting frontal views first, then laterals, then unknown/others."""
  v = view.strip().upper()
  if is_frontal(v):
    return 0
  if "LAT" in v or v == "LL":
    return 1
  return 2


def keep_view(view: str, views: str | Sequence[str] | None) -> bool:
  """The view filter shared by all readers.

  views: None keeps every image; "frontal" keeps frontal views (PA, AP, ...); a sequence of
  names keeps exactly those ViewPosition values (case-insensitive). Unknown ("") views are
  dropped by any filter.
  """
  if views is None:
    return True
  if isinstance(views, str):
    if views.lower() != "frontal":
      raise DatasetOptionError(
        f"views={views!r}", fix="use None, 'frontal' or a list of view names like ['PA', 'AP']"
      )
    return is_frontal(view)
  return view.strip().upper() in {v.upper() for v in views}


def resolve_image(images_root: str, rel_path: object, *, check_file: bool = True) -> str:
  """The absolute path of `rel_path` under `images_root`, or EntrySkip.

  A path that is absolute or climbs out of the root with '..' is refused ("path_escape"):
  a dataset file must not make training read arbitrary files. Symlinks inside the root are
  followed (users often link image folders in). With check_file, a missing or zero-byte
  file is refused too; decoding errors are found later by `echo_jax.data.images`.
  """
  if not isinstance(rel_path, str) or not rel_path.strip():
    raise EntrySkip("missing_field", f"image path {rel_path!r} is not a non-empty string")
  root = os.path.abspath(images_root)
  path = os.path.normpath(os.path.join(root, rel_path))
  if os.path.isabs(rel_path) or not path.startswith(root + os.sep):
    raise EntrySkip("path_escape", f"{rel_path!r} points outside the images root {root}")
  if check_file:
    try:
      size = os.stat(path).st_size
    except OSError:
      raise EntrySkip("missing_image", path) from None
    if not os.path.isfile(path):
      raise EntrySkip("missing_image", f"{path} is not a file")
    if size == 0:
      raise EntrySkip("zero_byte_image", path)
  return path


def clean_text(value: object, field: str = "text") -> str:
  """Whitespace-normalized text; "" for None and NaN (the usual 'missing').

  Any other non-string (a number, a list, an object) is an EntrySkip "bad_field": a
  report section that is not text means the entry is not what the reader expects.
  """
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return ""
  if not isinstance(value, str):
    raise EntrySkip("bad_field", f"{field} is {json_kind(value)}, not text")
  try:
    value.encode("utf-8")  # fails on the surrogates that stand for undecodable bytes
  except UnicodeEncodeError:
    raise EntrySkip("not_utf8", f"text has bytes that are not UTF-8: {value[:60]!r}") from None
  return " ".join(value.split())


_MARKERS = re.compile(r"\b(findings?|impressions?)\s*:", re.IGNORECASE)


def split_marked_report(text: str) -> tuple[str, str] | None:
  """Split 'Findings: ... Impression: ...' text; None unless it starts with such a marker.

  Only text that opens with "Findings:" or "Impression:" is treated as sectioned, so a
  free-text report mentioning "new finding: ..." mid-sentence stays whole. The last marker
  of each kind wins (a repeated header is usually a correction).
  """
  matches = list(_MARKERS.finditer(text))
  if not matches or text[: matches[0].start()].strip():
    return None
  parts = {"findings": "", "impression": ""}
  for i, m in enumerate(matches):
    end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
    key = "findings" if m.group(1).lower().startswith("finding") else "impression"
    body = text[m.end() : end].strip()
    # "Findings: ..., Impression: ..." (the ECHO instruction's format) leaves a comma behind.
    parts[key] = " ".join(body.rstrip(",;").split())
  return parts["findings"], parts["impression"]


def check_sections(findings: str, impression: str, require: str) -> None:
  """Raise EntrySkip when the sections a run asked for are missing.

  require: "any" (at least one of findings/impression), "findings", "impression" or
  "both". ECHO trains on findings + impression; CheXpert Plus has many impression-only
  studies, so the default in the readers is "any".
  """
  if require not in ("any", "findings", "impression", "both"):
    raise DatasetOptionError(
      f"require={require!r}", fix="use 'any', 'findings', 'impression' or 'both'"
    )
  if not findings and not impression:
    raise EntrySkip("empty_report", "no findings and no impression text")
  if require in ("findings", "both") and not findings:
    raise EntrySkip("no_findings", "the report has no findings section")
  if require in ("impression", "both") and not impression:
    raise EntrySkip("no_impression", "the report has no impression section")


def make_study(
  study_id: str,
  images: Sequence[tuple[str, str]],
  findings: str,
  impression: str,
  split: object,
  *,
  views: str | Sequence[str] | None = None,
  max_images: int | None = None,
  require: str = "any",
  labels=None,
  meta=None,
) -> Study:
  """Validate and build a Study from (path, view) pairs; raises EntrySkip when unusable.

  Images are filtered by `views`, sorted frontal first (stable, so the dataset's own order
  decides among equal views) and cut to `max_images`.
  """
  if not study_id:
    raise EntrySkip("missing_field", "empty study id")
  norm_split = normalize_split(split)
  if norm_split is None:
    raise EntrySkip("bad_split", f"split {split!r} is not train/val/test (or a known alias)")
  check_sections(findings, impression, require)
  kept = [(p, v) for p, v in images if keep_view(v, views)]
  if not kept:
    reason = "no_image" if not images else "no_image_after_view_filter"
    raise EntrySkip(reason, f"{len(images)} image(s), none kept with views={views!r}")
  kept.sort(key=lambda pv: view_rank(pv[1]))
  if max_images is not None:
    kept = kept[:max_images]
  return Study(
    id=study_id,
    image_paths=tuple(p for p, _ in kept),
    view_positions=tuple(v for _, v in kept),
    findings=findings,
    impression=impression,
    split=norm_split,
    labels=labels,
    meta=meta,
  )


def json_kind(value: object) -> str:
  """'a number', 'a list', ...: what a parsed value is, for messages."""
  if isinstance(value, bool):
    return "a boolean"
  if isinstance(value, (int, float)):
    return "a number"
  names = {str: "a string", list: "a list", dict: "an object", type(None): "null"}
  return names.get(type(value), f"a {type(value).__name__}")


def read_bytes(path: str, what: str) -> bytes:
  """The file's bytes, gunzipped for a .gz name; DatasetFileError naming the file."""
  if not os.path.isfile(path):
    raise DatasetFileError(
      f"{what} does not exist", where=path, fix="check the dataset root and format"
    )
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise DatasetFileError(f"cannot read the {what}", where=path, why=e.strerror) from None
  if not path.endswith(".gz"):
    return data
  try:
    return gzip.decompress(data)
  except (EOFError, gzip.BadGzipFile, zlib.error) as e:
    raise DatasetFileError(
      f"truncated or damaged gzip {what}", where=path, why=str(e), fix="download the file again"
    ) from None


def undecodable(path: str, data: bytes, error: UnicodeDecodeError, what: str) -> DatasetFileError:
  """The error for bytes that are not UTF-8, naming the line they are on."""
  line = data[: error.start].count(b"\n") + 1
  return DatasetFileError(
    f"{what} is not UTF-8",
    where=path,
    line=line,
    why=f"byte {data[error.start]:#04x}",
    fix="re-encode the file as UTF-8",
  )


def load_json(path: str, what: str = "annotation file"):
  """Parse a JSON file (Python's json accepts the non-standard NaN of ReXrank files)."""
  data = read_bytes(path, what)
  try:
    return json.loads(data.decode("utf-8"))
  except UnicodeDecodeError as e:
    raise undecodable(path, data, e, what) from None
  except json.JSONDecodeError as e:
    raise DatasetFileError(
      f"{what} is not valid JSON",
      where=path,
      line=e.lineno,
      why=f"{e.msg} at column {e.colno}",
      fix="repair or re-download the file",
    ) from None
  except RecursionError:
    raise DatasetFileError(
      f"{what} is not valid JSON", where=path, why="nested too deeply"
    ) from None


def iter_csv(
  path: str, what: str = "CSV file", required: Sequence[str] = ()
) -> Iterator[dict[str, str]]:
  """Rows of a (possibly gzipped) CSV as dicts of strings.

  Bytes that are not UTF-8 are kept as surrogates so only the rows holding them are lost
  (`clean_text` refuses them), not the whole file. Missing required columns and a row
  with more or fewer fields than the header raise DatasetFileError with the line: such a
  row means a damaged file, and its values would land in the wrong columns.
  """
  text = read_bytes(path, what).decode("utf-8", errors="surrogateescape")
  reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff"), newline=""))
  try:
    fields = reader.fieldnames or []
    missing = [c for c in required if c not in fields]
    if missing:
      raise DatasetFileError(
        f"{what} lacks the column(s) {', '.join(missing)}",
        where=path,
        line=1,
        why=f"its header has {', '.join(fields) or 'nothing'}",
        fix="check the file and the dataset format",
      )
    for row in reader:
      if None in row or any(v is None for v in row.values()):
        n = (
          len(row) - (None in row) + len(row.get(None) or []) - sum(v is None for v in row.values())
        )
        raise DatasetFileError(
          f"{what} has a row of {n} fields",
          where=path,
          line=reader.line_num,
          why=f"the header has {len(fields)}",
          fix="repair or re-download the file",
        )
      yield row
  except csv.Error as e:
    raise DatasetFileError(
      f"{what} is not valid CSV", where=path, line=reader.line_num, why=str(e)
    ) from None


def finish(studies: list[Study], skips: SkipLog) -> list[Study]:
  """Count the studies as good, then enforce the bad-fraction limit."""
  skips.ok(len(studies))
  skips.check()
  return studies
