"""Generate chest X-ray reports with a trained model.

One study (its images), report printed with its speed:
  python -m echo_jax.generate --checkpoint workdir/dcd8 --images a.png [b.dcm ...] \\
      [--sampler one_step|multi_step|ar] [--block_len 8]
A dataset split to JSONL (one {"id", "prediction", "reference", "stats", "images"} per study,
the input of `python -m echo_jax.evaluate`):
  python -m echo_jax.generate --checkpoint workdir/dcd8 --dataset r2gen \\
      --data_path workdir/synthetic --split test --out preds.jsonl

Decoding profile (echo_jax.profiles): a released ECHO directory (Midea-AIRC/ECHO_block8,
ECHO_Base_block4, ...) decodes as the authors' scripts do (--profile released: global block
grid, 256*28*28..2250000 pixels, 512 tokens, one step for ECHO_block*, steps = B for
ECHO_Base_block*; --lang zh for the Chinese instruction); anything else with the echo_jax
profile (block length and sampler from the workdir's config.json). Flags override.

--checkpoint is an echo_jax training workdir (its newest checkpoint's `model`; a step
directory `workdir/checkpoints/<step>` picks that step) or a Hugging Face Qwen2.5-VL
directory (config.json + *.safetensors, read by echo_jax.load_pretrained). The model
config of a workdir comes from a `config.json` in it when it holds an echo_jax config
(its `model.preset`, dtypes and `data.*` image and context sizes), else from --preset.
The tokenizer: --tokenizer, else the first of CHECKPOINT/tokenizer, CHECKPOINT itself,
DATA_PATH/tokenizer, the workdir config's data.tokenizer or data.path/tokenizer (the
synthetic benchmark keeps its tokenizer at DATA/tokenizer).

Sizes: every study is padded to one context length and one patch count so the sampler
compiles once; by default both are the bound for --max_images images of at most
--max_pixels pixels (--context_len / --max_patches override). Timings exclude
compilation (echo_jax.inference: the first batch is decoded once untimed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from echo_jax import profiles

SAMPLERS = ("one_step", "multi_step", "ar")


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="python -m echo_jax.generate",
    description=__doc__.split("\n\n")[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
    epilog=__doc__.split("\n", 1)[1],
  )
  p.add_argument("--checkpoint", required=True, help="echo_jax workdir or Hugging Face directory")
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--images", nargs="+", help="the images of one study (PNG, JPEG, DICOM)")
  src.add_argument(
    "--dataset", help="a reader of echo_jax.data.readers (r2gen, mimic-cxr-jpg, ...)"
  )
  p.add_argument("--data_path", help="dataset root (with --dataset)")
  p.add_argument("--split", default="test", help="train | val | test (with --dataset)")
  p.add_argument("--images_root", default="", help="root of the dataset's relative image paths")
  p.add_argument("--num_studies", type=int, default=0, help="first N studies only (0 = all)")
  p.add_argument("--out", help="JSONL file of the predictions (with --dataset)")
  p.add_argument(
    "--profile",
    choices=profiles.PROFILES,
    default="auto",
    help="decoding profile (auto: released for a released ECHO directory, else echo_jax); "
    "the flags below override its fields",
  )
  p.add_argument("--lang", choices=profiles.LANGS, default="en", help="instruction language")
  p.add_argument("--sampler", choices=SAMPLERS, help="default: the profile's")
  p.add_argument("--block_len", type=int, help="block length (default: the profile's)")
  p.add_argument("--steps", type=int, default=0, help="multi_step: steps per block (0 = block_len)")
  p.add_argument("--threshold", type=float, help="multi_step confidence threshold (0.85)")
  p.add_argument("--max_new_tokens", type=int, help="length budget (default: the profile's)")
  p.add_argument(
    "--loop_guard", type=int, default=0, metavar="N", help="stop N-gram loops (0 = off)"
  )
  p.add_argument("--batch_size", type=int, default=8)
  p.add_argument("--preset", default="tiny", help="model preset of a workdir without config.json")
  p.add_argument("--dtype", default="", help="float32 | bfloat16 (default: the model's)")
  p.add_argument("--tokenizer", default="", help="tokenizer.json or its directory")
  p.add_argument("--min_pixels", type=int, default=0, help="default: the profile's")
  p.add_argument("--max_pixels", type=int, default=0, help="default: the profile's")
  p.add_argument("--max_images", type=int, default=0, help="images per study (default: the data's)")
  p.add_argument("--context_len", type=int, default=0, help="padded context (0 = the bound)")
  p.add_argument("--max_patches", type=int, default=0, help="padded ViT patches (0 = the bound)")
  p.add_argument(
    "--mesh", default="", help="data,fsdp,tensor sizes, e.g. 1,1,4 (default: one device)"
  )
  return p


# ------------------------------------------------------------------ model and tokenizer
def is_hf_dir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, "config.json")) and any(
    f.endswith(".safetensors") or f.endswith(".safetensors.index.json") for f in os.listdir(path)
  )


def workdir_config(path: str) -> dict[str, Any]:
  """The echo_jax training config saved in a workdir (config.json), or {}."""
  for where in (path, os.path.dirname(os.path.dirname(path.rstrip("/")))):
    file = os.path.join(where, "config.json")
    if os.path.isfile(file):
      with open(file) as f:
        config = json.load(f)
      if isinstance(config, dict) and isinstance(config.get("model"), dict):
        return config
  return {}


def find_tokenizer(args: argparse.Namespace, saved: dict[str, Any]) -> str:
  """The first existing tokenizer location (see the module docstring)."""
  data = saved.get("data") or {}
  candidates = [
    args.tokenizer,
    os.path.join(args.checkpoint, "tokenizer"),
    args.checkpoint,
    os.path.join(args.data_path, "tokenizer") if args.data_path else "",
    data.get("tokenizer", ""),
    os.path.join(data["path"], "tokenizer") if data.get("path") else "",
  ]
  for c in candidates:
    if c and (
      os.path.isfile(os.path.join(c, "tokenizer.json"))
      or (os.path.isfile(c) and c.endswith(".json"))
    ):
      return c
  if args.tokenizer:
    raise SystemExit(f"--tokenizer {args.tokenizer}: no tokenizer.json there")
  tried = ", ".join(c for c in candidates[1:] if c)
  raise SystemExit(f"no tokenizer found (tried {tried}); pass --tokenizer PATH")


def load_model(args: argparse.Namespace, tokenizer: Any, saved: dict[str, Any]) -> tuple[Any, Any]:
  """(EchoVLM, ModelConfig) from the checkpoint; the token ids are the tokenizer's."""
  import jax
  from flax import nnx

  from echo_jax.models.presets import get_preset
  from echo_jax.models.vlm import EchoVLM
  from echo_jax.train.checkpoint import restore_model_state

  if is_hf_dir(args.checkpoint):
    from echo_jax.models.hf_import import load_pretrained

    return load_pretrained(args.checkpoint, dtype=args.dtype or "float32", token_ids=tokenizer.ids)
  model_cfg = saved.get("model") or {}
  config = get_preset(model_cfg.get("preset", args.preset))
  dtype = args.dtype or model_cfg.get("dtype", config.dtype)
  config = config.replace(dtype=dtype, param_dtype=model_cfg.get("param_dtype", dtype))
  abstract_model = nnx.eval_shape(lambda: EchoVLM(config, rngs=nnx.Rngs(0)))
  graphdef, abstract = nnx.split(abstract_model)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(
    lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract
  )
  return nnx.merge(graphdef, restore_model_state(args.checkpoint, abstract)), config


# ------------------------------------------------------------------ studies and sizes
def image_bound(max_pixels: int, patch: int = 14, merge: int = 2) -> int:
  """Most ViT patches of one still image resized to at most max_pixels (multiple of merge**2)."""
  cells = max_pixels // (patch * patch)
  return max(merge * merge, cells // (merge * merge) * (merge * merge))


def example_sizes(
  tokenizer: Any,
  config: Any,
  max_pixels: int,
  num_images: int,
  block_len: int,
  instruction: str | None = None,
) -> tuple[int, int]:
  """(context_len, max_patches) that fit num_images images of at most max_pixels."""
  from echo_jax.data import tokenizer as tokenizer_lib

  v = config.vision
  per_image = image_bound(max_pixels, v.patch_size, v.spatial_merge_size)
  tokens = per_image // v.spatial_merge_size**2
  prompt = len(
    tokenizer_lib.encode_prompt(
      tokenizer, [tokens] * num_images, instruction or tokenizer_lib.ECHO_INSTRUCTION
    )
  )
  return math.ceil(prompt / block_len) * block_len, per_image * num_images


def read_studies(args: argparse.Namespace) -> list[Any]:
  from echo_jax.data.study import Study

  if args.images:
    missing = [p for p in args.images if not os.path.isfile(p)]
    if missing:
      raise SystemExit(f"no such image file(s): {missing}")
    paths = tuple(os.path.abspath(p) for p in args.images)
    return [Study("input", paths, ("",) * len(paths), "", "", "test")]
  if not args.data_path:
    raise SystemExit("--dataset needs --data_path")
  from echo_jax.data import readers

  kwargs = {"images_root": args.images_root} if args.images_root else {}
  studies = readers.read_dataset(args.dataset, args.data_path, splits=[args.split], **kwargs)
  if args.num_studies:
    studies = studies[: args.num_studies]
  if not studies:
    raise SystemExit(f"no {args.split} studies in {args.data_path}")
  return studies


def _mesh(spec: str) -> Any:
  if not spec:
    return None
  import ml_collections

  from echo_jax.train import mesh as mesh_lib

  sizes = [int(x) for x in spec.split(",")]
  if len(sizes) != 3:
    raise SystemExit(f"--mesh {spec!r}: give data,fsdp,tensor, e.g. 1,1,4")
  return mesh_lib.make_mesh(ml_collections.ConfigDict(dict(zip(mesh_lib.AXES, sizes))))


# ------------------------------------------------------------------ main
def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
  args = _parser().parse_args(argv)
  if args.dataset and not args.out:
    raise SystemExit("--dataset writes JSONL: pass --out FILE.jsonl")
  if not os.path.isdir(args.checkpoint):
    raise SystemExit(f"--checkpoint {args.checkpoint}: no such directory")

  from echo_jax import inference
  from echo_jax.data import images
  from echo_jax.data import tokenizer as tokenizer_lib
  from echo_jax.data.pipeline import StudyExamples
  from echo_jax.sampling import RepetitionGuard

  saved = {} if is_hf_dir(args.checkpoint) else workdir_config(args.checkpoint)
  tokenizer = tokenizer_lib.load_tokenizer(find_tokenizer(args, saved))
  model, config = load_model(args, tokenizer, saved)
  tokenizer.check_ids(config.tokens)
  studies = read_studies(args)

  profile = profiles.profile_for(
    args.checkpoint, saved, profile=args.profile, lang=args.lang
  ).with_overrides(
    sampler=args.sampler,
    block_len=args.block_len,
    steps=args.steps or None,
    threshold=args.threshold,
    max_new_tokens=args.max_new_tokens,
    min_pixels=args.min_pixels or None,
    max_pixels=args.max_pixels or None,
  )
  min_pixels, max_pixels = profile.min_pixels, profile.max_pixels
  num_images = args.max_images or max(len(s.image_paths) for s in studies)
  block = 1 if profile.sampler == "ar" else profile.block_len
  context_len, max_patches = example_sizes(
    tokenizer, config, max_pixels, num_images, block, profile.instruction
  )
  example_fn = StudyExamples(
    tokenizer=tokenizer,
    model_config=config,
    image_config=images.ImageConfig.from_vision_config(
      config.vision, min_pixels=min_pixels, max_pixels=max_pixels
    ),
    context_len=args.context_len or context_len,
    response_len=block,  # unused by generation
    max_patches=args.max_patches or max_patches,
    instruction=profile.instruction,
  )
  sampler = profiles.make_sampler(
    profile,
    config.tokens,
    repetition=RepetitionGuard(ngram=args.loop_guard) if args.loop_guard else None,
  )
  batch_size = 1 if args.images else args.batch_size
  generator = inference.ReportGenerator(
    model, tokenizer, example_fn, batch_size=batch_size, mesh=_mesh(args.mesh)
  )
  start = time.perf_counter()
  rows = generator.generate(studies, sampler, progress=bool(args.dataset) and profile.sampler)
  total = time.perf_counter() - start
  summary = inference.speed_summary(rows)

  if args.images:
    row = rows[0]
    print(row["prediction"])
    print(
      f"[{profile.sampler}] TPF {summary['tpf']:.2f} ({row['tokens']} tokens, {row['forwards']} "
      f"forwards), latency {summary['ms_per_report']:.1f} ms, "
      f"{summary['tokens_per_second']:.1f} tokens/s; first call with compilation {total:.1f} s",
      file=sys.stderr,
    )
    return rows
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w", encoding="utf-8") as f:
    for row, study in zip(rows, studies, strict=True):
      record = {
        "id": row["id"],
        "prediction": row["prediction"],
        "reference": row["reference"],
        "stats": inference.row_stats(row),
        "images": list(study.image_paths),
      }
      f.write(json.dumps(record) + "\n")
  print(
    f"[{profile.sampler}] {summary['reports']} reports -> {args.out}: TPF {summary['tpf']:.2f}, "
    f"{summary['tokens_per_second']:.1f} tokens/s, {summary['ms_per_report']:.1f} ms/report, "
    f"{summary['loops']} loops (compile excluded; wall {total:.1f} s)",
    file=sys.stderr,
  )
  return rows


if __name__ == "__main__":
  main()
