"""Files written whole or not at all: a temporary file in the same folder, then a rename.

Shared by the benchmark writer and its gallery, so a run killed mid-write never leaves a
truncated image, manifest or gallery behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
  """Writes `data` to `path` via a temporary file in the same folder and a rename."""
  path = Path(path)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def atomic_write_json(path: str | os.PathLike, obj) -> None:
  """Writes `obj` as indented JSON to `path`, atomically."""
  atomic_write_bytes(path, json.dumps(obj, indent=1).encode())
