"""Data doctor: read a dataset through the real readers and image code and report on it.

  python -m echo_jax.data.check --format r2gen --root /data/iu_xray
  python -m echo_jax.data.check --format synthetic --root workdir/tiny/synthetic
  python -m echo_jax.data.check --format mimic-cxr-jpg --root /data/mimic-cxr-jpg \\
      --arg reports_root=/data/mimic-cxr --arg views=frontal --tokenizer /models/Lingshu-7B
  python -m echo_jax.data.check --format rexgradient --root /data/rexgradient \\
      --arg 'fields={"images": "image_paths"}' --limit 2000

Prints the number of studies and images per split, views, report lengths (tokens with
--tokenizer, else words), vision tokens per study, and every skipped study with its
reason (reader skips such as missing images or empty reports, and image skips such as
truncated files or decompression bombs). Exits 1 when the skipped fraction exceeds
--max-bad-fraction, 2 with one line `error: <what> in <file>[:<line>]: <why>; <what to
do>` when the dataset cannot be read at all (wrong root or format, a damaged file, a
bad flag). `synthetic` is the benchmark `python -m echo_jax.data.synthetic` writes (an
R2Gen layout with labels), read without writing anything.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import inspect
import json
import os
import sys
from collections.abc import Sequence

import numpy as np

from echo_jax.data.images import BadImageError, ImageConfig, load_image, preprocess, smart_resize
from echo_jax.data.readers import READERS, RexGradientFields, read_dataset
from echo_jax.data.study import SkipLog, Study
from echo_jax.data.tokenizer import Tokenizer, encode_prompt, encode_report, load_tokenizer
from echo_jax.user_errors import UserError, run_cli

# Dataset names the data doctor takes besides the reader formats, and the reader they use.
ALIASES = {"synthetic": "r2gen"}
FORMATS = tuple(sorted(READERS)) + tuple(ALIASES)


@dataclasses.dataclass
class CheckReport:
  """What `check_dataset` found; `skips` holds reader and image skips together."""

  studies: list[Study]  # studies whose every image loaded
  skips: SkipLog
  vision_tokens: list[int]  # per good study (0 when images were not decoded)
  report_lengths: list[int]  # per good study, tokens or words
  length_unit: str  # "tokens" or "words"
  prompt_lengths: list[int]  # context tokens per good study (with a tokenizer)


def _image_tokens(study: Study, config: ImageConfig, full: bool) -> int:
  """Decode every image of the study; merged vision tokens in total (BadImageError if bad)."""
  total = 0
  for path in study.image_paths:
    image = load_image(path, max_image_pixels=config.max_image_pixels)
    if full:
      _, grid = preprocess(image, config)
      h, w = int(grid[1]) * config.patch_size, int(grid[2]) * config.patch_size
    else:
      h, w = smart_resize(
        image.height, image.width, config.factor, config.min_pixels, config.max_pixels
      )
    total += (h // config.factor) * (w // config.factor)
  return total


def check_dataset(
  format: str,
  root: str,
  *,
  tokenizer: Tokenizer | None = None,
  reader_kwargs: dict | None = None,
  image_config: ImageConfig | None = None,
  decode_images: bool = True,
  full_preprocess: bool = False,
  limit: int | None = None,
  workers: int = 4,
) -> CheckReport:
  """Read and verify a dataset; never raises for bad entries (see CheckReport.skips)."""
  image_config = image_config or ImageConfig()
  reader_log = SkipLog(f"check {format}", max_bad_fraction=1.0, log_first=0)
  reader = ALIASES.get(format, format)
  studies = read_dataset(reader, root, skips=reader_log, **(reader_kwargs or {}))
  if limit is not None:
    studies = studies[:limit]
  log = SkipLog(f"check {format}", max_bad_fraction=1.0, log_first=0)  # printed, not logged
  for item in reader_log.skipped:
    log.skip(*item)

  tokens: list[int | BadImageError] = [0] * len(studies)
  if decode_images:
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
      futures = {
        pool.submit(_image_tokens, s, image_config, full_preprocess): i
        for i, s in enumerate(studies)
      }
      for future in concurrent.futures.as_completed(futures):
        try:
          tokens[futures[future]] = future.result()
        except BadImageError as e:
          tokens[futures[future]] = e

  good, vision, lengths, prompts = [], [], [], []
  for study, n in zip(studies, tokens):
    if isinstance(n, BadImageError):
      log.skip(study.id, n.reason, n.detail)
      continue
    if tokenizer is not None:
      try:
        lengths.append(len(encode_report(tokenizer, study.report)))
      except ValueError as e:
        log.skip(study.id, "bad_report_text", str(e))
        continue
      if decode_images:
        per_image = max(1, n // len(study.image_paths))
        prompts.append(len(encode_prompt(tokenizer, [per_image] * len(study.image_paths))))
    else:
      lengths.append(len(study.report.split()))
    good.append(study)
    vision.append(n)
  log.ok(len(good))
  unit = "tokens" if tokenizer is not None else "words"
  return CheckReport(good, log, vision, lengths, unit, prompts)


def _stats(values: Sequence[int]) -> str:
  if not values:
    return "n/a"
  a = np.asarray(values)
  return (
    f"min {a.min()}, mean {a.mean():.1f}, median {np.median(a):.1f}, "
    f"p95 {np.percentile(a, 95):.0f}, p99 {np.percentile(a, 99):.0f}, max {a.max()}"
  )


def format_report(report: CheckReport) -> str:
  """The human-readable summary `main` prints."""
  lines = []
  splits = collections.Counter(s.split for s in report.studies)
  images = collections.Counter()
  for s in report.studies:
    images[s.split] += len(s.image_paths)
  lines.append(
    f"studies: {len(report.studies)} usable  ({', '.join(f'{k} {v}' for k, v in sorted(splits.items()))})"
  )
  lines.append(
    f"images:  {sum(images.values())}  ({', '.join(f'{k} {v}' for k, v in sorted(images.items()))})"
  )
  lines.append(f"images per study: {_stats([len(s.image_paths) for s in report.studies])}")
  views = collections.Counter(v or "(unknown)" for s in report.studies for v in s.view_positions)
  lines.append(f"views: {', '.join(f'{k} {v}' for k, v in views.most_common())}")
  with_labels = sum(s.labels is not None for s in report.studies)
  no_findings = sum(not s.findings for s in report.studies)
  no_impression = sum(not s.impression for s in report.studies)
  lines.append(
    f"labels: {with_labels} studies; no findings: {no_findings}; no impression: {no_impression}"
  )
  lines.append(f"report length ({report.length_unit}): {_stats(report.report_lengths)}")
  if any(report.vision_tokens):
    lines.append(f"vision tokens per study: {_stats(report.vision_tokens)}")
  if report.prompt_lengths:
    lines.append(f"prompt length (tokens, with vision): {_stats(report.prompt_lengths)}")
  lines.append(report.skips.summary())
  for item_id, reason, detail in report.skips.skipped:
    lines.append(f"  skipped {item_id}: {reason}{': ' + detail if detail else ''}")
  return "\n".join(lines)


def _reader_arg(text: str) -> tuple[str, object]:
  key, sep, value = text.partition("=")
  if not sep or not key:
    raise argparse.ArgumentTypeError(f"--arg {text!r}: use key=value")
  try:
    parsed = json.loads(value)
  except json.JSONDecodeError:
    parsed = value
  return key, parsed


# The type a reader option needs, from its annotation (the readers use these spellings).
_ANNOTATION_TYPES = {
  "bool": (bool,),
  "int | None": (int, type(None)),
  "str | None": (str, type(None)),
}


def reader_kwargs(format: str, args: Sequence[tuple[str, object]]) -> dict[str, object]:
  """--arg key=value pairs checked against the reader's keyword arguments."""
  reader = READERS[ALIASES.get(format, format)]
  params = {
    name: p
    for name, p in inspect.signature(reader).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY and name != "skips"
  }
  out: dict[str, object] = {}
  for key, value in args:
    if key not in params:
      raise UserError(
        f"--arg {key}: {format} has no option {key!r}", fix=f"use one of {', '.join(params)}"
      )
    if key == "fields":
      if not isinstance(value, dict):
        raise UserError(
          "--arg fields", why="not a JSON object", fix='pass fields={"images": "..."}'
        )
      try:
        value = RexGradientFields(**value)
      except TypeError:
        known = ", ".join(f.name for f in dataclasses.fields(RexGradientFields))
        raise UserError("--arg fields", why="unknown key", fix=f"use keys among {known}") from None
      if not all(isinstance(v, str) for v in dataclasses.astuple(value)):
        raise UserError("--arg fields", why="a value is not a string", fix="give key names")
    kinds = _ANNOTATION_TYPES.get(str(params[key].annotation))
    if kinds and (not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool))):
      raise UserError(
        f"--arg {key}={value!r}",
        why=f"needs {' or '.join('null' if k is type(None) else k.__name__ for k in kinds)}",
        fix=f"pass e.g. --arg {key}=true" if kinds == (bool,) else "pass a JSON value of that type",
      )
    out[key] = value
  return out


def _tokenizer(path: str) -> Tokenizer:
  if not os.path.exists(path):
    raise UserError(f"no tokenizer at {path!r} for --tokenizer", fix="pass a local directory")
  try:
    return load_tokenizer(path)
  except Exception as e:  # the tokenizers library raises a bare Exception for malformed files
    raise UserError(
      "cannot load the tokenizer", where=path, why=str(e), fix="pass a tokenizer.json or its folder"
    ) from None


def _check_flags(args: argparse.Namespace) -> None:
  if not os.path.isdir(args.root):
    raise UserError(f"no directory {args.root!r} for --root", fix="pass the dataset folder")
  if not 0.0 <= args.max_bad_fraction <= 1.0:
    raise UserError(f"--max-bad-fraction {args.max_bad_fraction}", fix="pass a value in [0, 1]")
  for flag, value, low in (("--limit", args.limit, 1), ("--workers", args.workers, 1)):
    if value is not None and value < low:
      raise UserError(f"{flag} {value}", fix=f"pass {low} or more")
  try:
    ImageConfig(
      min_pixels=args.min_pixels, max_pixels=args.max_pixels, max_image_pixels=args.max_image_pixels
    )
  except ValueError as e:
    raise UserError("bad --min-pixels / --max-pixels / --max-image-pixels", why=str(e)) from None


def main(argv: Sequence[str] | None = None) -> int:
  """The command; returns the exit status (user errors print one line and give 2)."""
  return run_cli(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m echo_jax.data.check", description=__doc__.split("\n")[0]
  )
  parser.add_argument("--format", required=True, choices=FORMATS)
  parser.add_argument("--root", required=True, help="dataset folder")
  parser.add_argument("--tokenizer", help="local tokenizer directory: report lengths in tokens")
  parser.add_argument(
    "--max-bad-fraction", type=float, default=0.05, help="exit 1 above this skipped fraction"
  )
  parser.add_argument(
    "--arg",
    action="append",
    default=[],
    type=_reader_arg,
    help="reader option key=value (JSON values)",
  )
  parser.add_argument("--limit", type=int, help="check only the first N studies")
  parser.add_argument("--no-images", action="store_true", help="skip decoding images")
  parser.add_argument(
    "--full-preprocess", action="store_true", help="also run resize + patchify per image"
  )
  parser.add_argument("--min-pixels", type=int, default=ImageConfig.min_pixels)
  parser.add_argument("--max-pixels", type=int, default=ImageConfig.max_pixels)
  parser.add_argument("--max-image-pixels", type=int, default=ImageConfig.max_image_pixels)
  parser.add_argument("--workers", type=int, default=4)
  args = parser.parse_args(argv)

  _check_flags(args)
  kwargs = reader_kwargs(args.format, args.arg)
  tokenizer = _tokenizer(args.tokenizer) if args.tokenizer else None
  config = ImageConfig(
    min_pixels=args.min_pixels, max_pixels=args.max_pixels, max_image_pixels=args.max_image_pixels
  )
  report = check_dataset(
    args.format,
    args.root,
    tokenizer=tokenizer,
    reader_kwargs=kwargs,
    image_config=config,
    decode_images=not args.no_images,
    full_preprocess=args.full_preprocess,
    limit=args.limit,
    workers=args.workers,
  )
  print(format_report(report))
  if report.skips.bad_fraction > args.max_bad_fraction:
    print(
      f"FAIL: {100 * report.skips.bad_fraction:.2f}% of the studies are unusable "
      f"(limit {100 * args.max_bad_fraction:.2f}%)",
      file=sys.stderr,
    )
    return 1
  print("OK")
  return 0


if __name__ == "__main__":
  sys.exit(main())
