"""Stage "vision": pretrain the vision tower on what the images show, before any report.

The paper starts from a pretrained medical VLM (Lingshu-7B); a tiny model trained from
scratch gets too weak a signal for its vision path from the report loss alone, and writes
the same fluent report whatever the image. This stage is the analog of the pretrained
VLM: the tower and patch merger (`VisionProbe`) learn the benchmark's targets
(`data/synthetic/targets.py`: the 14 CheXpert labels plus the side, lobe, severity and
device facts the report states) with a multi-label sigmoid loss on mean-pooled tokens.
The AR stage then starts from this tower (`init.vision_path`) and keeps it frozen.

Logged: the loss, and every `eval_every` steps the validation ROC AUC of each CheXpert
label (`eval/auc/<label>`) and their mean (`eval/auc/mean_14`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath
from flax import nnx
from jax.sharding import Mesh

from echo_jax.data import images, pipeline
from echo_jax.data.synthetic.labels import CHEXPERT_LABELS
from echo_jax.data.synthetic.targets import NUM_LABELS, TARGET_NAMES
from echo_jax.data.vision_examples import VisionExamples
from echo_jax.eval.auc import per_label_auc
from echo_jax.models.config import ModelConfig
from echo_jax.models.vision_probe import VisionProbe
from echo_jax.train import checkpoint as checkpoint_lib
from echo_jax.train import mesh as mesh_lib
from echo_jax.train import state as state_lib
from echo_jax.train.state import TrainState

log = logging.getLogger(__name__)

VISION_KEY = "vision"  # the tower's subtree in both VisionProbe and EchoVLM states


def probe_fn(model_config: ModelConfig, seed: int) -> Callable[[], VisionProbe]:
  return lambda: VisionProbe(model_config, len(TARGET_NAMES), rngs=nnx.Rngs(seed))


def vision_loss(model: VisionProbe, batch: dict[str, Any], key: jax.Array) -> tuple[Any, dict]:
  """Mean sigmoid cross-entropy over the known targets of the batch's valid examples."""
  del key  # deterministic objective
  logits_BT = model(batch["vision"])
  targets_BT = batch["targets"].astype(jnp.float32)
  weight_BT = batch["target_mask"].astype(jnp.float32)
  if "example_valid" in batch:  # eval padding weighs nothing
    weight_BT = weight_BT * batch["example_valid"].astype(jnp.float32)[:, None]
  bce_BT = optax.sigmoid_binary_cross_entropy(logits_BT, targets_BT)
  count = jnp.maximum(weight_BT.sum(), 1.0)
  loss = (bce_BT * weight_BT).sum() / count
  label_w = weight_BT[:, :NUM_LABELS]
  correct = ((logits_BT[:, :NUM_LABELS] > 0) == (targets_BT[:, :NUM_LABELS] > 0.5)) * label_w
  return loss, {
    "label_accuracy": correct.sum() / jnp.maximum(label_w.sum(), 1.0),
    "num_tokens": count,  # weights the eval mean by known targets
  }


def predict_scores(
  graphdef: nnx.GraphDef,
  params: Any,
  records: Sequence[Any],
  transform: VisionExamples,
  batch_size: int,
  mesh: Mesh | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(sigmoid scores, targets, target mask), each [N, T], for `records` in order."""
  forward = _jitted_forward(graphdef)
  dataset = pipeline.eval_dataset(records, transform, global_batch_size=batch_size)
  scores, targets, masks = [], [], []
  for batch in pipeline.GlobalBatchIterator(dataset, mesh):
    keep = np.asarray(jax.device_get(batch["example_valid"])).astype(bool)
    out = np.asarray(jax.device_get(forward(params, batch["vision"])))
    scores.append(out[keep])
    targets.append(np.asarray(jax.device_get(batch["targets"]))[keep])
    masks.append(np.asarray(jax.device_get(batch["target_mask"]))[keep])
  return np.concatenate(scores), np.concatenate(targets), np.concatenate(masks)


_FORWARDS: dict[Any, Any] = {}


def _jitted_forward(graphdef: nnx.GraphDef) -> Any:
  if graphdef not in _FORWARDS:

    @jax.jit
    def forward(params, vision):
      return jax.nn.sigmoid(nnx.merge(graphdef, params)(vision))

    _FORWARDS[graphdef] = forward
  return _FORWARDS[graphdef]


def label_aucs(scores_NT: np.ndarray, targets_NT: np.ndarray, mask_NT: np.ndarray) -> dict:
  """{"auc/<label>": AUC} over the 14 CheXpert labels (undefined ones left out) + the mean."""
  aucs = per_label_auc(
    scores_NT[:, :NUM_LABELS], targets_NT[:, :NUM_LABELS], mask_NT[:, :NUM_LABELS]
  )
  out = {f"auc/{name}": a for name, a in zip(CHEXPERT_LABELS, aucs, strict=True) if a is not None}
  defined = [a for a in aucs if a is not None]
  out["auc/mean_14"] = float(np.mean(defined)) if defined else 0.0
  return out


AUC_FILE = "vision_auc.json"  # the newest validation AUCs, beside the stage's checkpoints


def make_auc_hook(
  records: Sequence[Any], transform: VisionExamples, batch_size: int, mesh, workdir: str
):
  """hook(step, state, graphdef) -> per-label validation AUC (written as eval scalars).

  The newest values also go to `<workdir>/vision_auc.json`, which the main job reports.
  """

  def hook(step: int, state: TrainState, graphdef: nnx.GraphDef) -> dict[str, float]:
    params = nnx.merge_state(state.params, state.frozen)
    out = label_aucs(*predict_scores(graphdef, params, records, transform, batch_size, mesh))
    log.info("[%d] validation AUC, mean over the 14 labels: %.3f", step, out["auc/mean_14"])
    if jax.process_index() == 0:
      record = {"step": step, "num_studies": len(records), "auc": out}
      (epath.Path(workdir) / AUC_FILE).write_text(json.dumps(record, indent=1))
    return out

  return hook


def vision_transform(config: Any, model_config: ModelConfig) -> VisionExamples:
  image_config = images.ImageConfig.from_vision_config(
    model_config.vision, min_pixels=config.data.min_pixels, max_pixels=config.data.max_pixels
  )
  return VisionExamples(model_config.vision, image_config, int(config.data.max_patches))


def graft_vision(model_state: nnx.State, probe_state: nnx.State) -> nnx.State:
  """`model_state` (an EchoVLM state) with its vision tower replaced by the probe's.

  Both towers must have the same shapes: the AR stage and the vision stage share the
  model preset.
  """
  ours = jax.tree_util.tree_flatten_with_path(model_state[VISION_KEY])[0]
  theirs = jax.tree_util.tree_flatten_with_path(probe_state[VISION_KEY])[0]
  shapes = lambda flat: {jax.tree_util.keystr(p): (x.shape, x.dtype) for p, x in flat}  # noqa: E731
  if shapes(ours) != shapes(theirs):
    raise ValueError(
      "the vision stage's tower does not match this model's vision config; "
      "train both stages with the same model.preset"
    )
  merged = nnx.State(dict(model_state))
  merged[VISION_KEY] = probe_state[VISION_KEY]
  return merged


def restore_probe_state(
  path: str, model_config: ModelConfig, mesh: Mesh, rules: Sequence[tuple[str, Any]], seed: int
) -> nnx.State:
  """The newest VisionProbe state of a vision-stage workdir, in the mesh's shardings."""
  _, abstract, shardings = state_lib.state_shardings(
    probe_fn(model_config, seed), optax.identity(), mesh, rules
  )
  target = state_lib.with_shardings(abstract, shardings)
  return checkpoint_lib.restore_model_state(path, nnx.merge_state(target.params, target.frozen))


def random_model_state(
  model_fn: Callable[[], nnx.Module], mesh: Mesh, rules: Sequence[tuple[str, Any]]
) -> nnx.State:
  """A freshly initialized full model state laid out on the mesh."""
  _, _, shardings = state_lib.state_shardings(model_fn, optax.identity(), mesh, rules)
  full = nnx.merge_state(shardings.params, shardings.frozen)

  def init():
    with nnx.use_eager_sharding(False):
      return nnx.state(model_fn())

  with mesh_lib.use_mesh(mesh):
    return jax.jit(init, out_shardings=full)()
