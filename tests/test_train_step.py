"""The jitted train step: golden values, learning, sharding parity, accumulation, freezing.

The engine is model-agnostic (a loss function over an nnx module), so these tests drive
it with a small stand-in language model whose forward is also written in plain numpy
below: the golden values come from that independent computation, not from a recording.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from echo_jax.models.sharding import batch_sharding
from echo_jax.train import mesh as mesh_lib
from echo_jax.train import optimizer as optimizer_lib
from echo_jax.train import state as state_lib
from echo_jax.train import step as step_lib

VOCAB, DIM, HIDDEN, SEQ = 16, 8, 16, 8
RULES = mesh_lib.DEFAULT_RULES


def _init(names):
  return nnx.with_partitioning(nnx.initializers.normal(0.5), names)


class TinyLM(nnx.Module):
  """Embedding -> a "vision" projection -> ReLU MLP -> tied logits (stand-in model)."""

  def __init__(self, *, rngs: nnx.Rngs):
    self.embed = nnx.Embed(VOCAB, DIM, embedding_init=_init(("vocab", "embed")), rngs=rngs)
    self.vision = nnx.Linear(
      DIM, DIM, kernel_init=_init(("embed", "embed")), use_bias=False, rngs=rngs
    )
    self.up = nnx.Linear(DIM, HIDDEN, kernel_init=_init(("embed", "mlp")), rngs=rngs)
    self.down = nnx.Linear(HIDDEN, DIM, kernel_init=_init(("mlp", "embed")), rngs=rngs)

  def __call__(self, tokens_BL):
    x_BLD = self.embed(tokens_BL)
    x_BLD = x_BLD + self.vision(x_BLD)
    x_BLD = x_BLD + self.down(jax.nn.relu(self.up(x_BLD)))
    return self.embed.attend(x_BLD)


def tiny_loss(model, batch, key):
  """Next-token cross-entropy; a key-dependent token dropout makes the noise key matter."""
  tokens_BL = batch["tokens"]
  inputs_BL = tokens_BL
  if key is not None:
    inputs_BL = jnp.where(jax.random.bernoulli(key, 0.25, tokens_BL.shape), 0, tokens_BL)
  logits_BLV = model(inputs_BL)[:, :-1].astype(jnp.float32)
  targets_BL = tokens_BL[:, 1:]
  weights_BL = batch["weights"][:, 1:]
  nll_BL = optax.softmax_cross_entropy_with_integer_labels(logits_BLV, targets_BL)
  loss = jnp.sum(nll_BL * weights_BL) / jnp.maximum(jnp.sum(weights_BL), 1.0)
  return loss, {"num_tokens": jnp.sum(weights_BL)}


def tiny_batch(seed: int, batch: int = 8):
  """A learnable task: each sequence counts up by a fixed stride modulo VOCAB."""
  rng = np.random.default_rng(seed)
  start = rng.integers(0, VOCAB, (batch, 1))
  stride = rng.integers(1, 3, (batch, 1))
  tokens = (start + stride * np.arange(SEQ)[None]) % VOCAB
  weights = np.ones((batch, SEQ), np.float32)
  return {"tokens": tokens.astype(np.int32), "weights": weights}


def tiny_config(**optimizer) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.total_steps = 30
  c.optimizer = ml_collections.ConfigDict(
    dict(
      learning_rate=1e-2,
      warmup_steps=0,
      end_lr_ratio=1.0,
      b1=0.9,
      b2=0.95,
      eps=1e-8,
      weight_decay=0.1,
      grad_clip=1.0,
    )
  )
  c.optimizer.update(optimizer)
  return c


def make_mesh(data=1, fsdp=1, tensor=1, devices=None):
  cfg = ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor))
  devices = devices if devices is not None else jax.devices()[: data * fsdp * tensor]
  return mesh_lib.make_mesh(cfg, devices)


def build(config, mesh, freeze=(), accum=1, seed=0, loss_fn=tiny_loss):
  tx = optimizer_lib.make_optimizer(config)
  model_fn = lambda: TinyLM(rngs=nnx.Rngs(seed))
  graphdef, state, shardings = state_lib.create_train_state(model_fn, tx, mesh, RULES, freeze)
  step = step_lib.make_train_step(
    graphdef,
    loss_fn,
    tx,
    optimizer_lib.make_schedule(config),
    seed=seed,
    grad_accum_steps=accum,
    state_shardings=shardings,
  )
  return graphdef, state, shardings, step


def put(batch, mesh):
  return jax.device_put(batch, jax.tree.map(lambda x: batch_sharding(mesh, x.ndim), batch))


# ---- an independent numpy implementation of the stand-in forward, loss and AdamW ----


def _np_params(state):
  p = jax.tree.map(np.asarray, nnx.to_pure_dict(state.model_state()))
  return {
    "E": p["embed"]["embedding"].astype(np.float64),
    "Wv": p["vision"]["kernel"].astype(np.float64),
    "Wu": p["up"]["kernel"].astype(np.float64),
    "bu": p["up"]["bias"].astype(np.float64),
    "Wd": p["down"]["kernel"].astype(np.float64),
    "bd": p["down"]["bias"].astype(np.float64),
  }


def _np_loss_and_grads(P, inputs, targets, weights):
  """Loss of TinyLM and its gradient, by hand (float64)."""
  E, Wv, Wu, bu, Wd, bd = (P[k] for k in ("E", "Wv", "Wu", "bu", "Wd", "bd"))
  x0 = E[inputs]
  x1 = x0 + x0 @ Wv
  h_pre = x1 @ Wu + bu
  h = np.maximum(h_pre, 0)
  x2 = x1 + h @ Wd + bd
  logits = x2 @ E.T
  logits = logits[:, :-1]
  z = logits - logits.max(-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  w = weights[:, 1:]
  denom = max(w.sum(), 1.0)
  nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
  loss = (nll * w).sum() / denom
  # backward
  dlogits = np.exp(logp)
  np.put_along_axis(
    dlogits, targets[..., None], np.take_along_axis(dlogits, targets[..., None], -1) - 1, -1
  )
  dlogits *= (w / denom)[..., None]
  dlogits_full = np.zeros(x2.shape[:2] + (E.shape[0],))
  dlogits_full[:, :-1] = dlogits
  dx2 = dlogits_full @ E
  dE = np.einsum("blv,bld->vd", dlogits_full, x2)
  dbd = dx2.sum((0, 1))
  dWd = np.einsum("blh,bld->hd", h, dx2)
  dh = dx2 @ Wd.T * (h_pre > 0)
  dbu = dh.sum((0, 1))
  dWu = np.einsum("bld,blh->dh", x1, dh)
  dx1 = dx2 + dh @ Wu.T
  dWv = np.einsum("bld,ble->de", x0, dx1)
  dx0 = dx1 + dx1 @ Wv.T
  np.add.at(dE, inputs, dx0)
  return loss, {"E": dE, "Wv": dWv, "Wu": dWu, "bu": dbu, "Wd": dWd, "bd": dbd}


def test_golden_one_step_matches_numpy_reference():
  config = tiny_config()
  mesh = make_mesh()
  _, state, _, step = build(config, mesh)
  P = _np_params(state)
  batch = tiny_batch(0)
  # The step's noise: the same key derivation as step.step_key -> fold_in(., microbatch 0).
  key = jax.random.fold_in(step_lib.step_key(0, jnp.int32(0)), 0)
  drop = np.asarray(jax.random.bernoulli(key, 0.25, batch["tokens"].shape))
  inputs = np.where(drop, 0, batch["tokens"])
  loss, grads = _np_loss_and_grads(P, inputs, batch["tokens"][:, 1:], batch["weights"])
  gnorm = np.sqrt(sum((g**2).sum() for g in grads.values()))

  new_state, metrics = step(state, put(batch, mesh))
  np.testing.assert_allclose(float(metrics["loss"]), loss, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["grad_norm"]), gnorm, rtol=1e-5)
  assert float(metrics["num_tokens"]) == 8 * (SEQ - 1)
  assert float(metrics["learning_rate"]) == pytest.approx(1e-2)
  assert int(new_state.step) == 1

  # AdamW step 1 by hand: clip to norm 1, bias-corrected moments, decoupled decay on matrices.
  o = config.optimizer
  scale = min(1.0, o.grad_clip / gnorm)
  new_P = _np_params(new_state)
  for name, g in grads.items():
    g = g * scale
    m, v = (1 - o.b1) * g, (1 - o.b2) * g * g
    update = (m / (1 - o.b1)) / (np.sqrt(v / (1 - o.b2)) + o.eps)
    if P[name].ndim >= 2:
      update = update + o.weight_decay * P[name]
    np.testing.assert_allclose(
      new_P[name], P[name] - o.learning_rate * update, rtol=1e-4, atol=1e-6, err_msg=name
    )


def test_loss_falls_on_tiny_task():
  config = tiny_config(learning_rate=3e-2)
  mesh = make_mesh()
  _, state, _, step = build(config, mesh)
  losses = []
  for i in range(30):
    state, metrics = step(state, put(tiny_batch(i), mesh))
    losses.append(float(metrics["loss"]))
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses


def test_sharded_step_matches_single_device():
  config = tiny_config()
  single = make_mesh()
  sharded = make_mesh(2, 2, 2)
  _, s1, _, step1 = build(config, single)
  _, s8, sh8, step8 = build(config, sharded)
  # Parameters really are laid out over the mesh (embed -> fsdp, mlp -> tensor).
  assert s8.params["up"]["kernel"].value.sharding.spec == jax.sharding.PartitionSpec(
    "fsdp", "tensor"
  )
  for i in range(3):
    batch = tiny_batch(i)
    s1, m1 = step1(s1, put(batch, single))
    s8, m8 = step8(s8, put(batch, sharded))
    jax.block_until_ready(m8)
    np.testing.assert_allclose(float(m8["loss"]), float(m1["loss"]), rtol=1e-5)
    np.testing.assert_allclose(float(m8["grad_norm"]), float(m1["grad_norm"]), rtol=1e-5)
  p1 = jax.tree.map(np.asarray, nnx.to_pure_dict(s1.params))
  p8 = jax.tree.map(np.asarray, nnx.to_pure_dict(s8.params))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), p1, p8)


def test_grad_accumulation_matches_full_batch():
  config = tiny_config()
  mesh = make_mesh(2, 1, 1)
  no_noise = lambda model, batch, key: tiny_loss(model, batch, None)
  _, full, _, step_full = build(config, mesh, loss_fn=no_noise)
  _, acc, _, step_acc = build(config, mesh, accum=2, loss_fn=no_noise)
  for i in range(2):
    batch = tiny_batch(i)
    full, mf = step_full(full, put(batch, mesh))
    acc, ma = step_acc(acc, put(batch, mesh))
    # Every microbatch has the same token count, so the mean of microbatch means is the
    # full-batch mean: loss, gradient norm and parameters agree.
    np.testing.assert_allclose(float(ma["loss"]), float(mf["loss"]), rtol=1e-5)
    np.testing.assert_allclose(float(ma["grad_norm"]), float(mf["grad_norm"]), rtol=1e-5)
    assert float(ma["num_tokens"]) == float(mf["num_tokens"]) == 8 * (SEQ - 1)
  pf = jax.tree.map(np.asarray, nnx.to_pure_dict(full.params))
  pa = jax.tree.map(np.asarray, nnx.to_pure_dict(acc.params))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), pf, pa)


def test_frozen_params_do_not_move_and_have_no_optimizer_state():
  config = tiny_config()
  mesh = make_mesh()
  _, state, _, step = build(config, mesh, freeze=("vision",))
  assert "vision" not in state.params and "vision" in state.frozen
  before = np.asarray(state.frozen["vision"]["kernel"].value)
  up_before = np.asarray(state.params["up"]["kernel"].value)
  state, _ = step(state, put(tiny_batch(0), mesh))
  np.testing.assert_array_equal(np.asarray(state.frozen["vision"]["kernel"].value), before)
  assert not np.allclose(np.asarray(state.params["up"]["kernel"].value), up_before)
  opt_leaves = jax.tree_util.tree_flatten_with_path(state.opt_state)[0]
  assert not any("vision" in jax.tree_util.keystr(path) for path, _ in opt_leaves)
