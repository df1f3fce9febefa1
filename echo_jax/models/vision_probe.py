"""The vision tower with a linear multi-label head: the model of the vision pretraining stage.

`VisionProbe.vision` is the same `VisionTower` as `EchoVLM.vision` (same class, config and
parameter paths), so the trained tower is handed to the report model unchanged
(`vision_handover.graft_vision`). The head reads the mean of a study's merged vision tokens
(every view of the study together) and predicts the targets of
`echo_jax/data/synthetic/targets.py` with independent sigmoids.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from echo_jax.models.config import ModelConfig
from echo_jax.models.vision import VisionTower
from echo_jax.models.vision_layout import VisionInputs


class VisionProbe(nnx.Module):
  """`.vision` (VisionTower) and `.head` (mean-pooled tokens -> one logit per target)."""

  def __init__(self, config: ModelConfig, num_targets: int, *, rngs: nnx.Rngs):
    config.validate()
    self.config = config
    dtype, param_dtype = jnp.dtype(config.dtype), jnp.dtype(config.param_dtype)
    width = config.vision.out_hidden_size
    with nnx.use_eager_sharding(False):
      self.vision = VisionTower(
        config.vision, dtype=dtype, param_dtype=param_dtype, remat=config.remat, rngs=rngs
      )
      self.head_norm = nnx.LayerNorm(width, dtype=jnp.float32, param_dtype=param_dtype, rngs=rngs)
      self.head = nnx.Linear(width, num_targets, param_dtype=param_dtype, rngs=rngs)

  def pooled(self, vision: VisionInputs) -> jax.Array:
    """float32 [B, D]: the mean of each example's valid merged vision tokens."""
    features_BMD, valid_BM = self.vision(vision)
    weights_BM = valid_BM.astype(jnp.float32)
    total_BD = jnp.einsum("bmd,bm->bd", features_BMD.astype(jnp.float32), weights_BM)
    return total_BD / jnp.maximum(weights_BM.sum(-1, keepdims=True), 1.0)

  def __call__(self, vision: VisionInputs) -> jax.Array:
    """float32 logits [B, T], one per target."""
    return self.head(self.head_norm(self.pooled(vision))).astype(jnp.float32)
