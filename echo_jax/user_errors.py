"""One error path for every command: user errors print one line and exit 2.

A user error is something the person running the command can fix (a bad flag, a
missing or malformed file, an unreadable image). It is raised as `UserError` and
printed as

    error: <what> in <file>[:<line>]: <why>; <what to do>

with exit status 2 and no traceback. Anything else is an internal error and keeps
its traceback, so that a bug is never disguised as bad input.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

EXIT_USER_ERROR = 2


class UserError(Exception):
  """An error the user can fix; `str()` is the one-line message (without "error: ")."""

  def __init__(
    self,
    what: str,
    *,
    where: str | None = None,
    line: int | None = None,
    why: str | None = None,
    fix: str | None = None,
  ) -> None:
    self.what, self.where, self.line, self.why, self.fix = what, where, line, why, fix
    super().__init__(self.message())

  def message(self) -> str:
    text = self.what
    if self.where:
      text += f" in {self.where}" + (f":{self.line}" if self.line is not None else "")
    if self.why:
      text += f": {self.why}"
    if self.fix:
      text += f"; {self.fix}"
    return " ".join(text.split())  # one line, whatever the parts contained


def report(error: UserError, stream: Any = None) -> int:
  """Print `error` as the one-line message and return the exit status to use."""
  print(f"error: {error.message()}", file=stream or sys.stderr, flush=True)
  return EXIT_USER_ERROR


def run_cli(main: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None) -> int:
  """Run a command's `main(argv)`: a UserError becomes one line and exit 2.

  `main` may return an int exit status (None means 0). Internal errors propagate with
  their traceback.
  """
  try:
    status = main(argv)
  except UserError as e:
    return report(e)
  return status if isinstance(status, int) else 0
