"""Which token id is the diffusion mask `<|MASK|>` of a Hugging Face model directory.

A directory can name the mask id in three places; they are tried in this order (the
order of the released ECHO inference code):

1. `config.json`: `mask_token_id` (top level or inside `text_config`);
2. the tokenizer's mask token: `tokenizer_config.json` `mask_token` (a string or an
   `{"content": ...}` object), looked up in `tokenizer.json`;
3. the id of the string `<|MASK|>` in `tokenizer.json`.

The released code silently takes the first one it finds. Here every source that is
present must agree: two different ids mean the weights and the tokenizer do not belong
together, and decoding with the wrong mask id produces fluent nonsense rather than an
error. So disagreement is refused with a message naming each source and its id.

Files are read as JSON data only; nothing in the directory is imported or run.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

from echo_jax.models.checkpoint_error import CheckpointError

MASK_TOKEN = "<|MASK|>"


@dataclasses.dataclass(frozen=True)
class MaskId:
  """The resolved id and where it came from ("config.json mask_token_id", ...)."""

  id: int
  source: str


def config_mask_id(hf: dict[str, Any]) -> int | None:
  """`mask_token_id` of a config.json dict (top level wins over text_config), or None."""
  for where in (hf, hf.get("text_config") or {}):
    value = where.get("mask_token_id")
    if value is not None:
      if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"config.json has mask_token_id={value!r}; expected a non-negative int")
      return value
  return None


def _token_ids(tokenizer_json: dict[str, Any]) -> dict[str, int]:
  """Token string -> id from a tokenizer.json dict: the model vocabulary plus added tokens."""
  vocab = (tokenizer_json.get("model") or {}).get("vocab") or {}
  ids = dict(vocab) if isinstance(vocab, dict) else {}
  for added in tokenizer_json.get("added_tokens") or ():
    if isinstance(added, dict) and "content" in added and "id" in added:
      ids[added["content"]] = int(added["id"])
  return ids


def _read_json(path: pathlib.Path) -> dict[str, Any] | None:
  if not path.is_file():
    return None
  try:
    data = json.loads(path.read_text(encoding="utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path} is not valid JSON ({e}); download it again") from None
  return data if isinstance(data, dict) else None


def mask_id_sources(path: str | pathlib.Path, hf: dict[str, Any]) -> list[MaskId]:
  """Every mask id the directory states, in priority order (see the module docstring)."""
  path = pathlib.Path(path)
  found: list[MaskId] = []
  from_config = config_mask_id(hf)
  if from_config is not None:
    found.append(MaskId(from_config, "config.json mask_token_id"))
  tok_json = _read_json(path / "tokenizer.json")
  ids = _token_ids(tok_json) if tok_json else {}
  tok_config = _read_json(path / "tokenizer_config.json") or {}
  mask_token = tok_config.get("mask_token")
  if isinstance(mask_token, dict):
    mask_token = mask_token.get("content")
  if isinstance(mask_token, str) and mask_token in ids:
    found.append(MaskId(ids[mask_token], f"tokenizer mask_token {mask_token!r}"))
  if MASK_TOKEN in ids:
    found.append(MaskId(ids[MASK_TOKEN], f"tokenizer.json id of {MASK_TOKEN}"))
  return found


def resolve_mask_id(
  path: str | pathlib.Path, hf: dict[str, Any], explicit: int | None = None
) -> MaskId | None:
  """The directory's mask id, or None when it states none.

  `explicit` (a caller's `mask_token_id=`) counts as one more source, first in order.
  Raises ValueError when two sources give different ids.
  """
  sources = mask_id_sources(path, hf)
  if explicit is not None:
    sources.insert(0, MaskId(int(explicit), "the mask_token_id argument"))
  if not sources:
    return None
  if len({s.id for s in sources}) > 1:
    listed = ", ".join(f"{s.source} = {s.id}" for s in sources)
    raise CheckpointError(
      "mask token ids that disagree",
      where=str(path),
      why=f"{listed}; the weights and the tokenizer do not belong together",
      fix="use the tokenizer shipped with these weights, or fix mask_token_id in config.json",
    )
  return sources[0]
