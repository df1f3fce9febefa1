"""The training loop of every stage: init or resume, step, log, evaluate, save.

`train(config)` builds everything from the config. The pieces that depend on the model,
the objective and the dataset come as a `Task`, so the same loop runs the real VLM
(`tasks.build_task`) or a small stand-in in tests:

  init or resume -> for each step: next batch -> jitted step (state donated) ->
  push metrics (read one step late) -> periodic eval / samples / checkpoint
  -> SIGTERM or SIGINT: save and stop; a non-finite loss: stop, keep the last good save.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath
from flax import nnx

from echo_jax import config_lib
from echo_jax.data import pipeline
from echo_jax.train import checkpoint as checkpoint_lib
from echo_jax.train import mesh as mesh_lib
from echo_jax.train import metrics as metrics_lib
from echo_jax.train import mfu as mfu_lib
from echo_jax.train import optimizer as optimizer_lib
from echo_jax.train import state as state_lib
from echo_jax.train import step as step_lib
from echo_jax.train import tasks
from echo_jax.train.state import TrainState
from echo_jax.train.task import Task

log = logging.getLogger(__name__)

RECORD_INDEX = "record_index"  # int32 field added to each training example: its record's index


@dataclasses.dataclass(frozen=True)
class IndexedTransform:
  """Record index -> the task's example plus its RECORD_INDEX (picklable for Grain workers)."""

  records: Sequence[Any]
  transform: pipeline.Transform

  def __call__(self, index: int) -> pipeline.Example:
    return {**self.transform(self.records[index]), RECORD_INDEX: np.int32(index)}


def study_ids(record_index: Any, records: Sequence[Any]) -> list[str]:
  """Ids (`record.id`, else the record) of this process's rows of a batch's RECORD_INDEX."""
  if record_index is None:
    return []
  rows: dict[int, int] = {}
  for shard in getattr(record_index, "addressable_shards", ()):
    start = (shard.index[0].start or 0) if shard.index else 0
    rows.update((start + i, v) for i, v in enumerate(np.asarray(shard.data).tolist()))
  if not rows:  # a host array
    rows = dict(enumerate(np.asarray(record_index).tolist()))
  return [str(getattr(records[i], "id", records[i])) for _, i in sorted(rows.items())]


class NonFiniteBatchError(metrics_lib.NonFiniteLossError):
  """A NonFiniteLossError that also names the studies of the step's batch."""

  def __init__(self, error: metrics_lib.NonFiniteLossError, ids: Sequence[str]):
    self.step, self.study_ids = error.step, list(ids)
    share = " (this process's share)" if jax.process_count() > 1 else ""
    FloatingPointError.__init__(
      self, f"{error} The batch of step {error.step} held studies{share}: {', '.join(ids)}"
    )


@dataclasses.dataclass
class RunResult:
  state: TrainState
  graphdef: nnx.GraphDef
  history: list[tuple[int, dict[str, float]]]  # (0-based step, metrics) of every step run
  eval_history: list[tuple[int, dict[str, float]]]
  stopped_early: bool  # preempted (a checkpoint was written)


def evaluate(
  eval_step, state: TrainState, records, transform, config, mesh, prepare=None
) -> dict[str, float]:
  """Token-weighted mean of the eval metrics over `config.eval_batches` batches (0 = all)."""
  ds = pipeline.eval_dataset(records, transform, global_batch_size=config.batch_size)
  it = pipeline.GlobalBatchIterator(ds, mesh)
  sums: dict[str, float] = {}
  total = 0.0
  for index, batch in enumerate(it):
    if config.eval_batches and index >= config.eval_batches:
      break
    if prepare is not None:
      batch = prepare(state, batch)
    out = jax.device_get(eval_step(state, batch, np.int32(index)))
    weight = float(out.get("num_tokens", 1.0))
    for k, v in out.items():
      sums[k] = sums.get(k, 0.0) + (float(v) if k.startswith("num_") else float(v) * weight)
    total += weight
  return {k: v if k.startswith("num_") else v / max(total, 1e-9) for k, v in sums.items()}


def step_flops(config, task: Task, train_step, make_single_step, state, batch) -> float:
  """Global FLOPs of one optimizer step (train/mfu.py): XLA's count, else from shapes.

  XLA counts a loop body once, so with gradient accumulation the step of one
  microbatch (`make_single_step()`, no accumulation) is costed and multiplied.
  """
  accum = config.grad_accum_steps
  if accum == 1:
    flops = mfu_lib.lowered_flops(train_step, state, batch)
  else:
    micro = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct((x.shape[0] // accum, *x.shape[1:]), x.dtype), batch
    )
    flops = mfu_lib.lowered_flops(make_single_step(), state, micro)
    flops = None if flops is None else flops * accum
  if flops is not None:
    log.info("FLOPs per step: %.4g (XLA cost analysis)", flops)
    return flops
  text = config_lib.model_config(config).text
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  flops = mfu_lib.shape_flops(
    num_params,
    task.tokens_per_example * config.batch_size,
    num_layers=text.num_hidden_layers,
    width=text.num_attention_heads * text.head_dim,
    seq_len=task.tokens_per_example,
  )
  log.info("FLOPs per step: %.4g (from shapes: no XLA cost analysis on this backend)", flops)
  return flops


def _init_state(
  config, task: Task, tx, mesh, rules, checkpointer, train_iter
) -> tuple[nnx.GraphDef, TrainState, TrainState]:
  freeze = tuple(config.freeze)
  latest = checkpointer.latest_step()
  if latest is not None:
    graphdef, abstract, shardings = state_lib.state_shardings(
      task.model_fn, tx, mesh, rules, freeze
    )
    state = checkpointer.restore(abstract, shardings, freeze, data_iterator=train_iter, step=latest)
    log.info("resumed from %s at step %d", checkpointer.directory, latest)
    return graphdef, state, shardings
  return state_lib.create_train_state(
    task.model_fn, tx, mesh, rules, freeze, model_state=task.model_state
  )


def train(
  config: ml_collections.ConfigDict,
  task: Task | None = None,
  *,
  devices: Sequence[jax.Device] | None = None,
) -> RunResult:
  """Run (or resume) the training run of `config` in `config.workdir`.

  `devices` (default: all) is what the mesh spans. The run resumes from the newest
  checkpoint in the workdir if there is one.
  """
  devices = list(jax.devices() if devices is None else devices)
  config_lib.validate(config, len(devices))
  mesh = mesh_lib.make_mesh(config.mesh, devices)
  rules = mesh_lib.logical_rules(config)
  if task is None:
    task = tasks.build_task(config, mesh, rules)

  tx = optimizer_lib.make_optimizer(config)
  schedule = optimizer_lib.make_schedule(config)
  workdir = epath.Path(config.workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:
    # The run's config beside its checkpoints: what generate/evaluate read to rebuild it.
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  checkpointer = checkpoint_lib.Checkpointer(
    workdir, keep=config.keep_checkpoints, async_save=config.async_checkpoint
  )
  train_iter = pipeline.GlobalBatchIterator(
    pipeline.train_dataset(
      range(len(task.train_records)),  # indices: the same order; errors can name the studies
      IndexedTransform(task.train_records, task.transform),
      global_batch_size=config.batch_size,
      seed=config.seed,
      worker_count=config.data.worker_count,
      worker_buffer_size=config.data.worker_buffer_size,
    ),
    mesh,
  )
  try:
    graphdef, state, shardings = _init_state(
      config, task, tx, mesh, rules, checkpointer, train_iter
    )
  except BaseException:
    checkpointer.close()  # a refused checkpoint: stop its threads, write nothing
    raise
  train_step = step_lib.make_train_step(
    graphdef,
    task.loss_fn,
    tx,
    schedule,
    seed=config.seed,
    grad_accum_steps=config.grad_accum_steps,
    state_shardings=shardings,
  )
  eval_step = step_lib.make_eval_step(graphdef, task.loss_fn, seed=config.seed)
  logger = metrics_lib.MetricLogger(
    metrics_lib.make_writer(str(workdir), tensorboard=config.tensorboard),
    total_steps=config.total_steps,
    log_every=config.log_every,
    tokens_per_step=task.tokens_per_example * config.batch_size,
    # MFU counts the train step only (not a DCD teacher rollout in prepare_batch).
    peak_flops=mfu_lib.peak_flops(devices[0].device_kind, config.get("peak_flops", 0.0)),
    num_devices=len(devices),
  )
  if logger.peak_flops is None:
    log.info("no peak FLOP/s known for %r: set --config.peak_flops for mfu", devices[0].device_kind)
  guard = checkpoint_lib.PreemptionGuard()
  eval_history: list[tuple[int, dict[str, float]]] = []
  start = int(jax.device_get(state.step))
  stopped = False
  recent: dict[int, Any] = {}  # record indices of the last two steps' batches
  prepare = None
  if task.prepare_batch is not None:
    prepare = lambda st, b: task.prepare_batch(st, graphdef, b)  # noqa: E731

  def save(force: bool = False) -> None:
    logger.flush()  # the saved state's own step must have a finite loss
    checkpointer.save(state, train_iter, force=force)

  try:
    with mesh_lib.use_mesh(mesh):
      for step in range(start, config.total_steps):
        batch = next(train_iter)
        recent[step] = batch.get(RECORD_INDEX)
        recent.pop(step - 2, None)
        if prepare is not None:
          batch = prepare(state, batch)
        state, metrics = train_step(state, batch)
        if step == start and logger.peak_flops is not None:  # once, on the compiled shapes
          logger.flops_per_step = step_flops(
            config,
            task,
            train_step,
            lambda: step_lib.make_train_step(
              graphdef, task.loss_fn, tx, schedule, seed=config.seed
            ),
            state,
            batch,
          )
        logger.push(step, metrics)
        done = step + 1
        if config.eval_every and done % config.eval_every == 0:
          result = {}
          if task.eval_records:
            result = evaluate(
              eval_step, state, task.eval_records, task.transform, config, mesh, prepare
            )
          for hook in task.metric_hooks:
            result.update(hook(done, state, graphdef))
          if result:
            logger.write_eval(done, result)
            eval_history.append((step, result))
        if config.sample_every and done % config.sample_every == 0:
          for hook in task.sample_hooks:
            logger.write_texts(done, hook(done, state, graphdef))
        if guard.should_stop(step, checkpointer) and done < config.total_steps:
          log.warning("stopping at step %d: saving a checkpoint", done)
          save(force=True)
          stopped = True
          break
        if done % config.checkpoint_every == 0 or done == config.total_steps:
          save(force=done == config.total_steps)
      logger.flush()
  except metrics_lib.NonFiniteLossError as e:  # read one step late: name that step's studies
    raise NonFiniteBatchError(e, study_ids(recent.get(e.step), task.train_records)) from None
  finally:
    checkpointer.close()  # waits for async writes: a failed run still leaves its last good save
    logger.close()
    guard.close()
  return RunResult(
    state=state,
    graphdef=graphdef,
    history=logger.history,
    eval_history=eval_history,
    stopped_early=stopped,
  )
