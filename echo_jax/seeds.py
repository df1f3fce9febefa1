r"""The main job's key rows over several seeds: mean and spread, to tell a difference from noise.

  python -m echo_jax.seeds                       # seeds 0 1 2, the key rows below
  python -m echo_jax.seeds --seeds 0 1 2 3 --rows "AR" "DCD one-step B=8"

Each seed is a whole main job (`configs/dcd.py`: benchmark, stages, evaluation) in its
own workdir (`workdir/tiny` for seed 0, so the default main job's run is reused, and
`workdir/tiny_seed<N>` for the others); the seed changes the benchmark's studies, the
initialization, the data order and the diffusion noise. A workdir whose results.json is
of the same seed and holds every chosen row is reused as it is (after the main job,
seed 0 costs nothing); otherwise its earlier results are kept beside the new ones (see
`keep_earlier_results`) and the chosen rows are evaluated. Stages not needed by the chosen
rows are not trained. Writes `<--out>/seeds.json` and `seeds.md`: per row and metric the
mean, the sample standard deviation and the range over the seeds. The bootstrap
intervals over studies (in each run's eval/metrics.json) measure another noise: that of
the 200 test studies for one trained model.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from collections.abc import Sequence
from typing import Any

import numpy as np

from echo_jax import config_lib, log_setup, reproduce

log = logging.getLogger(__name__)

KEY_ROWS = (
  "AR",
  "RAD multi-step B=8",
  "RAD one-step B=8 (no DCD)",
  "DCD one-step B=8",
  "AR, images of another study",
  reproduce.CONSTANT_ROW,
)
METRICS = (
  *(key for key, _ in reproduce.TABLE_METRICS),
  "tpf",
)


def seed_config(seed: int, rows: Sequence[str], workdir: str) -> Any:
  """configs/dcd.py for `seed`, evaluating only `rows` and training only their stages."""
  config = config_lib.load(os.path.join(_repo(), "configs", "dcd.py"))
  config.seed = seed
  config.workdir = workdir
  wanted = set(rows)
  known = {r[0] for r in (*config.eval.rows, *config.eval.deranged_rows)}
  known.add(reproduce.CONSTANT_ROW)
  unknown = sorted(wanted - known)
  if unknown:
    raise SystemExit(f"--rows: unknown row(s) {unknown}; known: {sorted(known)}")
  config.eval.rows = tuple(r for r in config.eval.rows if r[0] in wanted)
  config.eval.deranged_rows = tuple(r for r in config.eval.deranged_rows if r[0] in wanted)
  config.eval.constant_report = reproduce.CONSTANT_ROW in wanted
  config.order = tuple(_needed_stages(config))
  return config


def finished_rows(workdir: str, seed: int, rows: Sequence[str]) -> list[dict[str, Any]] | None:
  """The `rows` of `<workdir>/results.json` in the order asked, if that file is of `seed`
  and holds every one of them (the main job's own run is then reused, not re-decoded)."""
  path = os.path.join(workdir, "results.json")
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    results = json.load(f)
  by_name = {m["name"]: m for m in results.get("models", [])}
  if results.get("seed") != seed or any(name not in by_name for name in rows):
    return None
  return [by_name[name] for name in rows]


def keep_earlier_results(workdir: str) -> None:
  """Evaluating rewrites `<workdir>`'s results.json, results.md and eval/ with the chosen
  rows only: keep the earlier ones (e.g. the main job's whole table) beside them, as
  results.before_seeds.json, results.before_seeds.md and eval.before_seeds/."""
  for name, kept in (
    ("results.json", "results.before_seeds.json"),
    ("results.md", "results.before_seeds.md"),
    ("eval", "eval.before_seeds"),
  ):
    path, kept = os.path.join(workdir, name), os.path.join(workdir, kept)
    if not os.path.exists(path):
      continue
    if os.path.isdir(kept):
      shutil.rmtree(kept)
    os.replace(path, kept)
    log.info("kept the earlier %s as %s", path, kept)


def _needed_stages(config: Any) -> list[str]:
  """The stages the evaluated rows use, with every stage they start from, in order."""
  needed = {r[1] for r in (*config.eval.rows, *config.eval.deranged_rows)}
  changed = True
  while changed:
    changed = False
    for name in list(needed):
      stage = config.stages[name]
      for ref in (stage.init.path, stage.init.get("vision_path", ""), stage.dcd.teacher_path):
        if ref in config.stages and ref not in needed:
          needed.add(ref)
          changed = True
  return [name for name in config.order if name in needed]


def _repo() -> str:
  return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def aggregate(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """Per row (in the first run's order): {metric: {mean, std, min, max, values}} over runs."""
  if not runs:
    raise ValueError("no runs to aggregate")
  names = [m["name"] for m in runs[0]["models"]]
  out = []
  for name in names:
    per_run = [next((m for m in run["models"] if m["name"] == name), None) for run in runs]
    if any(m is None for m in per_run):
      raise ValueError(f"row {name!r} is missing from some runs")
    stats: dict[str, Any] = {}
    for key in METRICS:
      values = [m.get(key) if key == "tpf" else m["metrics"].get(key) for m in per_run]
      if any(v is None for v in values):
        continue
      arr = np.asarray(values, np.float64)
      stats[key] = {
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
        "min": float(arr.min()),
        "max": float(arr.max()),
        "values": [float(v) for v in arr],
      }
    out.append({"name": name, "seeds": [run["seed"] for run in runs], "metrics": stats})
  return out


def markdown(rows: Sequence[dict[str, Any]]) -> str:
  """Mean ± std per row and metric (n/a where a metric does not apply)."""
  titles = dict(reproduce.TABLE_METRICS, tpf="TPF")
  head = ["model"] + [titles[k] for k in METRICS]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    cells = [r["name"]]
    for key in METRICS:
      s = r["metrics"].get(key)
      cells.append("n/a" if s is None else f"{s['mean']:.3f} ± {s['std']:.3f}")
    lines.append("| " + " | ".join(cells) + " |")
  seeds = ", ".join(str(s) for s in rows[0]["seeds"]) if rows else ""
  return f"Mean ± sample standard deviation over seeds {seeds}.\n\n" + "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--rows", nargs="+", default=list(KEY_ROWS), help="results rows to keep")
  parser.add_argument("--workdir_prefix", default="workdir/tiny", help="seed N: <prefix>_seed<N>")
  parser.add_argument("--out", default="workdir/seeds", help="where seeds.json/.md go")
  args = parser.parse_args(argv)
  log_setup.log_to_stderr()
  if len(set(args.seeds)) != len(args.seeds):
    raise SystemExit(f"--seeds {args.seeds}: a seed appears twice")
  runs = []
  for seed in args.seeds:
    workdir = args.workdir_prefix if seed == 0 else f"{args.workdir_prefix}_seed{seed}"
    rows = finished_rows(workdir, seed, args.rows)
    if rows is not None:
      log.info("seed %d: every row is in %s/results.json, reusing it", seed, workdir)
    else:
      config = seed_config(seed, args.rows, workdir)
      log.info("seed %d -> %s (stages %s)", seed, workdir, ", ".join(config.order))
      keep_earlier_results(workdir)
      rows = reproduce.run(config)
    runs.append({"seed": seed, "models": rows})
  summary = aggregate(runs)
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "seeds.json"), "w") as f:
    json.dump({"seeds": args.seeds, "rows": summary}, f, indent=2)
  table = markdown(summary)
  with open(os.path.join(args.out, "seeds.md"), "w") as f:
    f.write(f"# The main job's key rows over seeds\n\n{table}")
  print(table)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
