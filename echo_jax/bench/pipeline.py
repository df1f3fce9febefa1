r"""Input pipeline throughput: examples/s of the training pipeline with 0, 1, 2 workers.

    python -m echo_jax.bench.pipeline --data workdir/tiny/synthetic --out bench_pipeline.json

Reads the synthetic benchmark (written there if absent) through the real training
pipeline: Grain shuffle -> load + Qwen2.5-VL image processing + tokenization ->
fixed-shape batches, host side only (no device transfer, no model). For each worker
count, `warmup` batches are drawn first (worker start-up, first image decodes), then
`batches` batches are timed.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from absl import flags

from echo_jax.data import images, readers, synthetic
from echo_jax.data import tokenizer as tokenizer_lib
from echo_jax.data.examples import StudyExamples
from echo_jax.data.pipeline import train_dataset
from echo_jax.models.presets import get_preset


def measure(studies, transform, *, workers: int, batch: int, batches: int, warmup: int) -> dict:
  ds = train_dataset(studies, transform, global_batch_size=batch, seed=0, worker_count=workers)
  it = iter(ds)
  for _ in range(warmup):
    next(it)
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  seconds = time.perf_counter() - start
  return {
    "workers": workers,
    "batch_size": batch,
    "batches": batches,
    "seconds": seconds,
    "examples_per_second": batches * batch / seconds,
  }


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(prog="python -m echo_jax.bench.pipeline", description=__doc__)
  p.add_argument("--data", default="workdir/tiny/synthetic", help="synthetic benchmark dir")
  p.add_argument("--num_studies", type=int, default=2000, help="studies if it must be written")
  p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
  p.add_argument("--batch_size", type=int, default=16)
  p.add_argument("--batches", type=int, default=20)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--out", default="", help="JSON file for the results")
  args = p.parse_args(argv)
  if not flags.FLAGS.is_parsed():
    flags.FLAGS(["echo_jax.bench.pipeline"])  # Grain's worker processes read absl flags

  synthetic.write_benchmark(args.data, args.num_studies, 0, progress=False)
  studies = readers.read_dataset("r2gen", args.data, splits=["train"])
  tok_dir = os.path.join(args.data, "tokenizer")
  if os.path.isfile(os.path.join(tok_dir, "tokenizer.json")):
    tokenizer = tokenizer_lib.load_tokenizer(tok_dir)
  else:
    config = get_preset("tiny")
    texts = [s.report for s in studies]
    tokenizer = tokenizer_lib.train_bpe_tokenizer(texts, config.text.vocab_size)
  config = get_preset("tiny")
  transform = StudyExamples(
    tokenizer=tokenizer,
    model_config=config,
    image_config=images.ImageConfig.from_vision_config(
      config.vision, min_pixels=56 * 56, max_pixels=112 * 112
    ),
    context_len=128,
    response_len=128,
    max_patches=64,
  )
  rows = []
  for workers in args.workers:
    row = measure(
      studies,
      transform,
      workers=workers,
      batch=args.batch_size,
      batches=args.batches,
      warmup=args.warmup,
    )
    rows.append(row)
    print(f"workers={workers}: {row['examples_per_second']:.1f} examples/s", flush=True)
  result = {"cpus": os.cpu_count(), "data": args.data, "results": rows}
  print("\n| workers | examples/s |\n|---|---|")
  for row in rows:
    print(f"| {row['workers']} | {row['examples_per_second']:.1f} |")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=2)
  return result


if __name__ == "__main__":
  main()
