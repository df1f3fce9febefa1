"""Command line: python -m echo_jax.data.synthetic --out DIR --num_studies N --seed S [--lateral]."""

from __future__ import annotations

import argparse
import json

from echo_jax.data.synthetic.writer import write_benchmark


def main(argv: list[str] | None = None) -> dict:
  p = argparse.ArgumentParser(
    prog="python -m echo_jax.data.synthetic",
    description="Write the embedded synthetic chest X-ray benchmark (R2Gen annotation.json layout).",
  )
  p.add_argument("--out", required=True, help="output folder (created if missing)")
  p.add_argument("--num_studies", type=int, required=True, help="number of studies")
  p.add_argument("--seed", type=int, default=0, help="benchmark seed (default 0)")
  p.add_argument("--lateral", action="store_true", help="also write a lateral view (1.png)")
  p.add_argument(
    "--image_size", type=int, default=224, help="square image side in pixels (default 224)"
  )
  p.add_argument("--workers", type=int, default=None, help="processes (default: available CPUs)")
  p.add_argument(
    "--force", action="store_true", help="regenerate even if a complete benchmark exists"
  )
  p.add_argument("--no_gallery", action="store_true", help="skip gallery.png")
  args = p.parse_args(argv)
  summary = write_benchmark(
    args.out,
    args.num_studies,
    args.seed,
    lateral=args.lateral,
    image_size=args.image_size,
    workers=args.workers,
    gallery=not args.no_gallery,
    force=args.force,
  )
  print(json.dumps(summary, indent=1))
  return summary


if __name__ == "__main__":
  main()
