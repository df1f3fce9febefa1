"""Decoding profiles: every setting that decides which report a checkpoint writes.

Two profiles:

* "released": the protocol of the authors' public ECHO checkpoints
  (Midea-AIRC/ECHO_block4, ECHO_block8, ECHO_Base_block4, ECHO_Base_block8).
  The global block grid from sequence index 0 (`grid="released"`, see
  sampling/released.py), images resized to between 256*28*28 and 2,250,000
  pixels, a budget of 512 new tokens, greedy decoding, the fused one-step decode
  for ECHO_block* and `steps = B` with threshold 0.85 for ECHO_Base_block*, the
  English or the Chinese instruction, and the released stop rule (EOS is only
  looked for among response positions; the text is cut at the first EOS).
* "echo_jax": checkpoints trained here. The aligned grid (the response starts on a
  block boundary, as training saw it); the block length and the sampler come from
  the workdir's config.json (`block_len`; stage ar -> "ar", rad -> "multi_step",
  dcd -> "one_step"); image sizes from its `data.*` keys. (The block length is the
  config's top-level `block_len`, or `rad.block_len` in older configs.)

`profile_for(path)` picks "released" for a directory that looks like a released
ECHO checkpoint (`looks_released`) and "echo_jax" otherwise; explicit settings
override any field (`with_overrides`). `make_sampler(profile, token_ids)` builds the
sampler.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

from echo_jax.data import tokenizer as tokenizer_lib
from echo_jax.models import hf_import, mask_id
from echo_jax.sampling import AutoregressiveSampler, MultiStepSampler, OneStepSampler, stops
from echo_jax.user_errors import UserError

PROFILES = ("auto", "released", "echo_jax")
LANGS = ("en", "zh")

# The instructions of the released inference scripts, character for character (the
# English one has no space after the first full stop in the authors' README command).
RELEASED_INSTRUCTIONS = {
  "en": "Review this chest X-ray and write a report.Use this format: Findings: {}, Impression: {}.",
  "zh": "这是一组胸部X光图像，请生成一份医学报告，包括所见和结论。以以下格式返回报告：所见：{} 结论：{}。",
}
RELEASED_MIN_PIXELS = 256 * 28 * 28
RELEASED_MAX_PIXELS = 2_250_000
RELEASED_MAX_NEW_TOKENS = 512
RELEASED_THRESHOLD = 0.85
# echo_jax's own defaults for a checkpoint without a saved config.
DEFAULT_MIN_PIXELS = 56 * 56
DEFAULT_MAX_PIXELS = 112 * 112
DEFAULT_MAX_NEW_TOKENS = 256

# ECHO_block8 (one step per block), ECHO_Base_block4 (multi-step), any case, any prefix.
_RELEASED_NAME = re.compile(r"ECHO(_Base)?_block(\d+)$", re.IGNORECASE)
_STAGE_SAMPLERS = {"ar": "ar", "rad": "multi_step", "dcd": "one_step"}


@dataclasses.dataclass(frozen=True)
class DecodingProfile:
  """What `generate` needs to decode like a given protocol (see the module docstring)."""

  name: str  # "released" | "echo_jax"
  sampler: str  # "one_step" | "multi_step" | "ar"
  block_len: int
  steps: int | None  # multi_step: denoising steps per block (None = block_len)
  threshold: float
  max_new_tokens: int
  grid: str  # "released" | "aligned"
  min_pixels: int
  max_pixels: int
  lang: str = "en"
  instruction: str = tokenizer_lib.ECHO_INSTRUCTION

  def with_overrides(self, **changes: Any) -> DecodingProfile:
    """A copy with the given fields replaced; None values are ignored (not given)."""
    return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def released_kind(path: str) -> tuple[str, int] | None:
  """(sampler, block length) from a released directory name, e.g. ECHO_Base_block4 ->
  ("multi_step", 4); None when the name is not one of the released ones."""
  match = _RELEASED_NAME.search(os.path.basename(os.path.normpath(path)))
  if match is None:
    return None
  return ("multi_step" if match.group(1) else "one_step"), int(match.group(2))


def looks_released(path: str) -> bool:
  """A released ECHO directory: named like one, or a Hugging Face directory whose
  config.json carries ECHO fields (a mask_token_id with custom modeling code)."""
  if released_kind(path) is not None:
    return True
  if not os.path.isfile(os.path.join(path, "config.json")):
    return False
  try:
    hf = hf_import.read_config(path)
  except ValueError:
    return False
  return "auto_map" in hf and mask_id.config_mask_id(hf) is not None


def released_profile(
  path: str = "", *, sampler: str | None = None, block_len: int | None = None, lang: str = "en"
) -> DecodingProfile:
  """The released protocol for the checkpoint at `path` (its name and config.json say
  one-step or multi-step and the block length; `sampler` / `block_len` when they don't)."""
  if lang not in LANGS:
    raise UserError(f"instruction language {lang!r}", fix=f"use one of {', '.join(LANGS)}")
  kind = released_kind(path) if path else None
  stated = _config_block_len(path) if path else None
  if kind is not None and stated is not None and kind[1] != stated:
    raise UserError(
      "a block length that disagrees with the directory name",
      where=os.path.join(path, "config.json"),
      why=f"the name says block length {kind[1]} but config.json says {stated}",
      fix="rename the directory or pass --block_len",
    )
  sampler = sampler or (kind[0] if kind else "one_step")
  block_len = block_len or stated or (kind[1] if kind else 8)
  return DecodingProfile(
    name="released",
    sampler=sampler,
    block_len=block_len,
    steps=block_len,
    threshold=RELEASED_THRESHOLD,
    max_new_tokens=RELEASED_MAX_NEW_TOKENS,
    grid="released",
    min_pixels=RELEASED_MIN_PIXELS,
    max_pixels=RELEASED_MAX_PIXELS,
    lang=lang,
    instruction=RELEASED_INSTRUCTIONS[lang],
  )


def echo_jax_profile(saved: dict[str, Any] | None = None, *, lang: str = "en") -> DecodingProfile:
  """The profile of an echo_jax workdir from its saved training config (or {})."""
  if lang != "en":
    raise UserError(
      f"instruction language {lang!r} for an echo_jax checkpoint",
      why="echo_jax checkpoints are trained with the English instruction only",
      fix="use --profile released for the released Chinese instruction",
    )
  saved = saved or {}
  data = saved.get("data") or {}
  rad = saved.get("rad") or {}
  stage = saved.get("stage")
  # Newer configs keep the block length at the top level, older ones under rad.
  block_len = saved.get("block_len") or rad.get("block_len") or 8
  return DecodingProfile(
    name="echo_jax",
    sampler=_STAGE_SAMPLERS.get(stage, "one_step"),
    block_len=int(block_len),
    steps=None,
    threshold=0.85,
    max_new_tokens=DEFAULT_MAX_NEW_TOKENS,
    grid="aligned",
    min_pixels=int(data.get("min_pixels") or DEFAULT_MIN_PIXELS),
    max_pixels=int(data.get("max_pixels") or DEFAULT_MAX_PIXELS),
  )


def profile_for(
  path: str, saved: dict[str, Any] | None = None, *, profile: str = "auto", lang: str = "en"
) -> DecodingProfile:
  """The profile named `profile` ("auto": released for a released directory, else
  echo_jax) for the checkpoint at `path`; `saved` is an echo_jax workdir's config."""
  if profile not in PROFILES:
    raise UserError(f"decoding profile {profile!r}", fix=f"use one of {', '.join(PROFILES)}")
  if profile == "released" or (profile == "auto" and not saved and looks_released(path)):
    return released_profile(path, lang=lang)
  if not saved and path and (stated := _config_block_len(path)):
    # A Hugging Face directory (python -m echo_jax.export) with its block length.
    return echo_jax_profile({"block_len": stated}, lang=lang)
  return echo_jax_profile(saved, lang=lang)


def make_sampler(
  profile: DecodingProfile, token_ids: Any, *, repetition: stops.RepetitionGuard | None = None
) -> Any:
  """The greedy sampler a profile describes (the budget rounded up to whole blocks)."""
  ids = {"eos_id": token_ids.eos, "mask_id": token_ids.mask, "pad_id": token_ids.pad}
  if profile.sampler == "ar":
    return AutoregressiveSampler(
      eos_id=ids["eos_id"],
      pad_id=ids["pad_id"],
      max_new_tokens=profile.max_new_tokens,
      repetition=repetition,
    )
  b = profile.block_len
  common = dict(
    ids,
    block_len=b,
    max_new_tokens=-(-profile.max_new_tokens // b) * b,
    repetition=repetition,
    grid=profile.grid,
  )
  if profile.sampler == "one_step":
    return OneStepSampler(**common)
  if profile.sampler == "multi_step":
    # The released multi-step code writes a finished block with a forward of its own;
    # same tokens as fusing it, and the forward count (TPF) is the released one.
    return MultiStepSampler(
      **common,
      steps=profile.steps or b,
      threshold=profile.threshold,
      fused_append=profile.grid != "released",
    )
  raise ValueError(f"unknown sampler {profile.sampler!r}; use one_step, multi_step or ar")


def _config_block_len(path: str) -> int | None:
  """The block length a Hugging Face config.json states (None for none or a workdir)."""
  if not os.path.isfile(os.path.join(path, "config.json")):
    return None
  hf = hf_import.read_config(path)
  if isinstance(hf.get("model"), dict):  # an echo_jax workdir config, not an HF one
    return None
  return hf_import.config_block_len(hf)
