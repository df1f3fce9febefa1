"""The example of docs/SAMPLER_API.md, run as written, through every sampler.

The page's Python blocks are executed in order; the model they define (not echo_jax's)
must then decode exactly like uncached greedy decoding with its own `forward`, the
references of tests/test_samplers.py (same special ids 0/1/2 and block length 4).
"""

import dataclasses
import functools
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_samplers import ref_ar_decode, ref_block_decode

from echo_jax.sampling import AutoregressiveSampler, MultiStepSampler, OneStepSampler
from echo_jax.sampling.protocol import DecodeModel, SplittableContext

DOC = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "SAMPLER_API.md"
)
T, BUDGET = 4, 16
PROMPTS = [[5, 9, 3, 7, 11], [4, 8], [6, 6, 13, 3, 20, 31, 9]]


@pytest.fixture(scope="module")
def example():
  with open(DOC, encoding="utf-8") as f:
    blocks = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
  assert len(blocks) == 2, "the page should hold the model block and the decoding block"
  namespace: dict = {"__name__": "sampler_api_example"}
  for block in blocks:
    exec(compile(block, DOC, "exec"), namespace)  # the decoding block runs all three samplers
  return namespace


class JitForward:
  """The example model's uncached forward, jitted once: inputs padded to MAX_LEN keys that
  no real query attends, so the references (one call per step) compile a single shape."""

  MAX_LEN = 48

  def __init__(self, model):
    self._forward = jax.jit(model.forward)

  def forward(self, params, tokens_BL, positions_BL, mask_BLL):
    n, extra = tokens_BL.shape[1], self.MAX_LEN - tokens_BL.shape[1]
    mask = jnp.pad(mask_BLL, ((0, 0), (0, extra), (0, extra)))
    mask |= jnp.eye(self.MAX_LEN, dtype=bool)[None] & (jnp.arange(self.MAX_LEN) >= n)
    pad = lambda x: jnp.pad(x, ((0, 0), (0, extra)))
    return self._forward(params, pad(tokens_BL), pad(positions_BL), mask)[:, :n]


@pytest.fixture(scope="module")
def reference(example):
  return JitForward(example["model"])


def test_example_implements_the_protocol(example):
  model = example["model"]
  assert isinstance(model, DecodeModel) and isinstance(model, SplittableContext)
  hash(model)
  out = example["out"]  # the last sampler of the page's loop (AR) on its 2-prompt batch
  assert out.tokens_BR.shape == (2, BUDGET)


@pytest.mark.parametrize(
  "sampler",
  [
    OneStepSampler(eos_id=1, mask_id=2, pad_id=0, block_len=T, max_new_tokens=BUDGET),
    MultiStepSampler(eos_id=1, mask_id=2, pad_id=0, block_len=T, steps=T, max_new_tokens=BUDGET),
    MultiStepSampler(
      eos_id=1, mask_id=2, pad_id=0, block_len=T, steps=2, max_new_tokens=BUDGET, grid="released"
    ),
  ],
  ids=["one_step", "multi_step", "multi_step_released"],
)
def test_block_samplers_equal_uncached_decoding(example, reference, sampler):
  model, params = example["model"], example["params"]
  out = sampler(model, params, example["make_prompt"](PROMPTS, 8))
  width = out.tokens_BR.shape[1]
  for b, prompt in enumerate(PROMPTS):
    resp, forwards, tokens = ref_block_decode(
      reference,
      params,
      prompt,
      steps=sampler.steps,
      budget=BUDGET,
      released=sampler.grid == "released",
    )
    assert out.tokens_BR[b].tolist() == list(resp) + [0] * (width - len(resp))
    assert int(out.stats.forwards_B[b]) == forwards and int(out.stats.tokens_B[b]) == tokens


@pytest.mark.parametrize("mode", ["next", "at"])
def test_ar_sampler_equals_uncached_decoding(example, reference, mode):
  model, params = example["model"], example["params"]
  sampler = AutoregressiveSampler(eos_id=1, pad_id=0, mask_id=2, max_new_tokens=12, logits=mode)
  out = sampler(model, params, example["make_prompt"](PROMPTS, 8))
  for b, prompt in enumerate(PROMPTS):
    resp, n = ref_ar_decode(reference, params, prompt, budget=12, at=mode == "at")
    assert out.tokens_BR[b].tolist() == list(resp) + [0] * (12 - len(resp))
    assert int(out.stats.forwards_B[b]) == n
  np.testing.assert_array_equal(out.stats.tpf_B, 1.0)


def test_one_step_tpf_is_block_len(example):
  """With an EOS the model can never emit, every report runs to the budget at TPF = B."""
  model, params = example["model"], example["params"]
  sampler = OneStepSampler(eos_id=99, mask_id=2, pad_id=0, block_len=T, max_new_tokens=BUDGET)
  out = sampler(model, params, example["make_prompt"](PROMPTS, 8))
  np.testing.assert_array_equal(out.stats.tpf_B, float(T))
  np.testing.assert_array_equal(out.stats.forwards_B, BUDGET // T)
  assert out.lengths_B.tolist() == [BUDGET] * len(PROMPTS)


def test_cache_rewind_and_missing_methods(example):
  """`length` is the only thing the samplers rewind; a model without split_context is
  refused by the next-token AR sampler with a TypeError that names the method."""
  model, params = example["model"], example["params"]
  prompt = example["make_prompt"](PROMPTS, 8)
  prefill = jax.jit(functools.partial(model.prefill, cache_length=16, block_len=T))
  extend = jax.jit(model.extend, static_argnames=("block_len", "num_append"))
  cache, _ = prefill(params, prompt)
  toks, pos = jnp.full((3, T), 2, jnp.int32), jnp.arange(T)[None].repeat(3, 0) + 8
  a, grown = extend(params, cache, toks, pos, block_len=T, num_append=T)
  b, _ = extend(params, grown.replace(length=cache.length), toks, pos, block_len=T, num_append=0)
  np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)

  @dataclasses.dataclass(frozen=True)
  class NoSplit:
    inner: object

    def context_slots(self, context, *, block_len):
      return self.inner.context_slots(context, block_len=block_len)

    def prefill(self, params, context, **kw):
      return self.inner.prefill(params, context, **kw)

    def extend(self, params, cache, tokens_BT, positions_BT, **kw):
      return self.inner.extend(params, cache, tokens_BT, positions_BT, **kw)

  with pytest.raises(TypeError, match="split_context"):
    AutoregressiveSampler(eos_id=1, pad_id=0)(NoSplit(model), params, prompt)
  # The "at" mode and the block samplers do not need it.
  out = AutoregressiveSampler(eos_id=1, pad_id=0, mask_id=2, max_new_tokens=4, logits="at")(
    NoSplit(model), params, prompt
  )
  assert out.tokens_BR.shape == (3, 4)
  jax.block_until_ready(out)


@pytest.mark.parametrize("sampler", [OneStepSampler(eos_id=1, mask_id=2, pad_id=0, block_len=T, max_new_tokens=BUDGET),
                                     AutoregressiveSampler(eos_id=1, pad_id=0, max_new_tokens=BUDGET)],
                         ids=["one_step", "ar"])  # fmt: skip
def test_continuous_batching_needs_a_per_row_cache(example, sampler):
  # The page's cache has one length for the batch: continuous batching says so.
  from echo_jax.sampling.continuous import ContinuousDecoder

  model, params = example["model"], example["params"]
  decoder = ContinuousDecoder(sampler, model, params)
  prompt = example["make_prompt"](PROMPTS, 8)
  with pytest.raises(TypeError, match="one length per row.*has no per_row"):
    decoder.compile(prompt, np.arange(3, dtype=np.int32))
