"""A tiny random EchoVLM with synthetic studies and a quickly trained tokenizer.

Shared by the inference, generation, compilation and mesh tests:

  setup = make_setup(tmp_dir)       # 12 synthetic studies, BPE tokenizer, tiny model
  gen = ReportGenerator(setup.model, setup.tokenizer, setup.example_fn, batch_size=4)
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from flax import nnx

from echo_jax.data import images, readers, synthetic
from echo_jax.data import tokenizer as tokenizer_lib
from echo_jax.data.examples import StudyExamples
from echo_jax.models.presets import get_preset
from echo_jax.models.vlm import EchoVLM

NUM_STUDIES = 12
PIXELS = 56 * 56  # one 4x4-patch image per study: 16 patches, 4 merged vision tokens
CONTEXT_LEN = 144  # the chat prompt of one small image is 131 tokens
RESPONSE_LEN = 32


@dataclasses.dataclass
class TinySetup:
  data_dir: str
  studies: list[Any]
  tokenizer: tokenizer_lib.Tokenizer
  config: Any
  model: EchoVLM
  example_fn: StudyExamples


def write_data(data_dir: str, num_studies: int = NUM_STUDIES, seed: int = 0):
  """The synthetic benchmark (all splits) and its tokenizer at DATA/tokenizer."""
  synthetic.write_benchmark(data_dir, num_studies, seed, workers=1, gallery=False, progress=False)
  studies = readers.read_dataset("r2gen", data_dir)
  tok_dir = os.path.join(data_dir, "tokenizer")
  if os.path.isfile(os.path.join(tok_dir, "tokenizer.json")):
    tok = tokenizer_lib.load_tokenizer(tok_dir)
  else:
    tok = tokenizer_lib.train_bpe_tokenizer([s.report for s in studies], 1024, out_dir=tok_dir)
  return studies, tok


def example_fn(tok, config, context_len: int = CONTEXT_LEN) -> StudyExamples:
  image_config = images.ImageConfig.from_vision_config(
    config.vision, min_pixels=PIXELS, max_pixels=PIXELS
  )
  return StudyExamples(
    tokenizer=tok,
    model_config=config,
    image_config=image_config,
    context_len=context_len,
    response_len=RESPONSE_LEN,
    max_patches=16,
  )


def make_setup(data_dir: str, seed: int = 0) -> TinySetup:
  studies, tok = write_data(data_dir)
  config = get_preset("tiny")
  model = EchoVLM(config, rngs=nnx.Rngs(seed))
  return TinySetup(data_dir, studies, tok, config, model, example_fn(tok, config))
