"""ReportGenerator on a tiny random EchoVLM: batching, padding, ids, texts and stats."""

import jax
import pytest
import tiny_vlm

from echo_jax.data import tokenizer as tokenizer_lib
from echo_jax.data.pipeline import stack_examples
from echo_jax.inference import (
  ReportGenerator,
  batch_context,
  make_sampler,
  row_stats,
  speed_summary,
)
from echo_jax.models.decode_model import EchoDecodeModel

T = 8  # block length
BUDGET = 24  # new tokens


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  return tiny_vlm.make_setup(str(tmp_path_factory.mktemp("data")))


@pytest.fixture(scope="module")
def one_step_rows(setup):
  """One-step rows with batch 5 (the last batch of 12 is padded by 3) and batch 4 (none)."""
  sampler = make_sampler("one_step", setup.config.tokens, block_len=T, max_new_tokens=BUDGET)
  gen5 = ReportGenerator(setup.model, setup.tokenizer, setup.example_fn, batch_size=5)
  decode_model, params = EchoDecodeModel.from_model(setup.model)
  gen4 = ReportGenerator((decode_model, params), setup.tokenizer, setup.example_fn, batch_size=4)
  return sampler, gen5.generate(setup.studies, sampler), gen4.generate(setup.studies, sampler)


def test_rows_ids_padding_and_texts(setup, one_step_rows):
  _, rows5, rows4 = one_step_rows
  assert len(setup.studies) == 12
  assert [r["id"] for r in rows5] == [s.id for s in setup.studies]  # padded rows dropped
  assert [r["reference"] for r in rows5] == [s.report for s in setup.studies]
  # A study's report does not depend on its batch mates or on the padding.
  for a, b in zip(rows5, rows4):
    assert {k: a[k] for k in ("id", "prediction", "tokens", "forwards", "eos")} == {
      k: b[k] for k in ("id", "prediction", "tokens", "forwards", "eos")
    }
  for r in rows5:
    assert set(r) >= {"id", "prediction", "reference", "tokens", "forwards", "seconds", "looped"}
    assert isinstance(r["prediction"], str) and r["seconds"] > 0
    assert "<|" not in r["prediction"]  # special tokens dropped


def test_one_step_stats(setup, one_step_rows):
  _, rows, _ = one_step_rows
  for r in rows:
    # Every one-step forward commits a whole block: TPF is exactly the block length.
    assert r["tokens"] == T * r["forwards"]
    assert r["length"] < r["tokens"] if r["eos"] else r["length"] == r["tokens"] == BUDGET
    if not r["eos"]:
      assert r["forwards"] == BUDGET // T
    assert row_stats(r)["tpf"] == T
  summary = speed_summary(rows)
  assert summary["tpf"] == T and summary["reports"] == 12
  assert summary["tokens"] == sum(r["tokens"] for r in rows)
  assert summary["tokens_per_second"] == pytest.approx(summary["tokens"] / summary["seconds"])
  assert summary["ms_per_report"] == pytest.approx(1000 * summary["seconds"] / 12)


def test_lockstep_occupancy(setup, one_step_rows):
  """A row's batch_forwards is its batch's model calls: the most forwards of any row in it."""
  _, rows5, rows4 = one_step_rows
  for rows, size in ((rows5, 5), (rows4, 4)):
    batches = [rows[i : i + size] for i in range(0, len(rows), size)]
    for batch in batches:
      assert {r["batch_forwards"] for r in batch} == {max(r["forwards"] for r in batch)}
    want = sum(r["forwards"] for r in rows) / sum(len(b) * b[0]["batch_forwards"] for b in batches)
    assert speed_summary(rows)["lockstep_occupancy"] == pytest.approx(want)
  # One study per batch never waits for another.
  sampler, _, _ = one_step_rows
  gen1 = ReportGenerator(setup.model, setup.tokenizer, setup.example_fn, batch_size=1)
  assert speed_summary(gen1.generate(setup.studies[:3], sampler))["lockstep_occupancy"] == 1.0


def test_prediction_is_the_sampler_output(setup, one_step_rows):
  """The rows of the padded last batch equal a direct sampler call on the same studies."""
  sampler, rows, _ = one_step_rows
  last = setup.studies[10:] + [setup.studies[11]] * 3
  context = batch_context(stack_examples([setup.example_fn(s) for s in last]))
  decode_model, params = EchoDecodeModel.from_model(setup.model)
  out = jax.device_get(sampler(decode_model, params, context))
  for b, r in enumerate(rows[10:]):
    want = tokenizer_lib.decode(setup.tokenizer, out.tokens_BR[b, : out.lengths_B[b]])
    assert r["prediction"] == want
    assert r["forwards"] == int(out.stats.forwards_B[b])


@pytest.mark.parametrize("name", ["ar", "multi_step"])
def test_other_samplers_stats(setup, name):
  sampler = make_sampler(name, setup.config.tokens, block_len=T, max_new_tokens=16)
  gen = ReportGenerator(setup.model, setup.tokenizer, setup.example_fn, batch_size=6)
  rows = gen.generate(setup.studies[:6], sampler, progress="test")
  assert [r["id"] for r in rows] == [s.id for s in setup.studies[:6]]
  tpf = speed_summary(rows)["tpf"]
  for r in rows:
    assert r["length"] <= r["tokens"] <= 16
    assert r["eos"] or r["tokens"] == 16
  if name == "ar":
    assert tpf == 1.0 and all(r["tokens"] == r["forwards"] for r in rows)
  else:
    assert 1.0 <= tpf <= T


def test_bad_arguments(setup):
  with pytest.raises(ValueError, match="batch_size"):
    ReportGenerator(setup.model, setup.tokenizer, setup.example_fn, batch_size=0)
  decode_model, _ = EchoDecodeModel.from_model(setup.model)
  with pytest.raises(ValueError, match="weights"):
    ReportGenerator(decode_model, setup.tokenizer, setup.example_fn, batch_size=2)
  with pytest.raises(ValueError, match="unknown sampler"):
    make_sampler("beam", setup.config.tokens)
  with pytest.raises(ValueError, match="no rows"):
    speed_summary([])
