"""Continuous batching gives every study its lockstep tokens, with fewer model calls.

The tiny random model rarely ends a report, so its EOS embedding is set to (about) the
embedding of a frequent generated token: reports then end at different lengths, and finished
rows have something to be refilled with.
"""

import collections

import jax
import numpy as np
import pytest
import tiny_vlm

from echo_jax.inference import ReportGenerator, make_sampler, speed_summary
from echo_jax.sampling import continuous

CASES = [("ar", 1, 1.02), ("one_step", 4, 1.05), ("multi_step", 4, 1.05)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  return tiny_vlm.make_setup(str(tmp_path_factory.mktemp("data")))


def _with_eos_like_common_token(setup, scale):
  model = setup.model
  gen = ReportGenerator(model, setup.tokenizer, setup.example_fn, batch_size=3)
  sampler = make_sampler("ar", setup.config.tokens, max_new_tokens=24)
  tokens_NR = np.concatenate(
    [
      np.asarray(sampler(gen.decode_model, gen.params, c).tokens_BR)
      for _, _, c in gen.batches(setup.studies)
    ]
  )
  # The most frequent token that never opens a report: EOS then comes mid-report.
  openers = set(tokens_NR[:, 0].tolist())
  counts = collections.Counter(t for t in tokens_NR.ravel().tolist() if t not in openers)
  common = counts.most_common(1)[0][0]
  emb = model.text.embed_tokens.embedding
  original = emb[...]
  emb[...] = original.at[setup.config.tokens.eos].set(original[common] * scale)
  return original


@pytest.mark.parametrize("kind,block,scale", CASES, ids=[c[0] for c in CASES])
def test_continuous_batching_gives_the_lockstep_tokens(setup, kind, block, scale):
  original = _with_eos_like_common_token(setup, scale)
  try:
    sampler = make_sampler(kind, setup.config.tokens, block_len=block, max_new_tokens=24)
    rows = {}
    for mode in ("lockstep", "continuous"):
      gen = ReportGenerator(
        setup.model, setup.tokenizer, setup.example_fn, batch_size=3, batching=mode
      )
      rows[mode] = gen.generate(setup.studies, sampler)
  finally:
    setup.model.text.embed_tokens.embedding[...] = original
  lock, cont = rows["lockstep"], rows["continuous"]
  assert [r["id"] for r in cont] == [s.id for s in setup.studies]  # input order
  lengths = {r["length"] for r in lock}
  assert len(lengths) > 1, lengths  # reports end at different lengths: refilling matters
  fields = ("prediction", "tokens", "length", "forwards", "eos", "looped")
  assert [[r[f] for f in fields] for r in cont] == [[r[f] for f in fields] for r in lock]
  # Refilled rows idle less: fewer model calls held per study, a higher occupancy.
  assert sum(r["batch_forwards"] for r in cont) < sum(r["batch_forwards"] for r in lock)
  assert speed_summary(cont)["lockstep_occupancy"] > speed_summary(lock)["lockstep_occupancy"]


def test_continuous_batching_compiles_once_and_never_copies_the_cache(setup):
  sampler = make_sampler("one_step", setup.config.tokens, block_len=4, max_new_tokens=16)
  gen = ReportGenerator(
    setup.model, setup.tokenizer, setup.example_fn, batch_size=2, batching="continuous"
  )
  gen.generate(setup.studies[:5], sampler)
  gen.generate(setup.studies, sampler)  # other studies, a padded last chunk: same shapes
  decoder = gen._continuous[sampler]
  assert len(decoder._compiled) == 1
  text = setup.config.text
  cache_dims = f"[{text.num_hidden_layers},2,"
  tail = f",{text.num_key_value_heads},{text.head_dim}]"
  for compiled in next(iter(decoder._compiled.values())):
    hlo = compiled.as_text()
    copies = [
      line
      for line in hlo.splitlines()
      if " copy(" in line and cache_dims in line.split("copy(")[0] and tail in line
    ]
    assert not copies, "\n".join(copies)


def test_padding_ids_must_come_last_and_empty_input_yields_nothing(setup):
  sampler = make_sampler("ar", setup.config.tokens, max_new_tokens=8)
  gen = ReportGenerator(setup.model, setup.tokenizer, setup.example_fn, batch_size=2)
  decoder = continuous.ContinuousDecoder(sampler, gen.decode_model, gen.params)
  assert list(decoder.run([])) == []
  _, _, context = next(iter(gen.batches(setup.studies[:1])))
  ((box, seconds),) = list(decoder.run([(context, [0, -1])]))
  assert int(box.count) == 1 and int(box.ids_K[0]) == 0 and seconds > 0
  jax.block_until_ready(box.tokens_KR)
