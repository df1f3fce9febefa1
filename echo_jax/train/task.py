"""What the training loop needs from a model, an objective and a dataset: a `Task`.

`train/tasks.py` builds the real one (EchoVLM, the stage's objective, the configured
dataset); tests build small stand-ins. Keeping the type here, apart from both the loop
and the builder, lets each import it without importing the other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from flax import nnx

from echo_jax.data import pipeline
from echo_jax.train import step as step_lib
from echo_jax.train.state import TrainState

# hook(step, state, graphdef) -> {name: text}: e.g. generated sample reports to log.
SampleHook = Callable[[int, TrainState, nnx.GraphDef], dict[str, str]]
# hook(step, state, graphdef) -> {name: value}: e.g. validation AUC, written as eval scalars.
MetricHook = Callable[[int, TrainState, nnx.GraphDef], dict[str, float]]


@dataclasses.dataclass
class Task:
  """What the loop needs from a model + objective + dataset.

  model_fn: builds the model (called under nnx.eval_shape and under jit).
  loss_fn: step.LossFn, `(model, batch, key) -> (loss, metrics)`; must weight examples
    with `batch["example_valid"] == False` (eval padding) by zero when that key exists.
  train_records / eval_records: the examples' source records (e.g. Study objects).
  transform: record -> fixed-shape example dict (see data/pipeline.py).
  model_state: a full model state to start from (previous stage / Hugging Face), or None.
  tokens_per_example: tokens one example sends through the model (for tokens/s).
  sample_hooks: called every `config.sample_every` steps; their texts are logged.
  metric_hooks: called every `config.eval_every` steps; their values are written as
    `eval/<name>` scalars (metrics that are not a mean over batches, such as AUC).
  prepare_batch: `(state, graphdef, batch) -> batch`, run on every train and eval batch
    before the step (DCD: the frozen teacher's rollout adds its targets). It must be
    jitted and must not sync with the host, so the step queue keeps flowing.
  """

  model_fn: Callable[[], nnx.Module]
  loss_fn: step_lib.LossFn
  train_records: Sequence[Any]
  transform: pipeline.Transform
  eval_records: Sequence[Any] = ()
  model_state: nnx.State | None = None
  tokens_per_example: int = 0
  sample_hooks: Sequence[SampleHook] = ()
  metric_hooks: Sequence[MetricHook] = ()
  prepare_batch: Callable[[TrainState, nnx.GraphDef, Any], Any] | None = None
