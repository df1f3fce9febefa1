"""The sampling benchmark runs every decoder on the same prompts and reports its speed."""

import json
import re

import pytest

from echo_jax.bench import sampling as bench


def test_sampling_benchmark_rows(tmp_path):
  out = tmp_path / "bench.json"
  result = bench.main(
    ["--data", str(tmp_path / "data"), "--num_prompts", "1", "--new_tokens", "8",
     "--repeats", "1", "--loop", "2", "--no_peer", "--out", str(out)]
  )  # fmt: skip
  saved = json.loads(out.read_text())
  assert saved["rows"] == result["rows"]
  rows = {(r["sampler"], r["block_len"]): r for r in saved["rows"]}
  assert set(rows) == {("ar", 1), ("multi_step", 4), ("multi_step", 8), ("one_step", 4),
                       ("one_step", 8)}  # fmt: skip
  for (kind, block), r in rows.items():
    assert r["tokens"] == 8, r  # EOS is unreachable: every report uses the whole budget
    low, high = {"ar": (8, 8), "one_step": (8 // block, 8 // block)}.get(kind, (8 // block, 8))
    assert low <= r["forwards"] <= high, r
  assert rows[("one_step", 8)]["tpf"] == 8.0 and rows[("ar", 1)]["tpf"] == 1.0
  costs = saved["forward_costs"]
  assert set(costs) == {"prefill", *(f"extend_{n}_tokens" for n in (1, 4, 8, 16))}
  assert all(ms > 0 for ms in costs.values())
  # Per-report overhead: measured minus prefill and forwards (one report per batch here),
  # the forwards timed as one program doing only them (forwards_ms).
  ar, one8 = rows[("ar", 1)], rows[("one_step", 8)]
  assert ar["predicted_ms"] == costs["prefill"] + 8 * costs["extend_1_tokens"]
  assert one8["predicted_ms"] == costs["prefill"] + costs["extend_8_tokens"]  # one block
  for r in rows.values():
    assert r["forwards_ms"] > 0 and r["paired_ms"] > 0
    assert r["overhead_ms"] == r["paired_ms"] - r["forwards_ms"]
    assert r["share_of_bound"] == r["forwards_ms"] / r["paired_ms"]
  assert "paired: sampler / forwards only (ms)" in saved["markdown"]


def test_predicted_ms_counts_fused_forwards():
  costs = {"prefill": 10.0, "extend_1_tokens": 1.0, "extend_4_tokens": 2.0}
  costs["extend_8_tokens"] = 3.0
  # One-step B = 4, 16 tokens: 4 forwards, the last 3 append the previous block (8 tokens).
  row = dict(sampler="one_step", block_len=4, reports=2, batch_size=2, forwards=8, tokens=32)
  assert bench.predicted_ms(row, costs) == (10.0 + 2.0 + 3 * 3.0) / 2
  # Multi-step B = 4, 16 tokens in 10 forwards: 3 fused first steps, 7 plain ones.
  row = dict(sampler="multi_step", block_len=4, reports=1, batch_size=1, forwards=10, tokens=16)
  assert bench.predicted_ms(row, costs) == 10.0 + 3 * 3.0 + 7 * 2.0


def _point(batch, speeds):
  names = [("AR (echo_jax)", "ar"), ("one-step B=8", "one_step")]
  rows = [
    dict(name=n, sampler=k, tokens_per_second=v, ms_per_report=1000.0 / v)
    for (n, k), v in zip(names, speeds, strict=True)
  ]
  return dict(batch_size=batch, forward_costs={}, rows=rows)


def test_sweep_table_and_plot(tmp_path):
  points = [_point(1, [100.0, 150.0]), _point(8, [600.0, 1100.0])]
  table = bench.sweep_markdown(points)
  assert table.splitlines()[0] == "| decoder | batch 1 | batch 8 |"
  assert "| one-step B=8 | 150 tok/s (6.7 ms) | 1100 tok/s (0.9 ms) |" in table
  points[1]["rows"][0]["share_of_bound"] = 0.934
  assert "| 600 tok/s (1.7 ms; 93% of bound) |" in bench.sweep_markdown(points)
  png = tmp_path / "sweep.png"
  bench.sweep_figure(points, str(png))
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # every sampler compiled at two batch sizes, and the peer
def test_batch_sweep_end_to_end(tmp_path):
  out = tmp_path / "sweep.json"
  result = bench.main(
    ["--data", str(tmp_path / "data"), "--num_prompts", "1", "--new_tokens", "8",
     "--repeats", "1", "--loop", "2", "--batch_sizes", "1", "2", "--out", str(out)]
  )  # fmt: skip
  saved = json.loads(out.read_text())
  assert [p["batch_size"] for p in saved["sweep"]] == [1, 2]
  for point in saved["sweep"]:
    # Our five rows and transformers' generate, each at the point's batch size.
    assert [r["sampler"] for r in point["rows"]][-1] == "hf_generate"
    assert len(point["rows"]) == 6 and all(
      r["batch_size"] == point["batch_size"] for r in point["rows"]
    )
    assert all(r["reports"] == max(1, point["batch_size"]) for r in point["rows"])
    assert all(r["tokens"] == 8 * r["reports"] for r in point["rows"])
    assert re.fullmatch(r"\d/\d reports identical", point["ar_equals_peer"])
  assert "transformers generate" in saved["markdown"]
  assert (tmp_path / "sweep.png").is_file() and result["plot"] == str(tmp_path / "sweep.png")


def test_forwards_only_program_runs_the_rows_forwards():
  # A stand-in model that counts, per traced call, the tokens each forward feeds and appends.
  import jax
  import jax.numpy as jnp

  calls = []

  class Counting:
    def split_context(self, context, n, max_tail):
      return context, jnp.zeros((context.shape[0], 1), jnp.int32)

    def context_slots(self, context, block_len):
      return 8

    def prefill(self, params, context, cache_length, block_len):
      calls.append(("prefill", cache_length))
      return jnp.zeros((cache_length,)), jnp.zeros((context.shape[0],), jnp.int32)

    def extend(self, params, cache, tokens, positions, block_len, num_append):
      calls.append((tokens.shape[1], num_append))
      assert positions.shape == tokens.shape
      return jnp.zeros(tokens.shape + (5,)), cache

  context = jnp.zeros((2, 3))
  # One-step B = 4, 16 tokens per report: the first block plain, 3 fused forwards.
  row = dict(sampler="one_step", block_len=4, reports=2, forwards=8, tokens=32)
  out = bench.forwards_only_program(Counting(), row, 16)(None, context)
  assert out.shape == (2, 4) and calls == [("prefill", 8 + 16), (4, 0), (8, 4)]
  # Each loop body traces once; the trip counts (1 plain, 3 fused) are in the jaxpr.
  jaxpr = str(jax.make_jaxpr(bench.forwards_only_program(Counting(), row, 16))(None, context))
  assert re.findall(r"length=\d+", jaxpr) == ["length=1", "length=3"]
  calls.clear()
  row = dict(sampler="ar", block_len=1, reports=1, forwards=16, tokens=16)
  program = bench.forwards_only_program(Counting(), row, 16)
  program(None, context)
  assert calls == [("prefill", 8 + 16), (1, 1)]
  assert re.findall(r"length=\d+", str(jax.make_jaxpr(program)(None, context))) == ["length=16"]


def test_paired_ms_alternates_the_sampler_and_its_bound_batch_by_batch():
  import jax.numpy as jnp

  order = []
  sampler_seconds = iter([0.5, 0.3, 0.2, 0.4])  # (batch 0, batch 1) in each of 2 passes

  class Generator:
    params = "params"

    def decode(self, sampler, context):
      order.append(("sampler", context))
      return None, next(sampler_seconds)

  def program(params, context):
    assert params == "params"
    order.append(("program", context))
    return jnp.zeros(())

  ours, bound = bench.paired_ms(Generator(), "s", program, ["a", "b"], reports=4, repeats=2)
  # The program's compile call, then sampler and program in turn on each batch.
  assert order == [("program", "a")] + [(w, c) for c in "ab" for w in ("sampler", "program")] * 2
  assert ours == 1000 * (0.2 + 0.3) / 4  # each batch's fastest sampler call
  assert 0 < bound < ours
