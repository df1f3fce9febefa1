"""Export a trained model as a Hugging Face Qwen2.5-VL directory that transformers and echo_jax load.

    python -m echo_jax.export --checkpoint workdir/dcd8 --out exported/
    python -m echo_jax.export --checkpoint workdir/checkpoints/400 --out exported/ --block_len 4

--checkpoint is an echo_jax training workdir (its newest checkpoint; a step directory
`workdir/checkpoints/<step>` picks that step) or a Hugging Face directory, found and
loaded as `python -m echo_jax.generate` does (echo_jax/runs.py), with the same tokenizer
search (--tokenizer, CHECKPOINT/tokenizer, CHECKPOINT, DATA_PATH/tokenizer, the workdir
config's data.tokenizer or data.path/tokenizer).

The directory written:
  model.safetensors          the weights (param dtype, unsharded; hf_import.save_pretrained)
  config.json                model_type qwen2_5_vl, plus `mask_token_id` and `block_length`
  generation_config.json     greedy decoding that stops at <|im_end|>
  tokenizer.json             the run's tokenizer, <|MASK|> included as a special token
  tokenizer_config.json      eos / pad / mask tokens and the chat template
  chat_template.jinja        the Qwen2.5-VL chat template (echo_jax/data/tokenizer.py)
  preprocessor_config.json   Qwen2-VL image processor with the run's pixel bounds
  video_preprocessor_config.json, processor_config.json   so AutoProcessor builds a
                             Qwen2_5_VLProcessor (transformers needs torchvision for the
                             video part of that processor, even for images only)

The block length and pixel bounds are the workdir's decoding profile (echo_jax/profiles.py:
its config.json `block_len`, `data.min_pixels` / `data.max_pixels`; for a Hugging Face
directory the block length its config.json states and the pixel bounds of its
preprocessor_config.json); flags override.
With transformers, pass `mm_token_type_ids` (0 text, 1 image) to `generate`, as the
processor does: without it the image tokens get 1-D positions instead of the 3-D ones
the model was trained with.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from echo_jax import profiles, runs
from echo_jax.data import images
from echo_jax.data import tokenizer as tokenizer_lib
from echo_jax.models import hf_import
from echo_jax.user_errors import UserError, run_cli

PROCESSOR_CLASS = "Qwen2_5_VLProcessor"
# Files of a previous export; anything else in --out is left alone, but refused as a target.
EXPORT_FILES = (
  "model.safetensors",
  "config.json",
  "generation_config.json",
  "tokenizer.json",
  "tokenizer_config.json",
  "chat_template.jinja",
  "preprocessor_config.json",
  "video_preprocessor_config.json",
  "processor_config.json",
)


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="python -m echo_jax.export",
    description=__doc__.split("\n\n")[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
    epilog=__doc__.split("\n", 1)[1],
  )
  p.add_argument("--checkpoint", required=True, help="echo_jax workdir (or step directory)")
  p.add_argument("--out", required=True, help="directory to write (created; must be empty)")
  p.add_argument("--tokenizer", default="", help="tokenizer directory or tokenizer.json")
  p.add_argument("--data_path", default="", help="dataset root holding tokenizer/")
  p.add_argument("--preset", default="tiny", help="model preset when the workdir names none")
  p.add_argument("--block_len", type=int, default=0, help="block length (default: the run's)")
  p.add_argument("--min_pixels", type=int, default=0, help="image area lower bound")
  p.add_argument("--max_pixels", type=int, default=0, help="image area upper bound")
  p.add_argument("--overwrite", action="store_true", help="replace a previous export in --out")
  return p


def generation_config(config: Any) -> dict[str, Any]:
  """Greedy decoding to <|im_end|>, the rule of echo_jax's AR sampler."""
  ids = config.tokens
  return {
    "bos_token_id": ids.pad,
    "eos_token_id": ids.eos,
    "pad_token_id": ids.pad,
    "do_sample": False,
    "num_beams": 1,
  }


def image_processor_config(image_config: images.ImageConfig) -> dict[str, Any]:
  """The Qwen2-VL image processor settings that reproduce images.preprocess."""
  return {
    "image_processor_type": "Qwen2VLImageProcessorPil",  # the one images.py matches exactly
    "processor_class": PROCESSOR_CLASS,
    "do_convert_rgb": True,
    "do_resize": True,
    "size": {"shortest_edge": image_config.min_pixels, "longest_edge": image_config.max_pixels},
    "resample": 3,  # PIL bicubic
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": list(image_config.image_mean),
    "image_std": list(image_config.image_std),
    "patch_size": image_config.patch_size,
    "temporal_patch_size": image_config.temporal_patch_size,
    "merge_size": image_config.merge_size,
  }


def video_processor_config(image_config: images.ImageConfig) -> dict[str, Any]:
  """The video half of the processor (never used by ECHO; the processor requires one)."""
  fields = image_processor_config(image_config)
  del fields["image_processor_type"]
  return {"video_processor_type": "Qwen2VLVideoProcessor", **fields}


def stated_pixels(path: str) -> tuple[int | None, int | None]:
  """(min_pixels, max_pixels) of a Hugging Face directory's preprocessor_config.json
  (`size` or the older top-level keys); None where it states none."""
  file = os.path.join(path, "preprocessor_config.json")
  if not os.path.isfile(file):
    return None, None
  try:
    with open(file) as f:
      pre = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError("preprocessor_config.json", where=file, why=str(e)) from None
  size = pre.get("size") if isinstance(pre.get("size"), dict) else {}
  low = size.get("shortest_edge", pre.get("min_pixels"))
  high = size.get("longest_edge", pre.get("max_pixels"))
  return (int(low) if low else None), (int(high) if high else None)


def _write_json(path: str, data: dict[str, Any]) -> None:
  with open(path, "w") as f:
    json.dump(data, f, indent=2)
    f.write("\n")


def write_export(
  model: Any,
  config: Any,
  tokenizer: tokenizer_lib.Tokenizer,
  out: str,
  *,
  block_len: int,
  image_config: images.ImageConfig,
) -> None:
  """Write every file of the export (see the module docstring) into `out`."""
  hf_import.save_pretrained(model, config, out, block_len=block_len)
  _write_json(os.path.join(out, "generation_config.json"), generation_config(config))
  tokenizer.save(out)
  with open(os.path.join(out, "chat_template.jinja"), "w") as f:
    f.write(tokenizer_lib.QWEN2_5_VL_CHAT_TEMPLATE)
  _write_json(os.path.join(out, "preprocessor_config.json"), image_processor_config(image_config))
  _write_json(
    os.path.join(out, "video_preprocessor_config.json"), video_processor_config(image_config)
  )
  _write_json(os.path.join(out, "processor_config.json"), {"processor_class": PROCESSOR_CLASS})


def _check_out(out: str, overwrite: bool) -> None:
  if os.path.exists(out) and not os.path.isdir(out):
    raise UserError(f"--out {out}", why="exists and is not a directory")
  previous = [f for f in EXPORT_FILES if os.path.exists(os.path.join(out, f))]
  if previous and not overwrite:
    raise UserError(
      f"--out {out}",
      why=f"already holds {', '.join(previous)}",
      fix="pick another directory or pass --overwrite",
    )


def main(argv: Sequence[str] | None = None) -> str:
  args = _parser().parse_args(argv)
  for flag in ("block_len", "min_pixels", "max_pixels"):
    if getattr(args, flag) < 0:
      raise UserError(f"--{flag} {getattr(args, flag)}", why="must be positive")
  if not os.path.isdir(args.checkpoint):
    raise UserError(f"--checkpoint {args.checkpoint}", why="no such directory")
  if os.path.abspath(args.out) == os.path.abspath(args.checkpoint):
    raise UserError(f"--out {args.out}", why="is the checkpoint itself")
  _check_out(args.out, args.overwrite)

  hf_dir = runs.is_hf_dir(args.checkpoint)
  saved = {} if hf_dir else runs.workdir_config(args.checkpoint)
  # A Hugging Face directory states its block length in config.json, if anywhere.
  stated = hf_import.config_block_len(hf_import.read_config(args.checkpoint)) if hf_dir else None
  min_pixels, max_pixels = stated_pixels(args.checkpoint) if hf_dir else (None, None)
  profile = profiles.profile_for(args.checkpoint, saved).with_overrides(
    block_len=args.block_len or stated,
    min_pixels=args.min_pixels or min_pixels,
    max_pixels=args.max_pixels or max_pixels,
  )
  tokenizer = tokenizer_lib.load_tokenizer(
    runs.find_tokenizer(args.checkpoint, saved, explicit=args.tokenizer, data_path=args.data_path)
  )
  model, config = runs.load_model(args.checkpoint, saved, tokenizer, preset=args.preset)
  try:
    tokenizer.check_ids(config.tokens)
    image_config = images.ImageConfig.from_vision_config(
      config.vision, min_pixels=profile.min_pixels, max_pixels=profile.max_pixels
    )
  except ValueError as e:
    raise UserError("export", where=args.checkpoint, why=str(e)) from None
  os.makedirs(args.out, exist_ok=True)
  write_export(
    model, config, tokenizer, args.out, block_len=profile.block_len, image_config=image_config
  )
  print(
    f"wrote {args.out}: block length {profile.block_len}, mask id {config.tokens.mask}, "
    f"pixels {image_config.min_pixels}..{image_config.max_pixels}",
    file=sys.stderr,
  )
  return args.out


if __name__ == "__main__":
  sys.exit(run_cli(main))
