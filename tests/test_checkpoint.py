"""Checkpoints through the real loop: exact resume, preemption save, NaN stop, next-stage init."""

import os
import pathlib
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_train_step import SEQ, VOCAB, TinyLM, tiny_loss

from echo_jax import config_lib
from echo_jax.data import pipeline
from echo_jax.train import checkpoint as checkpoint_lib
from echo_jax.train import loop
from echo_jax.train import mesh as mesh_lib
from echo_jax.train import metrics as metrics_lib
from echo_jax.train import optimizer as optimizer_lib
from echo_jax.train import state as state_lib
from echo_jax.train.task import Task

REPO = pathlib.Path(__file__).resolve().parents[1]
POISON = 1000
DEVICES = jax.devices()[
  :1
]  # one device keeps compiles short; mesh tests live in test_train_step  # a record id whose example makes the loss NaN


def encode(record: int) -> dict:
  start, stride = record % VOCAB, 1 + record % 2
  tokens = (start + stride * np.arange(SEQ)) % VOCAB
  return {
    "tokens": tokens.astype(np.int32),
    "weights": np.ones(SEQ, np.float32),
    "poison": np.bool_(record == POISON),
  }


def loss_fn(model, batch, key):
  loss, metrics = tiny_loss(model, batch, key)
  return jnp.where(jnp.any(batch["poison"]), jnp.nan, loss), metrics


def make_config(workdir, **overrides):
  config = config_lib.load(f"{REPO}/configs/ar.py:tiny")
  config.workdir = str(workdir)
  config.total_steps = 8
  config.batch_size = 8
  config.log_every = 1
  config.tensorboard = False
  config.eval_every = 0
  config.checkpoint_every = 100
  config.optimizer.warmup_steps = 2
  config.optimizer.learning_rate = 1e-2
  config.async_checkpoint = True
  for k, v in overrides.items():
    config_lib.apply_overrides(config, [f"{k}={v!r}"])
  return config


def make_task(records=tuple(range(40)), hooks=()):
  return Task(
    model_fn=lambda: TinyLM(rngs=nnx.Rngs(0)),
    loss_fn=loss_fn,
    train_records=list(records),
    transform=encode,
    tokens_per_example=SEQ,
    sample_hooks=hooks,
  )


def losses(result):
  return [round(m["loss"], 7) for _, m in result.history]


def sigterm_at(stop_step):
  def hook(step, state, graphdef):
    if step == stop_step:
      os.kill(os.getpid(), signal.SIGTERM)  # the loop's guard turns it into save-and-stop
    return {}

  return hook


def test_preempted_run_resumes_exactly(tmp_path):
  full = loop.train(make_config(tmp_path / "full"), make_task(), devices=DEVICES)
  assert [s for s, _ in full.history] == list(range(8))

  config = make_config(tmp_path / "split", sample_every=1)
  first = loop.train(config, make_task(hooks=[sigterm_at(3)]), devices=DEVICES)
  assert first.stopped_early and [s for s, _ in first.history] == [0, 1, 2]
  assert checkpoint_lib.Checkpointer(tmp_path / "split").all_steps() == [3]
  second = loop.train(config, make_task(), devices=DEVICES)
  assert not second.stopped_early and [s for s, _ in second.history] == list(range(3, 8))
  # Same data order (iterator state), same noise keys (fold_in(seed, step)), same optimizer state.
  np.testing.assert_array_equal(losses(first) + losses(second), losses(full))
  p_full = jax.tree.map(np.asarray, nnx.to_pure_dict(full.state.params))
  p_split = jax.tree.map(np.asarray, nnx.to_pure_dict(second.state.params))
  jax.tree.map(np.testing.assert_array_equal, p_full, p_split)
  assert checkpoint_lib.Checkpointer(tmp_path / "split").latest_step() == 8


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  records = list(range(40)) + [POISON]
  config = make_config(tmp_path, checkpoint_every=1, total_steps=20)
  # Find the step whose batch holds the poison record (the pipeline is deterministic).
  it = pipeline.GlobalBatchIterator(
    pipeline.train_dataset(records, encode, global_batch_size=8, seed=config.seed)
  )
  bad_step = next(i for i in range(20) if np.any(next(it)["poison"]))
  with pytest.raises(metrics_lib.NonFiniteLossError, match=f"at step {bad_step}"):
    loop.train(config, make_task(records), devices=DEVICES)
  assert (
    checkpoint_lib.Checkpointer(tmp_path).latest_step() == bad_step
  )  # state before the bad update


def test_next_stage_restores_model_with_other_frozen_set(tmp_path):
  ar = loop.train(make_config(tmp_path / "ar", total_steps=2), make_task(), devices=DEVICES)
  config = make_config(tmp_path / "rad")
  mesh = mesh_lib.make_mesh(config.mesh, DEVICES)
  tx = optimizer_lib.make_optimizer(config)
  model_fn = lambda: TinyLM(rngs=nnx.Rngs(1))  # a different random init, overwritten below
  _, abstract, shardings = state_lib.state_shardings(model_fn, tx, mesh, mesh_lib.DEFAULT_RULES)
  target = state_lib.with_shardings(abstract, shardings)
  model_state = checkpoint_lib.restore_model_state(
    tmp_path / "ar", nnx.merge_state(target.params, target.frozen)
  )
  _, state, _ = state_lib.create_train_state(
    model_fn, tx, mesh, mesh_lib.DEFAULT_RULES, ("vision",), model_state
  )
  assert "vision" in state.frozen and "vision" not in state.params
  got = jax.tree.map(np.asarray, nnx.to_pure_dict(state.model_state()))
  want = jax.tree.map(np.asarray, nnx.to_pure_dict(ar.state.model_state()))
  jax.tree.map(np.testing.assert_array_equal, got, want)
  assert int(state.step) == 0
  with pytest.raises(FileNotFoundError, match="no echo_jax checkpoint"):
    checkpoint_lib.restore_model_state(
      tmp_path / "missing", nnx.merge_state(target.params, target.frozen)
    )
