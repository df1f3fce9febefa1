"""The sampling benchmark runs every decoder on the same prompts and reports its speed."""

import json

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
  # Per-report overhead: measured minus prefill and forwards (one report per batch here).
  ar, one8 = rows[("ar", 1)], rows[("one_step", 8)]
  assert ar["predicted_ms"] == costs["prefill"] + 8 * costs["extend_1_tokens"]
  assert one8["predicted_ms"] == costs["prefill"] + costs["extend_8_tokens"]  # one block
  for r in rows.values():
    assert r["overhead_ms"] == r["ms_per_report"] - r["predicted_ms"]
  assert "of which forwards" in saved["markdown"]


def test_predicted_ms_counts_fused_forwards():
  costs = {"prefill": 10.0, "extend_1_tokens": 1.0, "extend_4_tokens": 2.0}
  costs["extend_8_tokens"] = 3.0
  # One-step B = 4, 16 tokens: 4 forwards, the last 3 append the previous block (8 tokens).
  row = dict(sampler="one_step", block_len=4, reports=2, batch_size=2, forwards=8, tokens=32)
  assert bench.predicted_ms(row, costs) == (10.0 + 2.0 + 3 * 3.0) / 2
  # Multi-step B = 4, 16 tokens in 10 forwards: 3 fused first steps, 7 plain ones.
  row = dict(sampler="multi_step", block_len=4, reports=1, batch_size=1, forwards=10, tokens=16)
  assert bench.predicted_ms(row, costs) == 10.0 + 3 * 3.0 + 7 * 2.0
