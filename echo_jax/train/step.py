"""The jitted train and eval steps: pure functions over (TrainState, batch) pytrees.

A loss function has the signature `loss_fn(model, batch, key) -> (loss, metrics)`:
`model` is the merged nnx module, `batch` the pytree the data pipeline yields (every
leaf batch-leading), `key` the noise key of this (micro)batch, `loss` a float32
scalar and `metrics` a dict of float scalars. Keys are derived as
`fold_in(fold_in(PRNGKey(seed), step), microbatch)`, so a resumed run draws exactly
the same diffusion masks. Gradient accumulation runs the microbatches in a
`lax.scan` and averages their gradients (equal to the full-batch gradient when each
microbatch's loss has the same normalizer); metrics named `num_*` are summed over
microbatches, the others averaged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from echo_jax.train.state import TrainState

Batch = Any
Metrics = dict[str, jax.Array]
LossFn = Callable[[nnx.Module, Batch, jax.Array], tuple[jax.Array, Metrics]]


def step_key(seed: int, step: jax.Array) -> jax.Array:
  """The noise key of optimizer step `step` (the same on resume)."""
  return jax.random.fold_in(jax.random.key(seed), step)


def _split_microbatches(batch: Batch, num: int) -> Batch:
  # Example i goes to microbatch i % num: every device keeps its rows (its block of the
  # batch is a multiple of num, see config_lib.validate), so the reshape moves no data.
  def split(x):
    if x.shape[0] % num:
      raise ValueError(f"batch leading dim {x.shape[0]} is not divisible by grad_accum_steps={num}")
    x = x.reshape(x.shape[0] // num, num, *x.shape[1:])
    return jnp.swapaxes(x, 0, 1)

  return jax.tree.map(split, batch)


def _combine(metrics: Metrics, num: int) -> Metrics:
  return {k: v if k.startswith("num_") else v / num for k, v in metrics.items()}


def make_train_step(
  graphdef: nnx.GraphDef,
  loss_fn: LossFn,
  tx: optax.GradientTransformation,
  schedule: optax.Schedule | None = None,
  *,
  seed: int = 0,
  grad_accum_steps: int = 1,
  state_shardings: TrainState | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  """The jitted `train_step(state, batch) -> (state, metrics)`; the input state is donated.

  `metrics` holds "loss", "grad_norm" (before clipping), "learning_rate" and the loss
  function's own metrics, all float32 scalars on the device.
  """

  def loss_of(params, frozen, batch, key):
    model = nnx.merge(graphdef, params, frozen)
    loss, metrics = loss_fn(model, batch, key)
    return loss.astype(jnp.float32), {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}

  grad_fn = jax.value_and_grad(loss_of, has_aux=True)

  def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    key = step_key(seed, state.step)
    if grad_accum_steps == 1:
      (loss, metrics), grads = grad_fn(
        state.params, state.frozen, batch, jax.random.fold_in(key, 0)
      )
    else:
      micro = _split_microbatches(batch, grad_accum_steps)

      def body(carry, xs):
        index, mb = xs
        (loss_i, m), g = grad_fn(state.params, state.frozen, mb, jax.random.fold_in(key, index))
        return jax.tree.map(jnp.add, carry, (loss_i, m, g)), None

      first = jax.tree.map(lambda x: x[0], micro)
      shapes = jax.eval_shape(grad_fn, state.params, state.frozen, first, key)
      zeros = jax.tree.map(
        lambda s: jnp.zeros(s.shape, s.dtype), (shapes[0][0], shapes[0][1], shapes[1])
      )
      (loss, metrics, grads), _ = jax.lax.scan(body, zeros, (jnp.arange(grad_accum_steps), micro))
      loss = loss / grad_accum_steps
      metrics = _combine(metrics, grad_accum_steps)
      grads = jax.tree.map(lambda g: g / grad_accum_steps, grads)
    grad_norm = optax.global_norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    out = dict(metrics, loss=loss, grad_norm=grad_norm)
    if schedule is not None:
      out["learning_rate"] = jnp.asarray(schedule(state.step), jnp.float32)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, out

  out_shardings = None
  if state_shardings is not None:
    scalar = jax.sharding.NamedSharding(state_shardings.step.mesh, jax.sharding.PartitionSpec())
    out_shardings = (state_shardings, scalar)  # a prefix: every metric is a replicated scalar
  return jax.jit(train_step, donate_argnums=(0,), out_shardings=out_shardings)


def make_eval_step(
  graphdef: nnx.GraphDef, loss_fn: LossFn, *, seed: int = 0
) -> Callable[[TrainState, Batch, jax.Array], Metrics]:
  """The jitted `eval_step(state, batch, index) -> metrics` (noise key from `index`)."""

  def eval_step(state: TrainState, batch: Batch, index: jax.Array) -> Metrics:
    model = nnx.merge(graphdef, state.params, state.frozen)
    key = jax.random.fold_in(jax.random.key(seed ^ 0x5EED), index)
    loss, metrics = loss_fn(model, batch, key)
    return dict(
      {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}, loss=loss.astype(jnp.float32)
    )

  return jax.jit(eval_step)
