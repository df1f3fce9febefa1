"""The README's Python snippets run as written (on tiny checkpoints the tests build)."""

import pathlib
import re

import numpy as np
import pytest
import torch
import transformers
from test_hf_parity import CASES, _hf_config

from echo_jax.models.presets import TINY_TOKEN_IDS

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _snippet(after: str) -> str:
  text = README.read_text()
  start = text.index(after)
  return re.search(r"```python\n(.*?)```", text[start:], flags=re.S).group(1)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("hf")
  torch.manual_seed(0)
  case = dict(CASES["gqa2_untied_left_pad"], depth=1, fullatt=[0])
  transformers.Qwen2_5_VLForConditionalGeneration(_hf_config(case)).save_pretrained(
    path, safe_serialization=True
  )
  return path


def test_load_pretrained_snippet_runs(hf_dir):
  # The tiny checkpoint's special tokens sit at the ids of the tiny presets.
  load = f"{str(hf_dir)!r}, token_ids=TINY_TOKEN_IDS"
  code = _snippet("## Using the model").replace('"/models/Lingshu-7B"', load)
  scope: dict = {"TINY_TOKEN_IDS": TINY_TOKEN_IDS}
  exec(compile(code, str(README), "exec"), scope)
  logits = np.asarray(scope["logits_BLV"])
  assert logits.shape == (1, 4, scope["config"].text.vocab_size)
  assert np.isfinite(logits).all()


def test_sampler_snippet_runs(hf_dir):
  import jax.numpy as jnp

  from echo_jax import load_pretrained

  model, config = load_pretrained(hf_dir, token_ids=TINY_TOKEN_IDS)
  p = 8
  scope = dict(
    model=model,
    config=config,
    tokens_BP=jnp.full((2, p), 40, jnp.int32),
    positions_3BP=jnp.broadcast_to(jnp.arange(p), (3, 2, p)).astype(jnp.int32),
    valid_BP=jnp.ones((2, p), bool),
    vision=None,
  )
  code = _snippet("## Decoding reports").replace("max_new_tokens=256", "max_new_tokens=16")
  exec(compile(code, str(README), "exec"), scope)
  out = scope["out"]
  assert out.tokens_BR.shape == (2, 16)
  forwards = np.asarray(out.stats.forwards_B)
  assert ((1 <= forwards) & (forwards <= 2)).all()  # one forward per block of 8
