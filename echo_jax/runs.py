"""What a saved run is: its config, its checkpoint, its tokenizer and how it decodes.

A run is either an echo_jax training workdir (its `config.json` and the newest
checkpoint under `checkpoints/`; a step directory `workdir/checkpoints/<step>` picks
that step) or a Hugging Face Qwen2.5-VL directory (config.json + *.safetensors).
Every command that loads a trained model asks this module, so that the tests below
have one answer each:

  is_hf_dir          is this a Hugging Face directory
  workdir_config     the echo_jax config saved in a workdir ({} when none)
  saved_block_len    the block length a saved config was trained with (top-level
                     `block_len` in newer configs, `rad.block_len` in older ones)
  trained_block_lens that one and the mixed block lengths it also trained with
  find_tokenizer     the first existing tokenizer location
  trained_samplers   the samplers a stage's checkpoint was trained to decode with
  check_sampler      refuse a sampler the checkpoint was not trained for (unless forced)
  load_model         (EchoVLM, ModelConfig) of a run
  load_run           all of it at once: a `Run` holding the model, its config, the
                     tokenizer, the decoding profile, and the example builder and the
                     sampler that decode it as it was trained
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

import jax
from flax import nnx

from echo_jax import profiles
from echo_jax.data import images
from echo_jax.data import tokenizer as tokenizer_lib
from echo_jax.data.examples import StudyExamples
from echo_jax.models.config import ModelConfig
from echo_jax.models.hf_import import load_pretrained
from echo_jax.models.presets import get_preset
from echo_jax.models.vlm import EchoVLM
from echo_jax.sampling import stops
from echo_jax.train.checkpoint import restore_model_state
from echo_jax.user_errors import UserError

# Files a checkpoint may never be read from: pickles run code when loaded.
PICKLE_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt")

# The samplers each training stage's checkpoint decodes with as trained. A RAD teacher
# decoded in one step is the "teacher forced to one step" ablation of the paper: it runs
# only when asked for with force.
TRAINED_SAMPLERS = {
  "ar": ("ar",),
  "rad": ("multi_step",),
  "dcd": ("one_step", "multi_step"),
}


def is_hf_dir(path: str) -> bool:
  """A Hugging Face directory: config.json and safetensors weights (never pickles)."""
  if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, "config.json")):
    return False
  return any(
    f.endswith(".safetensors") or f.endswith(".safetensors.index.json") for f in os.listdir(path)
  )


def pickled_weights(path: str) -> list[str]:
  """The files of `path` that hold pickled weights (refused: loading them runs code)."""
  if not os.path.isdir(path):
    return []
  return sorted(f for f in os.listdir(path) if f.endswith(PICKLE_SUFFIXES))


def workdir_config(path: str) -> dict[str, Any]:
  """The echo_jax training config saved in a workdir (config.json), or {}.

  `path` is the workdir or one of its step directories (workdir/checkpoints/<step>)."""
  for where in (path, os.path.dirname(os.path.dirname(path.rstrip("/")))):
    file = os.path.join(where, "config.json")
    if os.path.isfile(file):
      try:
        with open(file) as f:
          config = json.load(f)
      except (OSError, ValueError) as e:
        raise UserError("config.json", where=file, why=str(e)) from None
      if isinstance(config, dict) and isinstance(config.get("model"), dict):
        return config
  return {}


def saved_block_len(config: dict[str, Any] | Any) -> int | None:
  """The block length a saved config was trained with, or None when it names none.

  Newer configs keep it at the top level (`block_len`), older workdirs under
  `rad.block_len`; a ConfigDict or a plain dict."""
  get = config.get if hasattr(config, "get") else (lambda k, d=None: getattr(config, k, d))
  value = get("block_len", None)
  if not value:
    rad = get("rad", None) or {}
    value = rad.get("block_len") if hasattr(rad, "get") else getattr(rad, "block_len", None)
  return int(value) if value else None


def trained_block_lens(config: dict[str, Any] | Any) -> tuple[int, ...]:
  """Every block length a saved config trained with: its block length, then the mixed
  ones (`mixed_block_lens`, top-level or under rad)."""
  get = config.get if hasattr(config, "get") else (lambda k, d=None: getattr(config, k, d))
  rad = get("rad", None) or {}
  mixed = get("mixed_block_lens", None) or (rad.get("mixed_block_lens") if rad else None) or ()
  first = saved_block_len(config)
  lens = ([first] if first else []) + [int(b) for b in mixed]
  return tuple(dict.fromkeys(lens))


def trained_samplers(stage: str | None) -> tuple[str, ...]:
  """The samplers a checkpoint of `stage` was trained for (all three when unknown)."""
  return TRAINED_SAMPLERS.get(stage or "", ("one_step", "multi_step", "ar"))


def check_sampler(stage: str | None, sampler: str, *, force: bool = False) -> None:
  """Refuse decoding a `stage` checkpoint with a sampler it was not trained for."""
  allowed = trained_samplers(stage)
  if sampler in allowed or force:
    return
  raise UserError(
    f"--sampler {sampler}",
    why=f"this {stage} checkpoint was trained to decode with {' or '.join(allowed)}",
    fix=f"use --sampler {allowed[0]}, or pass --force for the ablation",
  )


def find_tokenizer(
  checkpoint: str, saved: dict[str, Any], *, explicit: str = "", data_path: str = ""
) -> str:
  """The first existing tokenizer: `explicit`, CHECKPOINT/tokenizer, CHECKPOINT,
  DATA_PATH/tokenizer, the saved config's data.tokenizer, then data.path/tokenizer."""
  data = saved.get("data") or {}
  candidates = [
    explicit,
    os.path.join(checkpoint, "tokenizer"),
    checkpoint,
    os.path.join(data_path, "tokenizer") if data_path else "",
    data.get("tokenizer", ""),
    os.path.join(data["path"], "tokenizer") if data.get("path") else "",
  ]
  for c in candidates:
    if c and (
      os.path.isfile(os.path.join(c, "tokenizer.json"))
      or (os.path.isfile(c) and c.endswith(".json"))
    ):
      return c
  if explicit:
    raise UserError(f"--tokenizer {explicit}", why="no tokenizer.json there")
  tried = ", ".join(c for c in candidates[1:] if c)
  raise UserError("no tokenizer found", why=f"tried {tried}", fix="pass --tokenizer PATH")


def load_model(
  checkpoint: str,
  saved: dict[str, Any],
  tokenizer: Any,
  *,
  preset: str = "tiny",
  dtype: str = "",
) -> tuple[Any, Any]:
  """(EchoVLM, ModelConfig) of a run; the token ids are the tokenizer's."""
  if is_hf_dir(checkpoint):
    return load_pretrained(checkpoint, dtype=dtype or "float32", token_ids=tokenizer.ids)
  pickles = pickled_weights(checkpoint)
  if pickles and not os.path.isdir(os.path.join(checkpoint, "checkpoints")):
    raise UserError(
      f"--checkpoint {checkpoint}",
      why=f"holds pickled weights ({', '.join(pickles)}), which are never loaded",
      fix="convert them to safetensors",
    )
  model_cfg = saved.get("model") or {}
  config = get_preset(model_cfg.get("preset", preset))
  dtype = dtype or model_cfg.get("dtype", config.dtype)
  config = config.replace(dtype=dtype, param_dtype=model_cfg.get("param_dtype", dtype))
  return load_workdir_model(checkpoint, config), config


def load_workdir_model(checkpoint: str, config: Any) -> Any:
  """The EchoVLM of a workdir's newest (or a step directory's) checkpoint, on one device."""
  abstract_model = nnx.eval_shape(lambda: EchoVLM(config, rngs=nnx.Rngs(0)))
  graphdef, abstract = nnx.split(abstract_model)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(
    lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract
  )
  return nnx.merge(graphdef, restore_model_state(checkpoint, abstract))


# ------------------------------------------------------------------ the whole run
def image_bound(max_pixels: int, patch: int = 14, merge: int = 2) -> int:
  """Most ViT patches of one still image resized to at most max_pixels (multiple of merge**2)."""
  cells = max_pixels // (patch * patch)
  return max(merge * merge, cells // (merge * merge) * (merge * merge))


def example_sizes(
  tokenizer: Any,
  config: ModelConfig,
  max_pixels: int,
  num_images: int,
  block_len: int,
  instruction: str | None = None,
) -> tuple[int, int]:
  """(context_len, max_patches) that fit num_images images of at most max_pixels."""
  v = config.vision
  per_image = image_bound(max_pixels, v.patch_size, v.spatial_merge_size)
  tokens = per_image // v.spatial_merge_size**2
  prompt = len(
    tokenizer_lib.encode_prompt(
      tokenizer, [tokens] * num_images, instruction or tokenizer_lib.ECHO_INSTRUCTION
    )
  )
  return math.ceil(prompt / block_len) * block_len, per_image * num_images


@dataclasses.dataclass
class Run:
  """A loaded run: what decodes it as trained (see `load_run`).

  `saved` is the workdir's training config ({} for a Hugging Face directory) and
  `profile` the decoding profile: sampler, block length, grid, image sizes.
  """

  path: str
  model: EchoVLM
  config: ModelConfig
  tokenizer: tokenizer_lib.Tokenizer
  saved: dict[str, Any]
  profile: profiles.DecodingProfile

  @property
  def stage(self) -> str | None:
    """The training stage of a workdir ("ar", "rad", "dcd"), None for a Hugging Face one."""
    return self.saved.get("stage")

  def check_sampler(self, *, force: bool = False) -> None:
    """Refuse the profile's sampler when the checkpoint was not trained for it."""
    if self.saved:
      check_sampler(self.stage, self.profile.sampler, force=force)

  def examples(
    self, *, num_images: int | None = None, context_len: int = 0, max_patches: int = 0
  ) -> StudyExamples:
    """The Study -> example transform that decodes this run.

    The sizes are, in order: the ones given; for `num_images` images, the bound of the
    profile's max_pixels (block-aligned context); else the sizes the workdir trained
    with (`data.context_len`, `data.max_patches`); else the bound for one image.
    """
    data = self.saved.get("data") or {}
    profile = self.profile
    if num_images is None and data.get("context_len") and data.get("max_patches"):
      bound = (int(data["context_len"]), int(data["max_patches"]))
    else:
      block = 1 if profile.sampler == "ar" else profile.block_len
      bound = example_sizes(
        self.tokenizer,
        self.config,
        profile.max_pixels,
        num_images or 1,
        block,
        profile.instruction,
      )
    return StudyExamples(
      tokenizer=self.tokenizer,
      model_config=self.config,
      image_config=images.ImageConfig.from_vision_config(
        self.config.vision, min_pixels=profile.min_pixels, max_pixels=profile.max_pixels
      ),
      context_len=context_len or bound[0],
      response_len=int(data.get("response_len") or profile.block_len),  # unused by decoding
      max_patches=max_patches or bound[1],
      instruction=profile.instruction,
    )

  def sampler(self, *, repetition: stops.RepetitionGuard | None = None) -> Any:
    """The greedy sampler of the profile, with the model's token ids."""
    return profiles.make_sampler(self.profile, self.config.tokens, repetition=repetition)


def load_run(
  path: str,
  *,
  tokenizer: str = "",
  data_path: str = "",
  preset: str = "tiny",
  dtype: str = "",
  profile: str = "auto",
  lang: str = "en",
  **overrides: Any,
) -> Run:
  """Load a workdir (or one of its step directories) or a Hugging Face directory.

  The tokenizer is found as `find_tokenizer` says (`tokenizer` first); `preset` is
  the model of a workdir that saved no config; `profile`/`lang` pick the decoding
  profile (`profiles.profile_for`) and `overrides` replace its fields (None = keep:
  sampler, block_len, steps, threshold, max_new_tokens, min_pixels, max_pixels).
  """
  if not os.path.isdir(path):
    raise UserError(f"run {path}", why="no such directory")
  saved = {} if is_hf_dir(path) else workdir_config(path)
  decoding = profiles.profile_for(path, saved, profile=profile, lang=lang).with_overrides(
    **overrides
  )
  tok = tokenizer_lib.load_tokenizer(
    find_tokenizer(path, saved, explicit=tokenizer, data_path=data_path)
  )
  model, config = load_model(path, saved, tok, preset=preset, dtype=dtype)
  tok.check_ids(config.tokens)
  return Run(path, model, config, tok, saved, decoding)
