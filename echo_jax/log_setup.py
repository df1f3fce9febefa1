"""Logging of the long-running commands: INFO from echo_jax, no per-save library chatter."""

from __future__ import annotations

import logging


class QuietLibraries(logging.Filter):
  """Keep Orbax's and Grain's per-save INFO chatter out of the log."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or not any(
      s in record.pathname for s in ("/orbax/", "/grain/")
    )


def log_to_stderr() -> None:
  """INFO and above to stderr with a timestamp, for commands not run through absl's app
  (absl installs its own root handler on import, which a plain basicConfig would keep)."""
  handler = logging.StreamHandler()
  handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
  handler.addFilter(QuietLibraries())
  logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
