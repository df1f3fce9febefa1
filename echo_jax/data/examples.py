"""Where data meets the model: a Study becomes the fixed-shape example the model reads.

This is the one place that knows both sides: the study's files and report (data/) and
the model's token ids, rotary positions and vision layout (models/). Everything before
it works on studies, everything after it on arrays with the keys below. A study read
from a TFDS build carries its images as PNG bytes (`Study.images`); they are decoded
instead of the files, and the example is the same as from the files.

The keys of a report example (`StudyExamples`; P = context_len, R = response_len,
N = max_patches; a batch adds a leading B to each):

  context_tokens     int32 (P,)     chat prompt with the images' <|image_pad|> tokens,
                                    left-padded with the pad id
  context_valid      bool (P,)      False on the left padding
  context_positions  int32 (3, P)   multimodal rotary positions (t, h, w; 0 on padding).
                                    A batch holds them (B, 3, P); the model takes
                                    (3, B, P): `context_positions_3BP` is the one swap
  next_position      int32 ()       rotary position of the first response token
  response_tokens    int32 (R,)     report, EOS, then pad ids
  vision             VisionInputs   the study's ViT patches padded to N, their grid
                                    and window layout (models/vision_layout.py)
  truncated          int32 ()       1 when the report was cut to R tokens (host only:
                                    counted by the input pipeline, never sent to devices)
  example_valid      bool ()        added by the evaluation pipeline: False on the copies
                                    that pad its last batch (they weigh nothing)

The vision pretraining stage's examples (vision, targets, target_mask) are built in
data/vision_examples.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from echo_jax.data import images
from echo_jax.data import tokenizer as tokenizer_lib
from echo_jax.models import positions
from echo_jax.models.config import ModelConfig
from echo_jax.models.vision_layout import prepare_vision_inputs

Example = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class StudyExamples:
  """Study -> one fixed-shape training example (the `transform` of the pipeline).

  Its keys are the module docstring's (all but example_valid). A context longer than P or images with more than N patches raise ValueError: they
  cannot be cut without breaking the image-token layout, so the sizes must be raised.
  """

  tokenizer: tokenizer_lib.Tokenizer
  model_config: ModelConfig
  image_config: images.ImageConfig
  context_len: int
  response_len: int
  max_patches: int
  instruction: str | None = None  # the user turn's text; None = the ECHO instruction

  def __call__(self, study: Any) -> Example:
    ids = self.model_config.tokens
    patches, grid_thw = images.load_study_images(study.image_paths, self.image_config, study.images)
    if len(patches) > self.max_patches:
      raise ValueError(
        f"study {study.id}: its images have {len(patches)} patches > data.max_patches={self.max_patches}; "
        "raise data.max_patches or lower data.max_pixels"
      )
    merge = self.model_config.vision.spatial_merge_size
    prompt = tokenizer_lib.encode_prompt(
      self.tokenizer,
      [images.num_image_tokens(g, merge) for g in grid_thw],
      self.instruction or tokenizer_lib.ECHO_INSTRUCTION,
    )
    if len(prompt) > self.context_len:
      raise ValueError(
        f"study {study.id}: the context has {len(prompt)} tokens > data.context_len={self.context_len}; "
        "raise data.context_len (a multiple of the block length) or lower data.max_pixels"
      )
    pad = self.context_len - len(prompt)
    context = np.concatenate([np.full(pad, ids.pad, np.int32), prompt])
    valid = np.arange(self.context_len) >= pad
    positions_3P, next_position = positions.rope_positions(
      context, grid_thw, valid, self.model_config
    )

    report = tokenizer_lib.encode_report(self.tokenizer, study.report)
    truncated = len(report) > self.response_len
    response = np.full(self.response_len, ids.pad, np.int32)
    response[: min(len(report), self.response_len)] = report[: self.response_len]
    vision = prepare_vision_inputs(
      [patches], [grid_thw], self.model_config.vision, self.max_patches
    )
    return {
      "context_tokens": context,
      "context_valid": valid,
      "context_positions": positions_3P.astype(np.int32),
      "next_position": np.int32(next_position),
      "response_tokens": response,
      "vision": jax.tree.map(lambda x: x[0], vision),
      "truncated": np.int32(truncated),
    }


def context_positions_3BP(batch: Mapping[str, Any]) -> jax.Array:
  """A batch's `context_positions`, stored (B, 3, P), in the (3, B, P) layout of the model."""
  return jnp.swapaxes(batch["context_positions"], 0, 1)
