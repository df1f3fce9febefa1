"""The main job: the whole ECHO pipeline from one config (`configs/dcd.py`).

  synthetic benchmark -> AR -> RAD teacher (from AR) -> DCD students (from the teacher)
  -> every model decoded on the test split -> metrics, speed, results.json/.md, HTML

Each training stage is an ordinary `echo_jax.train.loop.train` run in
`<workdir>/<stage>`; a stage whose final checkpoint exists is reused, an interrupted
one resumes. Generated reports are evaluated with `echo_jax.eval` (lexical metrics,
rule-based CheXpert F1 against the reference reports) and the samplers' own stats
(TPF, tokens/s, ms per report).
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import logging
import os
import time
from typing import Any

import jax
import ml_collections
from etils import epath

from echo_jax import config_lib, evaluate, inference, runs
from echo_jax.data import readers, synthetic
from echo_jax.eval import coherence, controls
from echo_jax.eval.chexpert_labeler import CheXpertLabeler
from echo_jax.eval.pipeline import EvalOptions, evaluate_predictions
from echo_jax.sampling import RepetitionGuard
from echo_jax.train import init_weights, loop, vision_stage

log = logging.getLogger(__name__)

# Quality columns of results.md: (metric key of echo_jax.eval, column title).
TABLE_METRICS = (
  ("chexpert/f1_micro_14", "CheXpert F1 micro-14"),
  ("chexpert/f1_macro_14", "macro-14"),
  ("chexpert/f1_micro_5", "micro-5"),
  ("echo/rouge_l", "ROUGE-L"),
  ("r2gen/bleu_4", "BLEU-4"),
  ("r2gen/cider_d", "CIDEr-D"),
  ("synthetic/grammar_valid_share", "grammar-valid"),
  ("synthetic/exact_findings", "exact findings"),
)


def _resolve(config: ml_collections.ConfigDict, value: str) -> str:
  """A stage name becomes that stage's workdir; anything else is a path."""
  if value in config.stages:
    return os.path.join(config.workdir, value)
  return value


def stage_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """The training config of stage `name` with its paths resolved under the workdir."""
  stage = copy.deepcopy(config.stages[name])
  stage.unlock()
  stage.workdir = os.path.join(config.workdir, name)
  stage.seed = config.seed
  stage.data.path = data_path(config)
  stage.init.path = _resolve(config, stage.init.path) if stage.init.path else ""
  if stage.dcd.teacher_path:
    stage.dcd.teacher_path = _resolve(config, stage.dcd.teacher_path)
  if stage.init.get("vision_path"):
    stage.init.vision_path = _resolve(config, stage.init.vision_path)
    if stage.init.path and init_weights.starts_from_hf(stage):
      stage.init.vision_path = ""  # a pretrained Hugging Face VLM keeps its own tower
  return stage


def tower_is_used(config: ml_collections.ConfigDict, vision_stage: str) -> bool:
  """Whether a stage of the order takes its tower from `vision_stage` (see stage_config)."""
  target = os.path.join(config.workdir, vision_stage)
  return any(
    stage_config(config, name).init.get("vision_path") == target
    for name in config.order
    if name != vision_stage
  )


def data_path(config: ml_collections.ConfigDict) -> str:
  return config.data_path or os.path.join(config.workdir, "synthetic")


def finished_step(workdir: str) -> int | None:
  """The newest complete checkpoint step of a stage's workdir (None: none yet)."""
  path = epath.Path(workdir) / "checkpoints"
  if not path.exists():
    return None
  steps = [int(p.name) for p in path.iterdir() if p.name.isdigit() and (p / "model").exists()]
  return max(steps) if steps else None


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Every stage's config problems at once, before any compute (ConfigError)."""
  problems = []
  for name in config.order:
    if name not in config.stages:
      problems.append(f"order names stage {name!r}, which config.stages does not define")
      continue
    stage = stage_config(config, name)
    # Earlier stages do not exist yet: check their paths when the stage starts.
    stage.init.path = ""
    stage.init.vision_path = ""
    stage.dcd.teacher_path = stage.dcd.teacher_path and "."
    try:
      config_lib.validate(stage, num_devices)
    except config_lib.ConfigError as e:
      problems += [f"stages.{name}: {p}" for p in e.problems]
  batching = eval_batching(config)
  if batching not in inference.BATCHING:
    problems.append(f"eval.batching={batching!r}: use one of {inference.BATCHING}")
  for row in (*config.eval.rows, *config.eval.get("deranged_rows", ())):
    if len(row) != 4 or row[1] not in config.stages or row[2] not in SAMPLERS:
      problems.append(
        f"eval.rows entry {row!r} must be (name, stage, sampler in {SAMPLERS}, block_len)"
      )
    elif row[2] != "ar":
      trained = runs.trained_block_lens(stage_config(config, row[1]))
      if trained and row[3] not in trained:
        problems.append(
          f"eval.rows entry {row[0]!r} decodes stage {row[1]!r} at block length {row[3]}, "
          f"which it does not train with (block lengths {list(trained)})"
        )
  if problems:
    raise config_lib.ConfigError(problems)


def train_stages(config: ml_collections.ConfigDict) -> None:
  for index, name in enumerate(config.order, 1):
    stage = stage_config(config, name)
    done = finished_step(stage.workdir)
    header = (
      f"[{index}/{len(config.order)}] stage {name} ({stage.stage}, {stage.total_steps} steps)"
    )
    if done is not None and done >= stage.total_steps:
      log.info("%s: finished earlier in %s, reusing it", header, stage.workdir)
      continue
    if stage.stage == "vision" and not tower_is_used(config, name):
      log.info("%s: skipped, the stages after it start from a pretrained VLM's tower", header)
      continue
    log.info("%s -> %s", header, stage.workdir)
    start = time.time()
    result = loop.train(stage)
    if result.stopped_early:
      raise SystemExit(f"stage {name} was interrupted; rerun the same command to resume")
    log.info("stage %s done in %.1f min", name, (time.time() - start) / 60)


# ------------------------------------------------------------------ evaluation
SAMPLERS = ("ar", "multi_step", "one_step")
# Evaluation stops (and counts) a report that repeats an 8-gram a fifth time: the loop
# failure of a one-step model without distillation.
LOOP_GUARD = dict(ngram=8, max_repeats=4)


CONSTANT_ROW = "constant report"


def eval_batching(config: ml_collections.ConfigDict) -> str:
  """How the evaluation batches studies (inference.BATCHING); lockstep where unset."""
  return config.eval.get("batching", "lockstep")


def eval_rows(config: ml_collections.ConfigDict) -> list[tuple[str, str, str, int, bool]]:
  """Every decoded row: (name, stage, sampler, block length, with another study's images)."""
  rows = [(*row, False) for row in config.eval.rows]
  rows += [(*row, True) for row in config.eval.get("deranged_rows", ())]
  return rows


def generate_rows(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
  """Decode the test split with every evaluated (stage, sampler); one record per report.

  Rows of `eval.deranged_rows` decode each study with the images of another test study
  (a fixed derangement, eval/controls.py); `eval.constant_report` adds the label-prior
  baseline, one training report written for every study.
  """
  studies = readers.read_dataset("r2gen", data_path(config), splits=[config.eval.split])
  if config.eval.num_studies:
    studies = studies[: config.eval.num_studies]
  deranged = controls.with_images_of(studies, controls.derangement(len(studies), config.seed))
  out_dir = os.path.join(config.workdir, "eval", "predictions")
  os.makedirs(out_dir, exist_ok=True)
  records: list[dict[str, Any]] = []
  loaded: dict[str, runs.Run] = {}
  rows = eval_rows(config)
  for index, (row, stage_name, kind, block_len, swapped) in enumerate(rows, 1):
    stage = stage_config(config, stage_name)
    if stage_name not in loaded:
      # The stage's own saved config: the sizes and the tokenizer it trained with.
      loaded[stage_name] = runs.load_run(stage.workdir, data_path=data_path(config))
    run = loaded[stage_name]
    sampler = inference.make_sampler(
      kind,
      run.config.tokens,
      block_len=block_len,
      max_new_tokens=stage.data.response_len,
      threshold=config.eval.threshold,
      repetition=RepetitionGuard(**LOOP_GUARD),
    )
    generator = inference.ReportGenerator.from_run(
      run, config.eval.batch_size, batching=eval_batching(config)
    )
    inputs = deranged if swapped else studies
    log.info("[eval %d/%d] %s on %d studies", index, len(rows), row, len(inputs))
    generated = generator.generate(inputs, sampler, progress=False)
    records += _write_records(
      os.path.join(out_dir, f"{_slug(row)}.jsonl"),
      [
        {
          "id": g["id"],
          "model": row,
          "prediction": g["prediction"],
          "reference": g["reference"],
          "images": g["images"],
          "stats": inference.row_stats(g),
        }
        for g in generated
      ],
    )
  if config.eval.get("constant_report", False):
    train = readers.read_dataset("r2gen", data_path(config), splits=["train"])
    report, share = controls.constant_report(train)
    log.info("[eval] %s (label set of %.0f%% of training): %s", CONSTANT_ROW, 100 * share, report)
    records += _write_records(
      os.path.join(out_dir, f"{_slug(CONSTANT_ROW)}.jsonl"),
      [
        {
          "id": s.id,
          "model": CONSTANT_ROW,
          "prediction": report,
          "reference": s.report,
          "images": list(s.image_paths),
        }
        for s in studies
      ],
    )
  return records


def _write_records(path: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
  with open(path, "w") as f:
    for record in records:
      f.write(json.dumps(record) + "\n")
  return records


def _slug(name: str) -> str:
  return "".join(ch if ch.isalnum() else "_" for ch in name.lower()).strip("_")


def summarize(config, result: dict[str, Any], records: list[dict[str, Any]]) -> list[dict]:
  """One results.json row per evaluated model (decoded rows, then the constant report)."""
  rows = []
  described = eval_rows(config)
  if config.eval.get("constant_report", False):
    described.append((CONSTANT_ROW, "", "constant", 0, False))
  for row, stage_name, kind, block_len, swapped in described:
    model = result["models"][row]
    speed = model["speed"]
    recs = [r for r in records if r["model"] == row]
    stats = [r["stats"] for r in recs if "stats" in r]
    seconds = sum(st["seconds"] for st in stats)
    rows.append(
      {
        "name": row,
        "stage": stage_name,
        "sampler": kind,
        "block_len": block_len,
        "images_of_another_study": swapped,
        "num_reports": len(recs),
        "tpf": speed["tpf"],
        "tokens_per_second": speed["tokens_per_second"],
        "ms_per_report": 1000.0 * seconds / len(stats) if stats else None,
        "lockstep_occupancy": inference.lockstep_occupancy(stats),
        "loops": sum(bool(st["looped"]) for st in stats),
        "no_eos": sum(not st["eos"] for st in stats),
        "metrics": {**model["metrics"], **coherence_of(recs)},
        "ci": model.get("ci", {}),
      }
    )
  return rows


def coherence_of(records: list[dict[str, Any]]) -> dict[str, float]:
  """The synthetic benchmark's exact coherence figures (eval/coherence.py) of one model."""
  labeler = CheXpertLabeler()
  preds = [r["prediction"] for r in records]
  out = coherence.coherence_metrics(
    preds, labeler.label_many(preds), labeler.label_many([r["reference"] for r in records])
  )
  return {f"synthetic/{k}": v for k, v in out.items()}


def markdown_table(rows: list[dict[str, Any]]) -> str:
  def fmt(v, digits=3):
    return "n/a" if v is None else f"{v:.{digits}f}"

  head = ["model", "TPF", "tokens/s", "ms/report"] + [t for _, t in TABLE_METRICS] + ["loops"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    cells = [r["name"], fmt(r["tpf"], 2), fmt(r["tokens_per_second"], 0)]
    cells += [fmt(r["ms_per_report"], 1)]
    cells += [fmt(r["metrics"].get(k)) for k, _ in TABLE_METRICS]
    cells += [f"{r['loops']}/{r['num_reports']}" if r["tpf"] is not None else "n/a"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def evaluate_models(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
  records = generate_rows(config)
  options = EvalOptions(meteor=False, n_boot=int(config.eval.n_boot), seed=int(config.seed))
  log.info("scoring %d reports (lexical metrics, rule-based CheXpert F1)", len(records))
  result = evaluate_predictions(records, options=options)
  paths = evaluate.write_outputs(result, records, os.path.join(config.workdir, "eval"))
  rows = summarize(config, result, records)
  probe = vision_probe_auc(config)
  versions = package_versions()
  with open(os.path.join(config.workdir, "results.json"), "w") as f:
    summary = {"preset": config.preset, "seed": config.seed, "versions": versions}
    summary["models"] = rows
    json.dump({**summary, "vision_probe": probe}, f, indent=2)
  table = markdown_table(rows)
  with open(os.path.join(config.workdir, "results.md"), "w") as f:
    f.write(
      f"# ECHO on the synthetic benchmark ({config.preset}, seed {config.seed})\n\n"
      f"Software: {', '.join(f'{k} {v}' for k, v in versions.items())}.\n\n"
      f"{len(rows)} models, {rows[0]['num_reports']} test studies each. "
      "Quality: rule-based CheXpert F1 and lexical metrics against the reference reports; "
      "grammar-valid = share of generated sentences that are sentences of the benchmark's "
      "grammar, exact findings = share of reports whose 14 labels all equal the reference's; "
      "speed: the samplers' stats on this machine (batch "
      f"{config.eval.batch_size}, {eval_batching(config)} batching, "
      f"first batch's compile excluded).\n\n{table}" + (_probe_line(probe) if probe else "")
    )
  log.info("results:\n%s", table)
  log.info("wrote %s, %s and %s", "results.json", "results.md", paths["html"])
  return rows


# The results are bit-for-bit repeatable with the same versions of these on the same kind
# of CPU; other versions (or XLA's code for another CPU) may round differently, and a few
# hundred training steps amplify that into other numbers.
VERSIONED = ("jax", "jaxlib", "flax", "optax", "numpy", "grain", "tokenizers")


def package_versions() -> dict[str, str]:
  """The installed versions of the packages that decide the main job's numbers."""
  out = {}
  for name in VERSIONED:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = "not installed"
  return out


def vision_probe_auc(config: ml_collections.ConfigDict) -> dict[str, Any] | None:
  """The vision stage's newest validation AUCs (train/vision_stage.py), if it ran."""
  for name in config.order:
    if config.stages[name].stage == "vision":
      path = os.path.join(config.workdir, name, vision_stage.AUC_FILE)
      if os.path.isfile(path):
        with open(path) as f:
          return json.load(f)
  return None


def _probe_line(probe: dict[str, Any]) -> str:
  aucs = probe["auc"]
  cells = ", ".join(
    f"{k.removeprefix('auc/')} {v:.2f}" for k, v in aucs.items() if k != "auc/mean_14"
  )
  return (
    f"\nVision tower probe (the vision stage's head on {probe['num_studies']} validation "
    f"studies, step {probe['step']}): ROC AUC mean {aucs['auc/mean_14']:.3f}; {cells}.\n"
  )


def run(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
  """Train every stage not yet finished, then evaluate every model (see the docstring)."""
  validate(config, jax.device_count())
  start = time.time()
  path = data_path(config)
  num = config.stages[config.order[0]].data.num_studies
  if jax.process_index() == 0:
    log.info("synthetic benchmark: %d studies in %s", num, path)
    synthetic.write_benchmark(path, num, config.seed, progress=True)
  train_stages(config)
  if not config.eval.run:
    log.info("stages done in %.1f min; evaluation skipped", (time.time() - start) / 60)
    return []
  rows = evaluate_models(config)
  log.info("main job done in %.1f min; results in %s", (time.time() - start) / 60, config.workdir)
  return rows
