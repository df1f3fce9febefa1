"""The input pipeline benchmark runs and reports a throughput per worker count."""

import json

from echo_jax.bench import pipeline as bench


def test_pipeline_benchmark_reports_examples_per_second(tmp_path):
  out = tmp_path / "bench.json"
  result = bench.main(
    ["--data", str(tmp_path / "data"), "--num_studies", "20", "--workers", "0",
     "--batch_size", "2", "--batches", "2", "--warmup", "1", "--out", str(out)]
  )  # fmt: skip
  (row,) = json.loads(out.read_text())["results"]
  assert row == result["results"][0]
  assert row["workers"] == 0 and row["batches"] == 2 and row["examples_per_second"] > 0
