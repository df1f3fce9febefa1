"""Reading and checking the prediction and reference JSON-lines files of `evaluate`.

Every problem a user can fix is a `UserError` naming the file and line: a missing
or empty file, bytes that are not UTF-8, a line that is not one JSON object, a
missing, null or wrongly typed field, a duplicate id, a prediction without a
reference, or speed statistics that are not finite numbers. A UTF-8 byte-order
mark at the start of a file is accepted (editors on Windows write one).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from echo_jax.user_errors import UserError

STAT_KEYS = ("tpf", "tokens_per_second", "tokens", "forwards", "seconds")
_ONE_OBJECT = "write one JSON object per line"


def read_jsonl(path: str) -> list[tuple[int, dict[str, Any]]]:
  """(line number, object) of every non-blank line; UserError for anything else."""
  if not os.path.exists(path):
    raise UserError("file not found", where=path, fix="check the path")
  if not os.path.isfile(path):
    raise UserError("not a file", where=path, fix="pass a JSON-lines file, not a directory")
  out = []
  with open(path, "rb") as f:
    raw_lines = f.read().split(b"\n")
  for n, raw in enumerate(raw_lines, 1):
    if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
      raw = raw[3:]  # UTF-8 byte-order mark
    try:
      line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
      raise UserError(
        "bytes that are not UTF-8",
        where=path,
        line=n,
        why=f"byte {raw[e.start]:#04x} at column {e.start + 1}",
        fix="save the file as UTF-8",
      ) from None
    if not line.strip():
      continue
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      raise UserError(
        "malformed JSON", where=path, line=n, why=f"{e.msg} at column {e.colno}", fix=_ONE_OBJECT
      ) from None
    except RecursionError:
      raise UserError("JSON nested too deeply", where=path, line=n, fix=_ONE_OBJECT) from None
    if not isinstance(obj, dict):
      raise UserError(
        "not a JSON object",
        where=path,
        line=n,
        why=f"the line is a JSON {_kind(obj)}",
        fix=_ONE_OBJECT,
      )
    out.append((n, obj))
  if not out:
    raise UserError("no records", where=path, why="the file is empty", fix=_ONE_OBJECT)
  return out


_TYPE_NAMES = {list: "array", dict: "object", str: "string", bool: "boolean", int: "number"}
_TYPE_NAMES[float] = "number"


def _kind(value: Any) -> str:
  """The JSON name of a parsed value's type."""
  return "null" if value is None else _TYPE_NAMES.get(type(value), type(value).__name__)


def _a(value: Any) -> str:
  """'a string', 'an array': the kind with its article."""
  kind = _kind(value)
  return ("an " if kind[0] in "aeiou" else "a ") + kind


def _field(obj: Mapping[str, Any], key: str, kinds: tuple[type, ...], path: str, n: int) -> Any:
  """obj[key] when present, not null and of one of `kinds`; UserError otherwise."""
  want = " or ".join(dict.fromkeys(_TYPE_NAMES[k] for k in kinds))
  if key not in obj:
    raise UserError(f"missing field {key!r}", where=path, line=n, fix=f"give every line a {key!r}")
  value = obj[key]
  if value is None:
    raise UserError(f"field {key!r} is null", where=path, line=n, fix=f"give a {want}")
  if not isinstance(value, kinds) or isinstance(value, bool):
    raise UserError(f"field {key!r} is {_a(value)}", where=path, line=n, fix=f"give a {want}")
  return value


def _optional(obj: Mapping[str, Any], key: str, kinds: tuple[type, ...], path: str, n: int) -> Any:
  return None if obj.get(key) is None else _field(obj, key, kinds, path, n)


def _image_paths(obj: Mapping[str, Any], path: str, n: int) -> None:
  for key in ("image_path", "images"):
    value = obj.get(key)
    if value is None or isinstance(value, str):
      continue
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
      raise UserError(
        f"field {key!r} is {_a(value)}",
        where=path,
        line=n,
        fix="give a path string or an array of path strings",
      )


def _stats(obj: Mapping[str, Any], path: str, n: int) -> None:
  stats = obj.get("stats")
  if stats is None:
    return
  if not isinstance(stats, dict):
    raise UserError(
      f"field 'stats' is {_a(stats)}", where=path, line=n, fix="give an object of numbers"
    )
  for key in STAT_KEYS:
    value = stats.get(key)
    if value is None:
      continue
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise UserError(f"stats.{key} is {_a(value)}", where=path, line=n, fix="give a number")
    if not math.isfinite(value) or value < 0:
      raise UserError(
        f"stats.{key} is {value}", where=path, line=n, fix="give a finite number >= 0"
      )


def _id(obj: Mapping[str, Any], path: str, n: int) -> str:
  return str(_field(obj, "id", (str, int), path, n))


def reference_text(obj: Mapping[str, Any], path: str, n: int) -> str:
  """'reference', else "Findings: ... Impression: ..." from the two sections."""
  if "reference" in obj:
    return _field(obj, "reference", (str,), path, n)
  if "findings" not in obj and "impression" not in obj:
    raise UserError(
      "missing field 'reference'",
      where=path,
      line=n,
      fix="give 'reference' or 'findings'/'impression'",
    )
  findings = _optional(obj, "findings", (str,), path, n) or ""
  impression = _optional(obj, "impression", (str,), path, n) or ""
  return f"Findings: {findings.strip()} Impression: {impression.strip()}"


def read_references(path: str) -> dict[str, dict[str, Any]]:
  """Reference lines by id, each with its text under 'reference'."""
  refs: dict[str, dict[str, Any]] = {}
  lines: dict[str, int] = {}
  for n, obj in read_jsonl(path):
    sid = _id(obj, path, n)
    if sid in refs:
      raise UserError(
        f"duplicate id {sid!r}",
        where=path,
        line=n,
        why=f"also on line {lines[sid]}",
        fix="give each study one line",
      )
    _image_paths(obj, path, n)
    refs[sid] = dict(obj, id=sid, reference=reference_text(obj, path, n))
    lines[sid] = n
  return refs


def load_records(pred_paths: Sequence[str], ref_path: str | None) -> list[dict[str, Any]]:
  """Checked prediction records with references attached and a model name on each."""
  refs = read_references(ref_path) if ref_path else None
  records = []
  seen: dict[tuple[str, str], tuple[str, int]] = {}
  for p in pred_paths:
    default_model = os.path.splitext(os.path.basename(p))[0] if len(pred_paths) > 1 else None
    for n, obj in read_jsonl(p):
      r = dict(obj)
      r["id"] = _id(obj, p, n)
      _field(obj, "prediction", (str,), p, n)
      model = _optional(obj, "model", (str,), p, n)
      r["model"] = model or default_model or "model"
      _stats(obj, p, n)
      _image_paths(obj, p, n)
      if refs is not None:
        ref = refs.get(r["id"])
        if ref is None:
          raise UserError(
            f"id {r['id']!r} has no reference",
            where=p,
            line=n,
            why=f"no line with that id in {ref_path}",
            fix="evaluate predictions of the same studies",
          )
        r["reference"] = ref["reference"]
        for k in ("image_path", "images"):
          if k in ref and k not in r:
            r[k] = ref[k]
      else:
        r["reference"] = reference_text(obj, p, n)
      key = (r["model"], r["id"])
      if key in seen:
        first = seen[key]
        raise UserError(
          f"duplicate id {r['id']!r} for model {r['model']!r}",
          where=p,
          line=n,
          why=f"also on line {first[1]}" if first[0] == p else f"also in {first[0]}:{first[1]}",
          fix="give each study one prediction per model",
        )
      seen[key] = (p, n)
      records.append(r)
  return records
