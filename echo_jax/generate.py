"""Generate chest X-ray reports with a trained model.

One study (its images), report printed with its speed:
  python -m echo_jax.generate --checkpoint workdir/dcd8 --images a.png [b.dcm ...] \\
      [--sampler one_step|multi_step|ar] [--block_len 8] [--force]
A dataset split to JSONL (one {"id", "prediction", "reference", "stats", "images"} per study,
the input of `python -m echo_jax.evaluate`):
  python -m echo_jax.generate --checkpoint workdir/dcd8 --dataset r2gen \\
      --data_path workdir/synthetic --split test --out preds.jsonl [--resume | --overwrite]
A TFDS build (python -m echo_jax.data.tfds_builder) is the dataset `tfds`, --data_path its
DATA_DIR/echo_cxr/CONFIG/1.0.0 (echo_jax/data/tfds_source.py): its studies are read record
by record; before decoding, each record of the split is read once (its id and image count:
the padded sizes and --resume need them); a study's "images" are names, tfds:<id>/<k>.png.

Batch runs lose nothing (echo_jax.batch_output): --out is checked before the model is
loaded (a directory, a parent that cannot be written, or an existing file without
--resume / --overwrite is one line, exit 2); each study's line is written and flushed as
soon as its batch is decoded; a study whose images cannot be used (an unreadable,
truncated or undecodable file: echo_jax.data.images.BadImageError) is left out and
written to preds.skipped.jsonl as {"id", "images", "reason"}, the reason naming the
file; the last line says how many were written and skipped, by reason. Once more than
--max_bad_fraction (0.05) of the studies seen, from 20 studies on, were skipped, the run
stops (exit 2) keeping what it wrote. --resume skips the ids already in both files (a
last line cut off by a kill is written again), so an interrupted run continues to the
file one uninterrupted run writes. --max_images N decodes the first N images of each
study. An image far from the trained sizes (more than 4x below min_pixels, or flat) is
one `warning:` line per file, and so is a --min_pixels / --max_pixels more than 4x away
from the workdir config's data.* value; EXIF orientation is applied on load.

Decoding profile (echo_jax.profiles): a released ECHO directory (Midea-AIRC/ECHO_block8,
ECHO_Base_block4, ...) decodes as the authors' scripts do (--profile released: global block
grid, 256*28*28..2250000 pixels, 512 tokens, one step for ECHO_block*, steps = B for
ECHO_Base_block*; --lang zh for the Chinese instruction); anything else with the echo_jax
profile (block length and sampler from the workdir's config.json: top-level block_len,
or rad.block_len in older workdirs). Flags override. A sampler the checkpoint was not
trained for is refused unless --force (an AR checkpoint decodes with ar only, a RAD
teacher with multi_step -- one_step on it is the "teacher forced to one step" ablation --
a DCD student with one_step or multi_step). Every flag is checked first; a bad one is
one line `error: --flag value: why` and exit status 2.

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
import collections
import contextlib
import dataclasses
import os
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any

import ml_collections
from tqdm.auto import tqdm

from echo_jax import batch_output, inference, profiles, runs
from echo_jax.data import datasets, images, readers
from echo_jax.data.study import Study
from echo_jax.data.tfds_source import NotATfdsDatasetError, TfdsStudies
from echo_jax.sampling import RepetitionGuard
from echo_jax.train import mesh as mesh_lib
from echo_jax.user_errors import UserError, run_cli

SAMPLERS = ("one_step", "multi_step", "ar")
# The bad fraction of a handful of studies says little (1 of 5 is 20%): it stops a run only
# once this many studies were seen.
MIN_STUDIES_FOR_BAD_FRACTION = 20
# A --max_pixels this many times away from the training run's data.max_pixels is warned about.
FAR_FROM_TRAINED_PIXELS = 4


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
    "--dataset",
    help="a reader of echo_jax.data.readers (r2gen, mimic-cxr-jpg, ...), or tfds: a dataset "
    "built by echo_jax.data.tfds_builder",
  )
  p.add_argument(
    "--data_path", help="dataset root (with --dataset; tfds: DATA_DIR/echo_cxr/CONFIG/1.0.0)"
  )
  p.add_argument("--split", default="test", help="train | val | test (with --dataset)")
  p.add_argument("--images_root", default="", help="root of the dataset's relative image paths")
  p.add_argument("--num_studies", type=int, default=0, help="first N studies only (0 = all)")
  p.add_argument("--out", help="JSONL file of the predictions (with --dataset)")
  existing = p.add_mutually_exclusive_group()
  existing.add_argument(
    "--resume",
    action="store_true",
    help="continue an existing --out: studies already in it (or its skipped file) are not decoded",
  )
  existing.add_argument("--overwrite", action="store_true", help="replace an existing --out")
  p.add_argument(
    "--max_bad_fraction",
    type=float,
    default=0.05,
    help="stop (exit 2) once more than this share of the studies had unusable images "
    f"(checked from {MIN_STUDIES_FOR_BAD_FRACTION} studies on; 1 = never stop)",
  )
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
  p.add_argument(
    "--batching",
    choices=inference.BATCHING,
    default="lockstep",
    help="continuous: a row whose report has ended takes the next study (same reports)",
  )
  p.add_argument("--preset", default="tiny", help="model preset of a workdir without config.json")
  p.add_argument("--dtype", default="", help="float32 | bfloat16 (default: the model's)")
  p.add_argument("--tokenizer", default="", help="tokenizer.json or its directory")
  p.add_argument("--min_pixels", type=int, default=0, help="default: the profile's")
  p.add_argument("--max_pixels", type=int, default=0, help="default: the profile's")
  p.add_argument("--max_images", type=int, default=0, help="images per study (default: the data's)")
  p.add_argument("--context_len", type=int, default=0, help="padded context (0 = the bound)")
  p.add_argument("--max_patches", type=int, default=0, help="padded ViT patches (0 = the bound)")
  p.add_argument(
    "--force",
    action="store_true",
    help="decode with a sampler the checkpoint was not trained for (an ablation)",
  )
  p.add_argument(
    "--mesh", default="", help="data,fsdp,tensor sizes, e.g. 1,1,4 (default: one device)"
  )
  return p


def validate_flags(args: argparse.Namespace) -> None:
  """Every numeric flag in range, the message in the flag's own name."""
  positive = ("block_len", "max_new_tokens", "batch_size")
  for name in positive:
    value = getattr(args, name)
    if value is not None and value <= 0:
      raise UserError(f"--{name} {value}", why="must be a positive integer")
  non_negative = (
    "steps", "num_studies", "loop_guard", "min_pixels", "max_pixels", "max_images",
    "context_len", "max_patches",
  )  # fmt: skip
  for name in non_negative:
    value = getattr(args, name)
    if value < 0:
      raise UserError(f"--{name} {value}", why="must be 0 (the default) or positive")
  if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
    raise UserError(f"--threshold {args.threshold:g}", why="a confidence, between 0 and 1")
  if not 0.0 <= args.max_bad_fraction <= 1.0:
    raise UserError(f"--max_bad_fraction {args.max_bad_fraction:g}", why="a share, between 0 and 1")
  if args.min_pixels and args.max_pixels and args.min_pixels > args.max_pixels:
    raise UserError(
      f"--min_pixels {args.min_pixels}", why=f"larger than --max_pixels {args.max_pixels}"
    )


def check_block_len(block_len: int, context_len: int, max_new_tokens: int) -> None:
  """A block length the sampler can decode with: it divides the padded context."""
  if context_len and context_len % block_len:
    raise UserError(
      f"--block_len {block_len}",
      why=f"does not divide the padded context (--context_len {context_len})",
      fix="pick a block length that divides it, or leave --context_len at 0",
    )
  if block_len > max_new_tokens:
    raise UserError(
      f"--block_len {block_len}", why=f"longer than the length budget ({max_new_tokens} tokens)"
    )


# ------------------------------------------------------------------ studies and sizes
def read_studies(args: argparse.Namespace) -> Sequence[Study]:
  """The studies to decode: a list, or for --dataset tfds a lazy TfdsStudies."""
  if args.images:
    missing = [p for p in args.images if not os.path.isfile(p)]
    if missing:
      raise SystemExit(f"no such image file(s): {missing}")
    paths = tuple(os.path.abspath(p) for p in args.images)
    return [Study("input", paths, ("",) * len(paths), "", "", "test")]
  if not args.data_path:
    raise SystemExit("--dataset needs --data_path")
  if args.dataset == datasets.TFDS:
    try:
      studies = TfdsStudies(args.data_path, args.split, max_images=args.max_images)
    except NotATfdsDatasetError as e:
      raise UserError(f"--data_path {args.data_path}", why=str(e)) from None
    if args.num_studies:
      studies = studies[: args.num_studies]
    if not studies:
      raise SystemExit(f"no {args.split} studies in {args.data_path}")
    return studies
  kwargs = {"images_root": args.images_root} if args.images_root else {}
  studies = readers.read_dataset(args.dataset, args.data_path, splits=[args.split], **kwargs)
  if args.num_studies:
    studies = studies[: args.num_studies]
  if not studies:
    raise SystemExit(f"no {args.split} studies in {args.data_path}")
  if args.max_images:
    # The first N images of each study (readers put frontal views first).
    n = args.max_images
    studies = [
      dataclasses.replace(
        s,
        image_paths=s.image_paths[:n],
        view_positions=s.view_positions[:n],
        images=s.images[:n],
      )
      for s in studies
    ]
  return studies


def ids_and_image_counts(studies: Sequence[Study]) -> list[tuple[str, int]]:
  """(id, number of images) per study; of a TfdsStudies one read of each record, no decoding."""
  if isinstance(studies, TfdsStudies):
    return studies.ids_and_image_counts()
  return [(str(s.id), len(s.image_paths)) for s in studies]


def select(studies: Sequence[Study], keep: Sequence[int]) -> Sequence[Study]:
  """The studies at `keep`; of a TfdsStudies a view (nothing is read)."""
  if isinstance(studies, TfdsStudies):
    return studies.select(keep)
  return [studies[i] for i in keep]


def _mesh(spec: str) -> Any:
  if not spec:
    return None
  sizes = [int(x) for x in spec.split(",")]
  if len(sizes) != 3:
    raise SystemExit(f"--mesh {spec!r}: give data,fsdp,tensor, e.g. 1,1,4")
  return mesh_lib.make_mesh(ml_collections.ConfigDict(dict(zip(mesh_lib.AXES, sizes))))


# ------------------------------------------------------------------ warnings
@contextlib.contextmanager
def image_warnings_as_lines() -> Any:
  """Print each images.ImageSizeWarning as one `warning: ...` line, once per image file."""
  seen: set[str] = set()
  with warnings.catch_warnings():
    warnings.simplefilter("always", images.ImageSizeWarning)
    show = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
      if not issubclass(category, images.ImageSizeWarning):
        return show(message, category, filename, lineno, file, line)
      key = getattr(message, "path", "") or str(message)
      if key not in seen:
        seen.add(key)
        # Through tqdm, so the line does not land in the middle of the progress bar.
        tqdm.write(f"warning: {message}", file=sys.stderr)

    warnings.showwarning = showwarning
    yield


def warn_far_from_training(saved: dict[str, Any], min_pixels: int, max_pixels: int) -> None:
  """One line when the decoding image sizes are far from the training run's data sizes."""
  data = saved.get("data") or {}
  for name, value in (("max_pixels", max_pixels), ("min_pixels", min_pixels)):
    trained = data.get(name)
    if not isinstance(trained, int) or trained <= 0:
      continue
    if value > trained * FAR_FROM_TRAINED_PIXELS or value * FAR_FROM_TRAINED_PIXELS < trained:
      print(
        f"warning: --{name} {value} is more than {FAR_FROM_TRAINED_PIXELS}x away from the "
        f"data.{name}={trained} the model was trained with; reports may degrade",
        file=sys.stderr,
      )


# ------------------------------------------------------------------ the dataset loop
def write_dataset(
  args: argparse.Namespace,
  generator: Any,
  studies: Sequence[Study],
  sampler: Any,
  sampler_name: str,
  counts: list[tuple[str, int]] | None = None,
) -> list[dict[str, Any]]:
  """Decode `studies` into --out line by line (batch_output), skipping unusable studies."""

  out, skipped_out = args.out, batch_output.skipped_path(args.out)
  fresh = not args.resume
  done = [] if fresh else batch_output.read_done(out) + batch_output.read_done(skipped_out)
  done_ids = {str(r["id"]) for r in done}
  todo = studies
  if done_ids:
    counts = counts if counts is not None else ids_and_image_counts(studies)
    todo = select(studies, [i for i, (sid, _) in enumerate(counts) if sid not in done_ids])
  num_done = len(studies) - len(todo)
  if done:
    print(f"resuming {out}: {num_done} of {len(studies)} studies already done", file=sys.stderr)
  reasons: collections.Counter[str] = collections.Counter(
    str(r.get("reason", "")).split(":")[0] for r in done if "prediction" not in r
  )
  reasons = collections.Counter({k: v for k, v in reasons.items() if k})
  rows: list[dict[str, Any]] = []
  seen = num_done
  skipped = sum(reasons.values())
  start = time.perf_counter()
  with (
    batch_output.JsonlWriter(out, fresh=fresh) as lines,
    batch_output.JsonlWriter(skipped_out, fresh=fresh) as bad,
  ):
    for batch_rows, batch_skipped in generator.iter_rows(
      todo, sampler, progress=sampler_name, skip=(images.BadImageError,)
    ):
      lines.write(
        {
          "id": row["id"],
          "prediction": row["prediction"],
          "reference": row["reference"],
          "stats": inference.row_stats(row),
          "images": row["images"],
        }
        for row in batch_rows
      )
      bad.write(
        {"id": s.study.id, "images": list(s.study.image_paths), "reason": s.detail}
        for s in batch_skipped
      )
      rows += batch_rows
      seen += len(batch_rows) + len(batch_skipped)
      skipped += len(batch_skipped)
      reasons.update(s.reason for s in batch_skipped)
      if seen >= MIN_STUDIES_FOR_BAD_FRACTION and skipped > args.max_bad_fraction * seen:
        _print_summary(args.out, sampler_name, rows, seen - skipped, skipped, reasons, start)
        raise UserError(
          f"--max_bad_fraction {args.max_bad_fraction:g}",
          why=f"{skipped} of the first {seen} studies had unusable images "
          f"({_reason_counts(reasons)}); stopped, the {seen - skipped} written are kept in {out}",
          fix=f"see {skipped_out}; check --data_path / --images_root, or raise "
          "--max_bad_fraction if this is expected (then --resume)",
        )
  _print_summary(args.out, sampler_name, rows, seen - skipped, skipped, reasons, start)
  return rows


def _reason_counts(reasons: collections.Counter[str]) -> str:
  return ", ".join(f"{reason}: {n}" for reason, n in reasons.most_common()) or "none"


def _print_summary(
  out: str,
  sampler_name: str,
  rows: list[dict[str, Any]],
  written: int,
  skipped: int,
  reasons: collections.Counter[str],
  start: float,
) -> None:
  """The run's last line: N written, M skipped by reason, this run's speed."""

  wall = time.perf_counter() - start
  speed = ""
  if rows:
    summary = inference.speed_summary(rows)
    speed = (
      f"; this run: {summary['reports']} reports, TPF {summary['tpf']:.2f}, "
      f"{summary['tokens_per_second']:.1f} tokens/s, {summary['ms_per_report']:.1f} ms/report, "
      f"lockstep occupancy {summary['lockstep_occupancy']:.2f}, "
      f"{summary['loops']} loops (compile excluded; wall {wall:.1f} s)"
    )
  print(
    f"[{sampler_name}] {written} written -> {out}, {skipped} skipped "
    f"({_reason_counts(reasons)}) -> {batch_output.skipped_path(out)}{speed}",
    file=sys.stderr,
  )


# ------------------------------------------------------------------ main
def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
  args = _parser().parse_args(argv)
  validate_flags(args)
  if args.dataset and not args.out:
    raise SystemExit("--dataset writes JSONL: pass --out FILE.jsonl")
  if args.out and args.dataset:
    # Before anything slow: a bad --out is found now, not after decoding the dataset.
    batch_output.check_out_path(args.out, resume=args.resume, overwrite=args.overwrite)
  if not os.path.isdir(args.checkpoint):
    raise SystemExit(f"--checkpoint {args.checkpoint}: no such directory")

  run = runs.load_run(
    args.checkpoint,
    tokenizer=args.tokenizer,
    data_path=args.data_path or "",
    preset=args.preset,
    dtype=args.dtype,
    profile=args.profile,
    lang=args.lang,
    sampler=args.sampler,
    block_len=args.block_len,
    steps=args.steps or None,
    threshold=args.threshold,
    max_new_tokens=args.max_new_tokens,
    min_pixels=args.min_pixels or None,
    max_pixels=args.max_pixels or None,
  )
  profile = run.profile
  run.check_sampler(force=args.force)
  block = 1 if profile.sampler == "ar" else profile.block_len
  if block > 1:
    check_block_len(block, args.context_len, profile.max_new_tokens)
  studies = read_studies(args)
  counts = ids_and_image_counts(studies)

  warn_far_from_training(run.saved, profile.min_pixels, profile.max_pixels)
  # Sizes from all the studies (not only those left to resume): the same shapes, the same
  # compiled sampler and the same reports as one uninterrupted run.
  example_fn = run.examples(
    num_images=max(n for _, n in counts),
    context_len=args.context_len,
    max_patches=args.max_patches,
  )
  sampler = run.sampler(
    repetition=RepetitionGuard(ngram=args.loop_guard) if args.loop_guard else None
  )
  batch_size = 1 if args.images else args.batch_size
  generator = inference.ReportGenerator.from_run(
    run, batch_size, examples=example_fn, mesh=_mesh(args.mesh), batching=args.batching
  )
  with image_warnings_as_lines():
    if args.dataset:
      return write_dataset(args, generator, studies, sampler, profile.sampler, counts)
    start = time.perf_counter()
    try:
      rows = generator.generate(studies, sampler)
    except images.BadImageError as e:
      raise UserError("--images", why=str(e)) from None
  total = time.perf_counter() - start
  summary = inference.speed_summary(rows)
  row = rows[0]
  print(row["prediction"])
  print(
    f"[{profile.sampler}] TPF {summary['tpf']:.2f} ({row['tokens']} tokens, {row['forwards']} "
    f"forwards), latency {summary['ms_per_report']:.1f} ms, "
    f"{summary['tokens_per_second']:.1f} tokens/s; first call with compilation {total:.1f} s",
    file=sys.stderr,
  )
  return rows


if __name__ == "__main__":
  sys.exit(run_cli(main))
