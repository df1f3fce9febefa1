"""Sample reports during training: a few validation studies decoded with the stage's sampler.

AR decodes token by token, RAD with its multi-step rule, DCD in one step per block (the
sampler named in the stage's objectives.OBJECTIVES entry); each text is written beside
its reference by the metric writer.
"""

from __future__ import annotations

from collections.abc import Sequence

from flax import nnx

from echo_jax import inference
from echo_jax.data import pipeline
from echo_jax.data import tokenizer as tokenizer_lib
from echo_jax.models.config import ModelConfig
from echo_jax.train import objectives
from echo_jax.train.stage_config import StageConfig
from echo_jax.train.state import TrainState
from echo_jax.train.task import SampleHook


def make_sample_hook(
  stage: StageConfig,
  model_config: ModelConfig,
  tokenizer: tokenizer_lib.Tokenizer,
  transform: pipeline.Transform,
  studies: Sequence[object],
  num_samples: int,
) -> SampleHook:
  """`hook(step, state, graphdef) -> {name: text}` over the first `num_samples` studies."""
  kind = objectives.objective(stage).sampler
  sampler = inference.make_sampler(
    kind, model_config.tokens, block_len=stage.block_len, max_new_tokens=stage.response_len
  )
  chosen = list(studies[:num_samples])

  def hook(step: int, state: TrainState, graphdef: nnx.GraphDef) -> dict[str, str]:
    model = nnx.merge(graphdef, state.params, state.frozen)
    generator = inference.ReportGenerator(model, tokenizer, transform, batch_size=len(chosen))
    rows = generator.generate(chosen, sampler)
    return {
      f"sample_{i}": f"{r['id']} ({kind}): {r['prediction']}\nreference: {r['reference']}"
      for i, r in enumerate(rows)
    }

  return hook
