"""Text that can be written anywhere: lone surrogates and control characters replaced.

Predictions come from a model or a user's file, so they may hold a lone UTF-16
surrogate (JSON's "\\ud83d" decodes to one) that no UTF-8 file or terminal can
encode, or control characters that HTML forbids. Output writers pass text through
`displayable` so that one such character never stops a report from being written.
"""

from __future__ import annotations

import re

REPLACEMENT = "\ufffd"
# Lone surrogates, and C0/C1 controls other than tab, newline and carriage return.
_UNWRITABLE = re.compile("[\ud800-\udfff\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def displayable(text: str) -> str:
  """`text` with every unwritable character replaced by U+FFFD."""
  return _UNWRITABLE.sub(REPLACEMENT, text)
