r"""A real training process for the reliability tests: the loop of echo_jax.train on small tasks.

    python tests/train_driver.py --task rad --workdir /tmp/run --metrics /tmp/run.jsonl \
        total_steps=12 checkpoint_every=1

Tasks (seconds per run on a CPU; the loop, pipeline, checkpoints and objectives are the real ones):
  lm   the stand-in TinyLM of test_train_step over integer records (as in test_checkpoint)
  rad  a small EchoVLM (2 decoder layers, width 32) trained with the RAD objective of
       echo_jax.train.tasks on text-only examples generated from integer records

Every logged step is appended to `--metrics` as a JSON line {"step": s, "loss": ..., ...}
(0-based step, full float precision), so a test can read the losses of a process it killed.
`--coordinator/--num_processes/--process_id` run it as one process of a multi-process job
(`jax.distributed.initialize`); `--epoch_ids` then also writes this process's record indices
of one epoch, read through the same pipeline call as the loop's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
STAGE = {"lm": "ar", "rad": "rad"}
POISON = 1000  # the record whose example poisons the loss (NaN) or its gradient


def make_config(task: str, workdir: str, overrides=()):
  """configs/<ar|rad>.py:tiny cut down to seconds: small batch, short sequences, no eval."""
  from echo_jax import config_lib

  config = config_lib.load(f"{REPO}/configs/{STAGE[task]}.py:tiny")
  config.workdir = str(workdir)
  config.init.path = ""  # random init: no previous stage
  config.total_steps = 12
  config.batch_size = 4
  config.log_every = 1
  config.tensorboard = False
  config.eval_every = 0
  config.checkpoint_every = 1
  config.optimizer.warmup_steps = 2
  config.optimizer.learning_rate = 1e-2
  config.data.context_len = 16
  config.data.response_len = 16
  config.block_len = 4
  config_lib.apply_overrides(config, overrides)
  return config


def rad_model_config():
  """The tiny preset narrowed to 2 decoder layers of width 32 and a 1-block ViT."""
  from echo_jax.models.presets import get_preset

  base = get_preset("tiny")
  text = dataclasses.replace(
    base.text,
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    mrope_section=(2, 3, 3),
  )
  vision = dataclasses.replace(
    base.vision,
    depth=1,
    hidden_size=32,
    intermediate_size=32,
    num_heads=2,
    fullatt_block_indexes=(0,),
    out_hidden_size=32,
  )
  config = base.replace(text=text, vision=vision)
  config.validate()
  return config


@dataclasses.dataclass(frozen=True)
class TextExamples:
  """Integer record -> a text-only RAD example (left-padded context, report + EOS + pad)."""

  context_len: int
  response_len: int
  vocab_size: int
  pad: int
  eos: int
  first_token: int  # the first ordinary (non-special) token id

  def __call__(self, record: int) -> dict:
    rng = np.random.default_rng(record)
    p, r = self.context_len, self.response_len
    n_context = int(rng.integers(p // 2, p + 1))
    context = np.full(p, self.pad, np.int32)
    context[p - n_context :] = rng.integers(self.first_token, self.vocab_size, n_context)
    valid = np.arange(p) >= p - n_context
    positions = np.where(valid, np.arange(p) - (p - n_context), 0).astype(np.int32)
    n_report = int(rng.integers(1, r))
    response = np.full(r, self.pad, np.int32)
    response[:n_report] = rng.integers(self.first_token, self.vocab_size, n_report)
    response[n_report] = self.eos
    return {
      "context_tokens": context,
      "context_valid": valid,
      "context_positions": np.stack([positions] * 3),
      "next_position": np.int32(n_context),
      "response_tokens": response,
      "poison": np.bool_(record == POISON),  # read by `poisoned` only
    }


@dataclasses.dataclass(frozen=True)
class Study:
  """A record with a study id, like echo_jax.data.study.Study (what errors name)."""

  id: str
  index: int


def lm_encode(record) -> dict:
  from test_train_step import SEQ, VOCAB

  value = record.index if isinstance(record, Study) else record
  start, stride = value % VOCAB, 1 + value % 2
  return {
    "tokens": ((start + stride * np.arange(SEQ)) % VOCAB).astype(np.int32),
    "weights": np.ones(SEQ, np.float32),
    "poison": np.bool_(value == POISON),
  }


def poisoned(loss_fn, mode: str):
  """Wrap a loss: a batch holding the POISON record gets a NaN loss or a NaN gradient."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  def wrapped(model, batch, key):
    hit = jnp.any(batch["poison"])
    loss, metrics = loss_fn(model, batch, key)
    if mode == "loss":
      return jnp.where(hit, jnp.nan, loss), metrics
    # Finite value, NaN gradient: d/dx sqrt(0 * x) at x = sum(params) is 0 * inf.
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    x = sum(jnp.sum(v) for v in leaves)
    bump = jnp.sqrt(jnp.where(hit, 0.0, 1.0) * x * x)
    return loss + bump - jax.lax.stop_gradient(bump), metrics

  return wrapped


def make_task(task: str, config, num_records: int = 40, poison: str = ""):
  """The stand-in Task; `poison` ("loss" | "grad") adds the POISON record to the data."""
  from flax import nnx

  from echo_jax.train.task import Task

  records = list(range(num_records)) + ([POISON] if poison else [])
  if task == "lm":
    from test_train_step import SEQ, TinyLM, tiny_loss

    studies = [Study(f"study-{r:04d}", r) for r in records]
    return Task(
      model_fn=lambda: TinyLM(rngs=nnx.Rngs(0)),
      loss_fn=poisoned(tiny_loss, poison) if poison else tiny_loss,
      train_records=studies,
      transform=lm_encode,
      tokens_per_example=SEQ,
    )
  from echo_jax.models.vlm import EchoVLM
  from echo_jax.train import objectives
  from echo_jax.train.stage_config import StageConfig

  model_config = rad_model_config()
  ids = model_config.tokens
  transform = TextExamples(
    context_len=config.data.context_len,
    response_len=config.data.response_len,
    vocab_size=model_config.text.vocab_size,
    pad=ids.pad,
    eos=ids.eos,
    first_token=max(dataclasses.asdict(ids).values()) + 1,
  )
  loss_fn = objectives.make_loss_fn(StageConfig.from_config(config, model_config))
  return Task(
    model_fn=lambda: EchoVLM(model_config, rngs=nnx.Rngs(config.seed)),
    loss_fn=poisoned(loss_fn, poison) if poison else loss_fn,
    train_records=records,
    transform=transform,
    tokens_per_example=config.data.context_len + 2 * config.data.response_len,
  )


def first_epoch_order(num_records: int, config) -> list[int]:
  """Positions of the records in this process's first epoch: the pipeline call of the loop."""
  from echo_jax.data import pipeline

  it = pipeline.GlobalBatchIterator(
    pipeline.train_dataset(
      range(num_records),
      lambda i: {"index": np.int32(i)},
      global_batch_size=config.batch_size,
      seed=config.seed,
    )
  )
  steps = num_records // config.batch_size
  return [i for _ in range(steps) for i in np.asarray(next(it)["index"]).tolist()]


def reorder_records(records, batches, config):
  """The records placed so that the loop's first global batches are `batches` (indices into
  `records`): a single-process run fed exactly the global batches of a multi-process one."""
  wanted = [i for batch in batches for i in batch]
  desired = wanted + [i for i in range(len(records)) if i not in set(wanted)]
  order = first_epoch_order(len(records), config)
  assert sorted(order) == list(range(len(records))), "records must fill whole batches"
  placed = [None] * len(records)
  for k, position in enumerate(order):
    placed[position] = records[desired[k]]
  return placed


class JsonlWriter:
  """The MetricWriter the loop logs through, appending exact values as JSON lines."""

  def __init__(self, path: str):
    self._file = open(path, "a")

  def write_scalars(self, step: int, scalars) -> None:
    row = {"step": step - 1, "pid": os.getpid(), **{k: float(v) for k, v in scalars.items()}}
    self._file.write(json.dumps(row) + "\n")
    self._file.flush()  # survives a SIGKILL of this process (the OS keeps the page)

  def write_texts(self, step: int, texts) -> None:
    pass

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    self._file.close()


# The RAD run of the multi-process and determinism tests: 6 steps on a data=2 x fsdp=2 mesh.
RAD_OVERRIDES = ("total_steps=6", "mesh.data=2", "mesh.fsdp=2", "checkpoint_every=100")


def xla_flags(devices: int) -> str:
  """CPU devices per process; less LLVM optimization halves the compile time (every run that
  a test compares with another uses the same flags)."""
  return f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"


def session_compile_cache(tmp_path_factory) -> pathlib.Path:
  """One persistent XLA cache directory for every driver subprocess of a pytest session."""
  path = tmp_path_factory.getbasetemp() / "jax_compile_cache"
  path.mkdir(exist_ok=True)
  return path


def subprocess_env(compile_cache, **extra) -> dict:
  """Environment of a driver subprocess: CPU, and a persistent XLA cache shared by the
  runs of a test session (each program compiles once, not once per process)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  env.update(
    JAX_COMPILATION_CACHE_DIR=str(compile_cache),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
  )
  env.update(extra)
  return env


def read_metrics(path) -> list[dict]:
  path = pathlib.Path(path)
  if not path.exists():
    return []
  rows = []
  for line in path.read_text().splitlines():
    if line.endswith("}"):  # a line cut by a kill is dropped
      rows.append(json.loads(line))
  return rows


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--task", choices=sorted(STAGE), default="lm")
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--metrics", required=True, help="JSON-lines file of per-step metrics")
  parser.add_argument("--num_records", type=int, default=40)
  parser.add_argument("--poison", choices=("", "loss", "grad"), default="")
  parser.add_argument("--step_sleep", type=float, default=0.0, help="seconds slept per step")
  parser.add_argument("--devices", type=int, default=1, help="local devices the mesh uses")
  parser.add_argument("--block", action="store_true", help="wait for every step's new state")
  parser.add_argument("--coordinator", default="")
  parser.add_argument("--num_processes", type=int, default=1)
  parser.add_argument("--process_id", type=int, default=0)
  parser.add_argument("--epoch_ids", default="", help="write this process's epoch of records")
  parser.add_argument(
    "--batches", default="", help="JSON list of global batches (record indices) to train on first"
  )
  parser.add_argument("overrides", nargs="*", help="config key=value overrides")
  args = parser.parse_args(argv)

  import jax

  if args.coordinator:
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
  from echo_jax.train import loop
  from echo_jax.train import metrics as metrics_lib

  config = make_config(args.task, args.workdir, args.overrides)
  task = make_task(args.task, config, args.num_records, args.poison)
  if args.step_sleep or args.block:
    # After every step: wait for its result (collectives across processes on few cores),
    # and sleep so that a test can signal or kill the process mid-run.
    def hook(step, state, graphdef):
      if args.block:
        jax.block_until_ready(state)
      time.sleep(args.step_sleep)
      return {}

    config.sample_every = 1
    task.sample_hooks = [hook]
  if args.batches:
    task.train_records = reorder_records(
      task.train_records, json.loads(pathlib.Path(args.batches).read_text()), config
    )
  metrics_lib.make_writer = lambda *a, **k: JsonlWriter(args.metrics)
  devices = jax.devices() if args.coordinator else jax.devices()[: args.devices]
  result = loop.train(config, task, devices=devices)
  if args.epoch_ids:
    order = first_epoch_order(len(task.train_records), config)
    per_step = config.batch_size // jax.process_count()
    local = [order[i : i + per_step] for i in range(0, len(order), per_step)]
    pathlib.Path(args.epoch_ids).write_text(json.dumps(local))
  print(json.dumps({"stopped_early": result.stopped_early, "steps": len(result.history)}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
