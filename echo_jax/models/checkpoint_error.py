"""The error of a checkpoint directory the user can fix (wrong files, disagreeing ids).

It is a `UserError` (one line and exit status 2 under `user_errors.run_cli`) and a
`ValueError` (what `load_pretrained` has always raised, so callers catching that keep
working).
"""

from __future__ import annotations

from echo_jax.user_errors import UserError


class CheckpointError(UserError, ValueError):
  """A checkpoint directory that cannot be loaded as it is; the message says how to fix it."""
