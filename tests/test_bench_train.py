"""The RAD-vs-full-duplication training-step benchmark: its FLOP model and a tiny real run."""

import dataclasses
import json

import pytest

from echo_jax.bench import train as bench
from echo_jax.models.presets import get_preset


def test_flop_model_by_hand():
  text = get_preset("lingshu-7b").text
  d, f, k, h, g, v, n = 3584, 18944, 128, 28, 4, text.vocab_size, 28
  assert (text.hidden_size, text.intermediate_size, text.head_dim) == (d, f, k)
  w = d * h * k + 2 * d * g * k + h * k * d + 3 * d * f
  p, r = 3072, 256

  def forward(length, logits):
    return n * (2 * length * w + 4 * length**2 * h * k) + 2 * logits * d * v

  assert bench.train_flops(text, "rad", p, r, False)["total"] == 3 * forward(p + 2 * r, r)
  assert bench.train_flops(text, "dup", p, r, True)["total"] == 3 * forward(
    2 * (p + r), 2 * (p + r)
  )
  ratio = bench.predicted_flop_ratio(text, p, r)
  assert ratio == pytest.approx(forward(2 * (p + r), r) / forward(p + 2 * r, r))
  assert 2.0 < ratio < 2.6  # a long context: duplication costs more than twice RAD


def test_settings_are_checked():
  settings = bench.make_settings([1, 4], 16, [(64, 8)], 8)
  assert [(s.context_len, s.response_len) for s in settings] == [(16, 16), (64, 16), (64, 8)]
  with pytest.raises(ValueError, match="multiples of block_len=8"):
    bench.make_settings([1.25], 16, [], 8)  # P = 20


@pytest.mark.slow  # about 30 s of CPU: two compiled train steps of a one-layer model
def test_tiny_run_writes_json_and_table(tmp_path, capsys):
  out = tmp_path / "bench.json"
  result = bench.main(
    ["--out", str(out), "--ratios", "1", "--response_len", "8", "--long", "--steps", "1",
     "--num_layers", "1", "--vocab_size", "64", "--block_len", "4"]
  )  # fmt: skip
  (row,) = json.loads(out.read_text())["rows"]
  assert row["rad"]["length"] == 8 + 2 * 8 and row["dup"]["length"] == 2 * (8 + 8)
  assert row["rad"]["loss"] > 0 and row["dup"]["loss"] > 0
  assert row["compiled_flop_ratio"] is None or row["compiled_flop_ratio"] > 1
  assert "| P/R=1 | 8 | 8 | 24 | 32 |" in capsys.readouterr().out
  assert dataclasses.asdict(bench.Setting("x", 8, 8))["context_len"] == 8
  assert result["config"]["num_layers"] == 1
