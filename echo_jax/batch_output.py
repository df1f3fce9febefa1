"""The JSONL files of batch generation: checked before decoding, written line by line, resumable.

`python -m echo_jax.generate --dataset ... --out preds.jsonl` writes two files:
  preds.jsonl           one prediction record per decoded study
  preds.skipped.jsonl   one {"id", "images", "reason"} per study that could not be used
(`skipped_path` names the second: the out path without a final ".jsonl", plus
".skipped.jsonl"). Each line is written and flushed as soon as its batch is decoded, so
an interrupted run loses at most the batch in flight.

`check_out_path` runs before the model is loaded: a directory, a parent that cannot be
created or written, or an existing file without --resume / --overwrite is one clear line.
`read_done` reads what a previous run left: the ids of its complete lines; a last line
cut off by the interruption (no newline, or not JSON) is dropped from the file, so
appending the remaining studies gives the file one uninterrupted run would have written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any, TextIO

from echo_jax.user_errors import UserError


def skipped_path(out: str) -> str:
  """preds.jsonl -> preds.skipped.jsonl (any other name: NAME.skipped.jsonl)."""
  stem = out[: -len(".jsonl")] if out.endswith(".jsonl") else out
  return stem + ".skipped.jsonl"


def _writable_parent(path: str) -> str | None:
  """Why a file cannot be created at `path` (its nearest existing ancestor), or None."""
  parent = os.path.dirname(os.path.abspath(path))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    return f"{parent} is a file, not a directory"
  if not os.access(parent, os.W_OK | os.X_OK):
    return f"the directory {parent} is not writable"
  return None


def check_out_path(out: str, *, resume: bool = False, overwrite: bool = False) -> None:
  """Refuse an --out that would fail or destroy work only after decoding (module docstring)."""
  for path, flag in ((out, "--out"), (skipped_path(out), f"--out {out}: its skipped file")):
    if os.path.isdir(path):
      raise UserError(f"{flag} {path}", why="is a directory", fix="give a file name")
    if os.path.exists(path):
      if not os.access(path, os.W_OK):
        raise UserError(f"{flag} {path}", why="exists and is not writable")
    elif why := _writable_parent(path):
      raise UserError(f"{flag} {path}", why=f"cannot be created: {why}")
  if os.path.exists(out) and os.path.getsize(out) and not (resume or overwrite):
    raise UserError(
      f"--out {out}",
      why="already exists",
      fix="pass --resume to continue it (studies already written are not decoded again) "
      "or --overwrite to start afresh",
    )


def read_done(path: str) -> list[dict[str, Any]]:
  """The complete records of a JSONL file left by an earlier run; a cut-off last line is removed.

  A bad line before the last one is not an interrupted write: it is refused, naming the line.
  """
  if not os.path.exists(path):
    return []
  with open(path, "rb") as f:
    data = f.read()
  records, keep = [], 0
  lines = data.split(b"\n")
  for number, raw in enumerate(lines, 1):
    last = number == len(lines)  # the text after the final newline ("" when complete)
    if not raw.strip():
      if not last:
        keep += len(raw) + 1
      continue
    try:
      record = json.loads(raw)
      if not isinstance(record, dict) or "id" not in record:
        raise ValueError("not a record with an id")
    except ValueError as e:
      if last or number == len(lines) - 1 and not lines[-1]:
        break  # the line being written when the run stopped
      raise UserError(
        "cannot resume",
        where=path,
        line=number,
        why=f"line is not a JSON record ({e})",
        fix="repair or delete the file, or pass --overwrite",
      ) from None
    if last:
      break  # a complete JSON value without its newline: written again, to be sure it is whole
    records.append(record)
    keep += len(raw) + 1
  if keep != len(data):
    with open(path, "r+b") as f:
      f.truncate(keep)
  return records


class JsonlWriter:
  """Appends one JSON record per line, flushed at once (so a kill loses no written line)."""

  def __init__(self, path: str, *, fresh: bool):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    self.path = path
    self._file: TextIO = open(path, "w" if fresh else "a", encoding="utf-8")

  def write(self, records: Iterable[dict[str, Any]]) -> None:
    lines = "".join(json.dumps(r) + "\n" for r in records)
    if lines:
      self._file.write(lines)
      self._file.flush()

  def close(self) -> None:
    self._file.close()

  def __enter__(self) -> JsonlWriter:
    return self

  def __exit__(self, *exc: object) -> None:
    self.close()
