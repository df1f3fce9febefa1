"""The real Task of a training stage: EchoVLM + the stage's objective + the dataset.

This is where the ConfigDict meets the typed pieces: the stage settings are read once
into a `StageConfig` (train/stage_config.py), the objective comes from the registry
(train/objectives.py), the studies and the tokenizer from echo_jax.data.datasets (a list,
or for data.name=tfds a lazy TfdsStudies: nothing here reads a whole split of it), the
initial weights from train/init_weights.py and, for DCD, the frozen teacher's rollout
from train/dcd_teacher.py.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax.sharding import Mesh

from echo_jax import config_lib
from echo_jax.data import datasets, examples, images
from echo_jax.data import tokenizer as tokenizer_lib
from echo_jax.data.study import Study
from echo_jax.models.config import ModelConfig
from echo_jax.models.vlm import EchoVLM
from echo_jax.train import checkpoint as checkpoint_lib
from echo_jax.train import dcd_teacher, init_weights, objectives, vision_stage
from echo_jax.train.sample_hook import make_sample_hook
from echo_jax.train.stage_config import StageConfig
from echo_jax.train.task import Task

log = logging.getLogger(__name__)

# Reports read to size data.response_len from a lazy source (see studies_to_check).
MAX_CHECKED_STUDIES = 2000


def load_studies(
  config: ml_collections.ConfigDict,
) -> tuple[Sequence[Study], Sequence[Study]]:
  """(train, val) Study sequences of the configured dataset (writes the synthetic one if needed):
  lists, or for data.name=tfds lazy TfdsStudies."""
  d = config.data
  return datasets.load_splits(
    d.name, d.path, num_studies=d.num_studies, seed=config.seed, images_root=d.images_root
  )


def load_tokenizer(
  config: ml_collections.ConfigDict, train_studies: Sequence[Study], model_config: ModelConfig
) -> tokenizer_lib.Tokenizer:
  """The configured tokenizer; for the synthetic data a BPE trained once on its reports."""
  return datasets.load_tokenizer_for(
    config.data.tokenizer,
    data_name=config.data.name,
    data_path=config.data.path,
    train_studies=train_studies,
    vocab_size=model_config.text.vocab_size,
    token_ids=model_config.tokens,
    fallback_path=config.init.path if init_weights.starts_from_hf(config) else "",
  )


def studies_to_check(train: Sequence[Study], val: Sequence[Study]) -> list[Study]:
  """The studies whose reports size data.response_len: all of them when they are in memory;
  of a lazy source (a TFDS split, every record read with its images) an evenly spaced
  sample of at most MAX_CHECKED_STUDIES, said in the log."""
  if isinstance(train, list) and isinstance(val, list):
    return [*train, *val]
  total = len(train) + len(val)
  if total <= MAX_CHECKED_STUDIES:
    return [*train, *val]
  step = total / MAX_CHECKED_STUDIES
  positions = [int(i * step) for i in range(MAX_CHECKED_STUDIES)]
  log.info(
    "data.response_len is checked on %d evenly spaced studies of the %d in train and val",
    len(positions),
    total,
  )
  return [train[i] if i < len(train) else val[i - len(train)] for i in positions]


def check_response_len(
  config: ml_collections.ConfigDict, studies: Sequence[Study], tokenizer: tokenizer_lib.Tokenizer
) -> None:
  """Refuse a response_len that would cut reports (and their EOS) unless allowed.

  Sized from the data, not guessed: the message gives the longest report and the
  smallest block-aligned length that holds it.
  """
  if config.data.get("allow_truncation", False) or not studies:
    return
  lengths = [len(tokenizer_lib.encode_report(tokenizer, s.report)) for s in studies]
  longest = max(range(len(lengths)), key=lengths.__getitem__)
  if lengths[longest] <= config.data.response_len:
    return
  cut = sum(n > config.data.response_len for n in lengths)
  block = max([int(config.block_len), *(int(b) for b in config.rad.mixed_block_lens)])
  needed = -(-lengths[longest] // block) * block
  raise config_lib.ConfigError(
    [
      f"data.response_len={config.data.response_len} would cut {cut} of {len(lengths)} reports "
      f"(the longest, study {studies[longest].id}, has {lengths[longest]} tokens with its EOS): "
      f"set --config.data.response_len={needed}, or --config.data.allow_truncation=True"
    ]
  )


def build_task(
  config: ml_collections.ConfigDict, mesh: Mesh, rules: Sequence[tuple[str, Any]]
) -> Task:
  """Model, objective and data of the config (see the module docstring)."""
  if config.stage == "vision":
    return build_vision_task(config, mesh, rules)
  model_config = config_lib.model_config(config)
  model_state = None
  if init_weights.starts_from_hf(config):
    model_config, model_state = init_weights.load_hf_start(config)
  stage = StageConfig.from_config(config, model_config)
  model_fn = lambda: EchoVLM(model_config, rngs=nnx.Rngs(config.seed))
  echo_state = init_weights.load_echo_start(config, model_fn, mesh, rules)
  if echo_state is not None:
    model_state = echo_state
  if config.init.get("vision_path"):
    # The pretrained tower of the vision stage replaces this model's (random or earlier).
    probe_state = vision_stage.restore_probe_state(
      config.init.vision_path, model_config, mesh, rules, config.seed
    )
    if model_state is None:
      model_state = vision_stage.random_model_state(model_fn, mesh, rules)
    model_state = vision_stage.graft_vision(model_state, probe_state)

  prepare_batch = None
  if stage.dcd is not None:
    # The frozen teacher shares the mesh: its state is read into the model's shardings.
    teacher_state = checkpoint_lib.restore_sharded_model_state(
      stage.dcd.teacher_path, model_fn, mesh, rules
    )
    teacher_graphdef = nnx.graphdef(nnx.eval_shape(model_fn))
    prepare_batch = dcd_teacher.make_prepare_batch(
      stage, model_config, teacher_graphdef, teacher_state
    )
    if model_state is None:
      # The student starts as the teacher (Algorithm 1), in its own buffers: the train
      # step donates the student's, and the frozen teacher must outlive them.
      model_state = jax.tree.map(jnp.copy, teacher_state)

  train, val = load_studies(config)
  tokenizer = load_tokenizer(config, train, model_config)
  check_response_len(config, studies_to_check(train, val), tokenizer)
  image_config = images.ImageConfig.from_vision_config(
    model_config.vision, min_pixels=config.data.min_pixels, max_pixels=config.data.max_pixels
  )
  transform = examples.StudyExamples(
    tokenizer=tokenizer,
    model_config=model_config,
    image_config=image_config,
    context_len=config.data.context_len,
    response_len=config.data.response_len,
    max_patches=config.data.max_patches,
  )
  hooks = []
  if config.sample_every and val:
    hooks.append(
      make_sample_hook(stage, model_config, tokenizer, transform, val, config.num_samples)
    )
  return Task(
    model_fn=model_fn,
    loss_fn=objectives.make_loss_fn(stage),
    train_records=train,
    eval_records=val,
    transform=transform,
    model_state=model_state,
    tokens_per_example=objectives.tokens_per_example(stage),
    prepare_batch=prepare_batch,
    sample_hooks=hooks,
  )


def build_vision_task(
  config: ml_collections.ConfigDict, mesh: Mesh, rules: Sequence[tuple[str, Any]]
) -> Task:
  """Stage "vision": the tower and a label head on the dataset's images (train/vision_stage.py)."""
  model_config = config_lib.model_config(config)
  model_fn = vision_stage.probe_fn(model_config, config.seed)
  model_state = None
  if config.init.path:  # another vision-stage workdir (VisionProbe state) to continue from
    model_state = checkpoint_lib.restore_sharded_model_state(
      config.init.path, model_fn, mesh, rules
    )
  train, val = load_studies(config)
  transform = vision_stage.vision_transform(config, model_config)
  hooks = []
  if config.eval_every and val:
    hooks.append(
      vision_stage.make_auc_hook(val, transform, config.batch_size, mesh, config.workdir)
    )
  merge = model_config.vision.spatial_merge_size
  return Task(
    model_fn=model_fn,
    loss_fn=vision_stage.vision_loss,
    train_records=train,
    eval_records=val,
    transform=transform,
    model_state=model_state,
    tokens_per_example=int(config.data.max_patches) // merge**2,
    metric_hooks=hooks,
  )
