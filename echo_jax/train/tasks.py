"""The real Task of stages "ar" and "rad": EchoVLM + objective + dataset, from a config.

Objectives (echo_jax.diffusion):
  ar   causal LM over [context | response], next-token loss on report + EOS
  rad  [context | noisy response | clean response] with the RAD mask, masked-token
       loss weighted by 1/t (ECHO.md §5); noise drawn from the step's key
Initial weights: `init.path` is an echo_jax workdir (its newest `model` item) or a
Hugging Face directory (`echo_jax.load_pretrained`); empty = random init.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh

from echo_jax import config_lib
from echo_jax.data import pipeline
from echo_jax.train import checkpoint as checkpoint_lib
from echo_jax.train import state as state_lib
from echo_jax.train.loop import Task

log = logging.getLogger(__name__)


def _is_hf_dir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, "config.json")) and any(
    f.endswith(".safetensors") for f in os.listdir(path)
  )


def init_format(config: ml_collections.ConfigDict) -> str:
  """ "hf" or "echo" for a non-empty init.path ("auto" decides by the directory's files)."""
  if config.init.format != "auto":
    return config.init.format
  return "hf" if os.path.isdir(config.init.path) and _is_hf_dir(config.init.path) else "echo"


def _unpack(batch: dict[str, Any]) -> tuple[jax.Array, ...]:
  positions_3BP = jnp.swapaxes(batch["context_positions"], 0, 1)  # (B, 3, P) -> (3, B, P)
  return (
    batch["context_tokens"],
    positions_3BP,
    batch["context_valid"].astype(bool),
    batch["response_tokens"],
    batch["next_position"],
  )


def _without_padding(packed, batch):
  # Eval batches are padded with copies marked example_valid=False: they weigh nothing.
  if "example_valid" not in batch:
    return packed
  keep_B = batch["example_valid"].astype(jnp.float32)
  return packed.replace(
    weights_BL=packed.weights_BL * keep_B[:, None], num_tokens_B=packed.num_tokens_B * keep_B
  )


def make_loss_fn(config: ml_collections.ConfigDict, model_config) -> Any:
  """The step.LossFn of `config.stage`."""
  from echo_jax.diffusion import ar, rad
  from echo_jax.diffusion.noise import NoiseConfig

  eos, mask_id = model_config.tokens.eos, model_config.tokens.mask
  block_len = int(config.rad.block_len)
  noise = NoiseConfig(
    eps=float(config.rad.eps),
    per_block=bool(config.rad.per_block_noise),
    complementary=bool(config.rad.complementary),
  )

  def finish(model, packed, batch, objective):
    packed = _without_padding(packed, batch)
    logits_BLV = model(
      packed.tokens_BL,
      packed.positions_3BL,
      packed.mask_BLL,
      batch.get("vision"),
      logits_span=(packed.target_start, packed.target_stop),
    )
    out = dict(objective(logits_BLV, packed))
    return out.pop("loss"), out

  def ar_loss_fn(model, batch, key):
    del key  # the causal objective draws no noise
    tokens, positions, valid, response, next_pos = _unpack(batch)
    packed = ar.pack_ar(
      tokens, positions, valid, response, rad.report_mask(response, eos), next_pos
    )
    return finish(model, packed, batch, ar.ar_loss)

  def rad_loss_at(block, model, batch, key):
    tokens, positions, valid, response, next_pos = _unpack(batch)
    response_valid = rad.response_valid_mask(response, eos, block)
    packed = rad.pack_rad(
      tokens,
      positions,
      valid,
      response,
      response_valid,
      next_pos,
      key,
      block_len=block,
      mask_id=mask_id,
      noise=noise,
    )
    return finish(model, packed, batch, rad.rad_loss)

  mixed = tuple(int(b) for b in config.rad.mixed_block_lens)

  def rad_loss_fn(model, batch, key):
    if not mixed:
      return rad_loss_at(block_len, model, batch, key)
    # One block length per step, drawn from the step's key: a single teacher that
    # decodes with every block length its students will use.
    key, pick = jax.random.split(key)
    graphdef, state = nnx.split(model)  # lax.switch takes pure functions of arrays

    def branch(block):
      return lambda st, b, k: rad_loss_at(block, nnx.merge(graphdef, st), b, k)

    index = jax.random.randint(pick, (), 0, len(mixed))
    return jax.lax.switch(index, [branch(block) for block in mixed], state, batch, key)

  def dcd_loss_fn(model, batch, key):
    from echo_jax.diffusion import dcd_loss

    tokens, positions, valid, _, next_pos = _unpack(batch)
    targets = batch["rollout_targets"]
    if "example_valid" in batch:
      targets = targets.replace(valid_BR=targets.valid_BR & batch["example_valid"][:, None])
    packed = dcd_loss.pack_student(
      tokens,
      positions,
      valid,
      batch["rollout_tokens"],
      next_pos,
      block_len=block_len,
      mask_id=mask_id,
      eos_id=eos,
    )
    logits_BRV = model(
      packed.tokens_BL,
      packed.positions_3BL,
      packed.mask_BLL,
      batch.get("vision"),
      logits_span=(packed.target_start, packed.target_stop),
    )
    out = dcd_loss.dcd_loss(logits_BRV, targets, eos_ids=(eos, pad_id), config=dcd_config)
    out["kept_fraction"] = jnp.mean(batch["rollout_keep"].astype(jnp.float32))
    out["teacher_forwards"] = batch["rollout_forwards"].astype(jnp.float32)
    loss = out.pop("loss")
    if rad_weight:
      # Mixing in the RAD loss on the ground-truth reports (ECHO.md §10).
      rad_value, rad_metrics = rad_loss_at(block_len, model, batch, key)
      loss = loss + rad_weight * rad_value
      out["rad_loss"] = rad_value
    return loss, out

  pad_id = model_config.tokens.pad
  dcd_config = None
  rad_weight = 0.0
  if config.stage == "dcd":
    from echo_jax.diffusion.dcd_loss import DCDLossConfig

    dcd_config = DCDLossConfig(
      step_weights=bool(config.dcd.step_weights),
      eos_weight=float(config.dcd.eos_weight),
      divergence=str(config.dcd.divergence),
    )
    rad_weight = float(config.dcd.rad_weight)

  if config.stage == "ar":
    return ar_loss_fn
  if config.stage == "rad":
    return rad_loss_fn
  if config.stage == "dcd":
    return dcd_loss_fn
  raise ValueError(f"stage {config.stage!r} has no objective here; use 'ar', 'rad' or 'dcd'")


def rollout_config(config: ml_collections.ConfigDict, model_config) -> Any:
  """The teacher rollout of a DCD run (diffusion.dcd.RolloutConfig)."""
  from echo_jax.diffusion.dcd import RolloutConfig
  from echo_jax.sampling.stops import RepetitionGuard

  ids = model_config.tokens
  guard = None
  if config.dcd.loop_ngram:
    guard = RepetitionGuard(ngram=int(config.dcd.loop_ngram), max_repeats=int(config.dcd.loop_max))
  return RolloutConfig(
    eos_id=ids.eos,
    mask_id=ids.mask,
    pad_id=ids.pad,
    block_len=int(config.rad.block_len),
    max_new_tokens=int(config.data.response_len),
    threshold=float(config.dcd.threshold),
    top_k=int(config.dcd.top_k),
    student_prefix=bool(config.dcd.student_prefix),
    repetition=guard,
  )


def make_prepare_batch(config, model_config, teacher_graphdef, teacher_params) -> Any:
  """DCD phase 1 before every step: the frozen teacher rolls out on the batch's contexts.

  The rollout is one jitted call on the training mesh (no host sync); its tokens and
  stitched targets join the batch for the student's step (phase 2).
  """
  from echo_jax.diffusion import dcd
  from echo_jax.models.decode_model import DecodeContext, EchoDecodeModel

  cfg = rollout_config(config, model_config)
  teacher = EchoDecodeModel(teacher_graphdef, model_config)

  def prepare(state, graphdef, batch):
    context = DecodeContext(
      tokens_BP=batch["context_tokens"],
      positions_3BP=jnp.swapaxes(batch["context_positions"], 0, 1),
      valid_BP=batch["context_valid"].astype(bool),
      vision=batch.get("vision"),
    )
    student = student_params = None
    if cfg.student_prefix:
      student = EchoDecodeModel(graphdef, model_config)
      student_params = nnx.merge_state(state.params, state.frozen)
    out = dcd.teacher_rollout(cfg, teacher, teacher_params, context, student, student_params)
    return dict(
      batch,
      rollout_tokens=out.tokens_BR,
      rollout_targets=out.targets,
      rollout_keep=out.keep_B,
      rollout_forwards=out.teacher_forwards,
    )

  return prepare


def load_studies(config: ml_collections.ConfigDict) -> tuple[list[Any], list[Any]]:
  """(train, val) Study lists of the configured dataset (writes the synthetic one if needed)."""
  from echo_jax.data import readers

  name, path = config.data.name, config.data.path
  if name == "synthetic":
    from echo_jax.data import synthetic

    if jax.process_index() == 0:
      synthetic.write_benchmark(path, config.data.num_studies, config.seed, progress=False)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices("echo_jax synthetic benchmark written")
    name = "r2gen"
  kwargs = {"images_root": config.data.images_root} if config.data.images_root else {}
  train = readers.read_dataset(name, path, splits=["train"], **kwargs)
  val = readers.read_dataset(name, path, splits=["val"], **kwargs)
  return train, val


def load_tokenizer(
  config: ml_collections.ConfigDict, train_studies: Sequence[Any], model_config
) -> Any:
  """The configured tokenizer; for the synthetic data a BPE trained once on its reports."""
  from echo_jax.data import tokenizer as tokenizer_lib

  path = config.data.tokenizer
  if not path and config.data.name == "synthetic":
    path = os.path.join(config.data.path, "tokenizer")
    if not os.path.isfile(os.path.join(path, "tokenizer.json")):
      # The prompt's fixed text joins the corpus so that it costs a few tokens, not ~90.
      prompt = [
        f"system\n{tokenizer_lib.DEFAULT_SYSTEM}",
        "user\n",
        tokenizer_lib.ECHO_INSTRUCTION,
        "\n",
        "assistant\n",
      ]
      texts = [s.report for s in train_studies] + prompt * max(len(train_studies) // 20, 50)
      tokenizer_lib.train_bpe_tokenizer(texts, model_config.text.vocab_size, out_dir=path)
  elif not path and config.init.path and init_format(config) == "hf":
    path = config.init.path
  if not path:
    raise ValueError(
      "no tokenizer: set --config.data.tokenizer to a tokenizer.json (or its directory)"
    )
  tokenizer = tokenizer_lib.load_tokenizer(path)
  tokenizer.check_ids(model_config.tokens)
  return tokenizer


def make_sample_hook(config, model_config, tokenizer, transform, studies) -> Any:
  """A hook that decodes `config.num_samples` validation studies with the stage's sampler.

  AR decodes token by token, RAD with its multi-step rule, DCD in one step per block;
  the texts (generated beside the reference) go to the metric writer.
  """
  from echo_jax import inference

  kind = {"ar": "ar", "rad": "multi_step", "dcd": "one_step"}[config.stage]
  sampler = inference.make_sampler(
    kind,
    model_config.tokens,
    block_len=int(config.rad.block_len),
    max_new_tokens=int(config.data.response_len),
  )
  chosen = list(studies[: config.num_samples])

  def hook(step, state, graphdef):
    model = nnx.merge(graphdef, state.params, state.frozen)
    generator = inference.ReportGenerator(model, tokenizer, transform, batch_size=len(chosen))
    rows = generator.generate(chosen, sampler)
    return {
      f"sample_{i}": f"{r['id']} ({kind}): {r['prediction']}\nreference: {r['reference']}"
      for i, r in enumerate(rows)
    }

  return hook


def build_task(
  config: ml_collections.ConfigDict, mesh: Mesh, rules: Sequence[tuple[str, Any]]
) -> Task:
  """Model, objective and data of the config (see the module docstring)."""
  from echo_jax.data import images
  from echo_jax.models.vlm import EchoVLM

  model_config = config_lib.model_config(config)
  model_state = None
  if config.init.path and init_format(config) == "hf":
    from echo_jax.models.hf_import import load_pretrained

    model, hf_config = load_pretrained(
      config.init.path, dtype=config.model.dtype, param_dtype=config.model.param_dtype
    )
    model_config = hf_config.replace(remat=bool(config.model.remat))
    model_state = nnx.state(model)
  model_fn = lambda: EchoVLM(model_config, rngs=nnx.Rngs(config.seed))
  if config.init.path and init_format(config) == "echo":
    # The whole model state of the previous stage, read straight into this run's shardings.
    tx = optax.identity()  # shapes of the model only; no optimizer state needed
    _, abstract, shardings = state_lib.state_shardings(model_fn, tx, mesh, rules)
    target = state_lib.with_shardings(abstract, shardings)
    model_state = checkpoint_lib.restore_model_state(
      config.init.path, nnx.merge_state(target.params, target.frozen)
    )

  prepare_batch = None
  if config.stage == "dcd":
    # The frozen teacher shares the mesh: its state is read into the model's shardings.
    tx = optax.identity()
    graphdef, abstract, shardings = state_lib.state_shardings(model_fn, tx, mesh, rules)
    target = state_lib.with_shardings(abstract, shardings)
    teacher_state = checkpoint_lib.restore_model_state(
      config.dcd.teacher_path, nnx.merge_state(target.params, target.frozen)
    )
    teacher_graphdef = nnx.graphdef(nnx.eval_shape(model_fn))
    prepare_batch = make_prepare_batch(config, model_config, teacher_graphdef, teacher_state)
    if model_state is None:
      # The student starts as the teacher (Algorithm 1), in its own buffers: the train
      # step donates the student's, and the frozen teacher must outlive them.
      model_state = jax.tree.map(jnp.copy, teacher_state)

  train, val = load_studies(config)
  tokenizer = load_tokenizer(config, train, model_config)
  image_config = images.ImageConfig.from_vision_config(
    model_config.vision, min_pixels=config.data.min_pixels, max_pixels=config.data.max_pixels
  )
  transform = pipeline.StudyExamples(
    tokenizer=tokenizer,
    model_config=model_config,
    image_config=image_config,
    context_len=config.data.context_len,
    response_len=config.data.response_len,
    max_patches=config.data.max_patches,
  )
  copies = {"ar": 1, "dcd": 2}.get(config.stage, 3 if config.rad.complementary else 2)
  return Task(
    model_fn=model_fn,
    loss_fn=make_loss_fn(config, model_config),
    train_records=train,
    eval_records=val,
    transform=transform,
    model_state=model_state,
    tokens_per_example=config.data.context_len + copies * config.data.response_len,
    prepare_batch=prepare_batch,
    sample_hooks=[make_sample_hook(config, model_config, tokenizer, transform, val)]
    if config.sample_every and val
    else [],
  )
