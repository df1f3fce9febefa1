"""AdamW with linear warmup and cosine decay, after global-norm gradient clipping.

The optimizer sees only the trainable parameters: frozen ones (e.g. the vision tower
in RAD) are split off before differentiation (see train/state.py), so they cost no
gradient memory and no Adam moments.
"""

from __future__ import annotations

import jax
import ml_collections
import optax


def make_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """0 -> peak over `warmup_steps`, then cosine to `end_lr_ratio * peak` at `total_steps`."""
  o = config.optimizer
  peak = float(o.learning_rate)
  warmup = int(o.warmup_steps)
  decay_steps = max(int(config.total_steps), warmup + 1)
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=peak,
    warmup_steps=warmup,
    decay_steps=decay_steps,
    end_value=peak * float(o.end_lr_ratio),
  )


def _decay_mask(params):
  # Decay matrices only: norms scales and biases (ndim < 2) are left alone.
  return jax.tree.map(lambda x: x.ndim >= 2, params)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The optimizer of the run: clip -> AdamW(schedule). Gradients are averaged per step."""
  o = config.optimizer
  parts = []
  if o.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(float(o.grad_clip)))
  parts.append(
    optax.adamw(
      learning_rate=make_schedule(config),
      b1=float(o.b1),
      b2=float(o.b2),
      eps=float(o.eps),
      weight_decay=float(o.weight_decay),
      mask=_decay_mask,
    )
  )
  return optax.chain(*parts)
