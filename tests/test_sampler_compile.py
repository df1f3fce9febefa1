"""The samplers compile once per (sampler, batch size, context bucket, budget).

Batches of different studies (other images, other reports), new weights of the same
model and repeated calls must reuse the compiled decoder: counted with the jitted
functions' cache sizes and, independently, with jax's compile log.
"""

import dataclasses
import logging

import jax
import pytest
import tiny_vlm
from flax import nnx

from echo_jax.inference import ReportGenerator, make_sampler
from echo_jax.models.decode_model import EchoDecodeModel
from echo_jax.models.vlm import EchoVLM
from echo_jax.sampling import ar, block_decode


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  return tiny_vlm.make_setup(str(tmp_path_factory.mktemp("data")))


class CompileLog(logging.Handler):
  """Counts jax's "Compiling jit(_decode) ..." messages (the samplers' jitted decoders)."""

  def __init__(self):
    super().__init__(logging.DEBUG)
    self.count = 0

  def emit(self, record):
    if record.getMessage().startswith("Compiling jit(_decode)"):
      self.count += 1


def take(context, start, stop):
  """Examples [start, stop) of a DecodeContext (positions are (3, B, P))."""
  cut = lambda x: x[start:stop]
  return context.replace(
    tokens_BP=cut(context.tokens_BP),
    positions_3BP=context.positions_3BP[:, start:stop],
    valid_BP=cut(context.valid_BP),
    vision=jax.tree.map(cut, context.vision),
  )


@pytest.fixture
def compile_log():
  handler = CompileLog()
  root = logging.getLogger("jax")
  root.addHandler(handler)
  jax.config.update("jax_log_compiles", True)
  try:
    yield handler
  finally:
    jax.config.update("jax_log_compiles", False)
    root.removeHandler(handler)


def _runner(gen, jitted):
  def run(sampler, context, params=gen.params):
    jax.block_until_ready(sampler(gen.decode_model, params, context))
    return jitted._cache_size()

  return run


def test_block_sampler_compiles_once(setup, compile_log):
  jitted = block_decode._decode_jit
  jitted.clear_cache()
  sampler = make_sampler("one_step", setup.config.tokens, block_len=8, max_new_tokens=16)
  gen = ReportGenerator(setup.model, setup.tokenizer, setup.example_fn, batch_size=4)
  run = _runner(gen, jitted)
  contexts = [context for _, _, context in gen.batches(setup.studies)]
  assert len(contexts) == 3
  # Three batches of different studies (images, reports): one compilation.
  assert [run(sampler, c) for c in contexts] == [1, 1, 1]
  # Other weights of the same model (e.g. a later checkpoint): still one.
  _, other = EchoDecodeModel.from_model(EchoVLM(setup.config, rngs=nnx.Rngs(7)))
  assert run(sampler, contexts[1], other) == 1
  # The generator's warm-up and timed calls (and its padded last batch) hit the same entry.
  assert len(gen.generate(setup.studies[:7], sampler)) == 7
  assert jitted._cache_size() == 1
  assert compile_log.count == 1


@pytest.mark.slow
def test_each_new_shape_compiles_once(setup, compile_log):
  """A new budget, batch size or context bucket: one compilation each, then none."""
  jitted = block_decode._decode_jit
  jitted.clear_cache()
  sampler = make_sampler("one_step", setup.config.tokens, block_len=8, max_new_tokens=16)
  gen = ReportGenerator(setup.model, setup.tokenizer, setup.example_fn, batch_size=4)
  run = _runner(gen, jitted)
  contexts = [context for _, _, context in gen.batches(setup.studies)]
  assert [run(sampler, c) for c in contexts] == [1, 1, 1]
  longer = dataclasses.replace(sampler, max_new_tokens=24)
  assert [run(longer, c) for c in contexts] == [2, 2, 2]
  assert [run(sampler, take(contexts[0], 0, 2)), run(sampler, take(contexts[2], 2, 4))] == [3, 3]
  bucket = tiny_vlm.example_fn(setup.tokenizer, setup.config, context_len=152)
  gen152 = ReportGenerator(setup.model, setup.tokenizer, bucket, batch_size=4)
  assert [run(sampler, c) for _, _, c in gen152.batches(setup.studies)] == [4, 4, 4]
  assert [run(s, c) for s in (sampler, longer) for c in contexts[:2]] == [4] * 4
  assert compile_log.count == 4


def test_ar_sampler_compiles_once(setup, compile_log):
  jitted = ar._decode_jit
  jitted.clear_cache()
  sampler = make_sampler("ar", setup.config.tokens, max_new_tokens=12)
  gen = ReportGenerator(setup.model, setup.tokenizer, setup.example_fn, batch_size=4)
  gen.generate(setup.studies, sampler)
  gen.generate(setup.studies[:5], sampler)  # padded last batch: same shapes
  assert jitted._cache_size() == 1
  assert compile_log.count == 1


@pytest.mark.parametrize(
  "kind,block", [("ar", 1), ("one_step", 8), ("multi_step", 4)], ids=["ar", "one_step", "multi"]
)
def test_the_kv_cache_is_updated_in_place(setup, kind, block):
  """No step copies the whole KV cache: the compiled decoder has no copy of an array of
  the cache's shape (each would cost a pass over the cache at every forward)."""
  sampler = make_sampler(kind, setup.config.tokens, block_len=block, max_new_tokens=16)
  gen = ReportGenerator(setup.model, setup.tokenizer, setup.example_fn, batch_size=2)
  _, _, context = next(iter(gen.batches(setup.studies[:2])))
  jitted = ar._decode_jit if kind == "ar" else block_decode._decode_jit
  hlo = jitted.lower(sampler, gen.decode_model, gen.params, context, None).compile().as_text()
  text = setup.config.text
  cache_dims = f"[{text.num_hidden_layers},2,"  # (layers, batch, slots, kv heads, head dim)
  tail = f",{text.num_key_value_heads},{text.head_dim}]"
  copies = [
    line
    for line in hlo.splitlines()
    if " copy(" in line and cache_dims in line.split("copy(")[0] and tail in line
  ]
  assert not copies, "\n".join(copies)
  assert cache_dims in hlo and tail in hlo  # the cache's shape is spelled as searched
