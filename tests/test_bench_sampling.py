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
