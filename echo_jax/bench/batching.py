"""Lockstep against continuous batching on the same studies, with trained checkpoints.

    python -m echo_jax.bench.batching --workdir workdir/tiny --out bench_batching.json

For each evaluated model of the main job (--rows, default AR, RAD multi-step B=8, DCD
one-step B=4 and B=8) the test split is decoded twice at --batch_size: lockstep
batches (a batch runs until its longest report ends) and continuous batching (a
finished row takes the next study; sampling/continuous.py). Both passes use the same
greedy sampler, the same budget and the main job's repetition guard. Written per row:
tokens/s, ms/report, lockstep occupancy (the rows' forwards over the forwards their
batches ran), the speed-up, and whether every study got the same tokens both ways.

Timing as the report generator's (echo_jax/inference.py): compilation excluded, each
pass timed from its device calls to their results; the passes alternate --repeats
times and each mode's fastest pass counts (the machine's other load varies).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Sequence
from typing import Any

from echo_jax import inference, runs
from echo_jax.data import readers
from echo_jax.reproduce import LOOP_GUARD
from echo_jax.sampling import RepetitionGuard

# (row name, stage directory under --workdir, sampler, block length): the main job's rows.
ROWS = {
  "AR": ("ar", "ar", 1),
  "RAD multi-step B=8": ("rad", "multi_step", 8),
  "DCD one-step B=4": ("dcd_b4", "one_step", 4),
  "DCD one-step B=8": ("dcd_b8", "one_step", 8),
}


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="python -m echo_jax.bench.batching",
    description=__doc__.split("\n\n")[0],
    epilog=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument("--workdir", required=True, help="the main job's workdir (its stages)")
  p.add_argument("--out", required=True, help="JSON file of the results")
  p.add_argument("--data_path", default="", help="benchmark dir (default: WORKDIR/synthetic)")
  p.add_argument("--split", default="test")
  p.add_argument("--num_studies", type=int, default=0, help="0 = the whole split")
  p.add_argument("--batch_size", type=int, default=50)
  p.add_argument("--repeats", type=int, default=2, help="timed passes per mode")
  p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
  return p


def _tokens(rows: Sequence[inference.Row]) -> dict[str, tuple]:
  return {str(r["id"]): (r["prediction"], r["tokens"], r["forwards"]) for r in rows}


def measure(
  run: runs.Run, studies: Sequence[Any], sampler: Any, batch_size: int, repeats: int
) -> dict[str, Any]:
  """Both modes on `studies`: their speed summaries and whether the outputs agree."""
  gens = {
    mode: inference.ReportGenerator.from_run(run, batch_size, batching=mode)
    for mode in inference.BATCHING
  }
  best: dict[str, dict[str, Any]] = {}
  outputs: dict[str, dict[str, tuple]] = {}
  for _ in range(repeats):
    for mode, gen in gens.items():
      rows = gen.generate(studies, sampler)
      summary = inference.speed_summary(rows)
      outputs.setdefault(mode, _tokens(rows))
      if mode not in best or summary["seconds"] < best[mode]["seconds"]:
        best[mode] = summary
  lock, cont = best["lockstep"], best["continuous"]
  return {
    "lockstep": lock,
    "continuous": cont,
    "speedup": cont["tokens_per_second"] / lock["tokens_per_second"],
    "same_tokens": outputs["lockstep"] == outputs["continuous"],
    "studies_differing": sum(
      outputs["lockstep"][k] != outputs["continuous"].get(k) for k in outputs["lockstep"]
    ),
  }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = _parser().parse_args(argv)
  data_path = args.data_path or os.path.join(args.workdir, "synthetic")
  studies = readers.read_dataset("r2gen", data_path, splits=[args.split])
  if args.num_studies:
    studies = studies[: args.num_studies]
  result: dict[str, Any] = {
    "command": "python -m echo_jax.bench.batching " + " ".join(argv or sys.argv[1:]),
    "machine": platform.processor() or platform.machine(),
    "studies": len(studies),
    "batch_size": args.batch_size,
    "rows": {},
  }
  for name in args.rows:
    stage, kind, block = ROWS[name]
    run = runs.load_run(os.path.join(args.workdir, stage), data_path=data_path)
    response_len = run.saved.get("data", {}).get("response_len", 256)
    sampler = inference.make_sampler(
      kind,
      run.config.tokens,
      block_len=block,
      max_new_tokens=response_len,
      repetition=RepetitionGuard(**LOOP_GUARD),
    )
    row = measure(run, studies, sampler, args.batch_size, args.repeats)
    result["rows"][name] = row
    print(
      f"{name}: lockstep {row['lockstep']['tokens_per_second']:.0f} tokens/s "
      f"(occupancy {row['lockstep']['lockstep_occupancy']:.2f}), continuous "
      f"{row['continuous']['tokens_per_second']:.0f} tokens/s (occupancy "
      f"{row['continuous']['lockstep_occupancy']:.2f}): {row['speedup']:.2f}x, same tokens "
      f"{row['same_tokens']}",
      file=sys.stderr,
    )
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  return result


if __name__ == "__main__":
  main()
