"""The one-command GPU benchmark: its CPU dry run writes every column of every row."""

import json
import math

import pytest

from echo_jax.bench import gpu


def _number(value) -> bool:
  return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _check_row(row, prompts):
  assert set(gpu.ROW_COLUMNS) <= set(row), row
  for key in ("prefill_ms", "e2e_tokens_per_s", "ms_per_report", "tpf", "seconds"):
    assert _number(row[key]), (key, row)
  assert row["tokens"] == 8 * prompts  # every report runs to the 8-token budget
  assert row["e2e_tokens_per_s"] == row["tokens"] / row["seconds"]
  # Decode-only takes the prefills out; at tiny shapes a prefill timed alone can cost as
  # much as the whole fused call, and then there is no decode-only figure.
  batches = math.ceil(prompts / row["batch_size"])
  decode_s = row["seconds"] - batches * row["prefill_ms"] / 1000
  if decode_s > 0:
    assert row["decode_tokens_per_s"] == row["tokens"] / decode_s
  else:
    assert row["decode_tokens_per_s"] is None
  assert row["peak_memory_bytes"] is None  # a CPU has no device memory counter


def _check_train(train):
  assert set(gpu.TRAIN_COLUMNS) <= set(train), train
  for key in ("step_ms", "tokens_per_s", "flops", "model_flops"):
    assert _number(train[key]), (key, train)
  assert train["peak_flops"] is None and train["mfu"] is None  # CPU: no peak, no MFU


def test_dry_run_one_decoder_writes_its_columns(tmp_path, monkeypatch):
  """The fast variant: one decoder at batch 1, no peer, plus the training row."""
  monkeypatch.setattr(gpu, "DECODERS", (("one-step B=8", "one_step", 8),))
  out = tmp_path / "gpu.json"
  gpu.main(["--dry_run", "--no_peer", "--batch_sizes", "1", "--out", str(out)])
  saved = json.loads(out.read_text())
  assert [(r["decoder"], r["batch_size"]) for r in saved["rows"]] == [("one-step B=8", 1)]
  _check_row(saved["rows"][0], prompts=1)
  assert saved["rows"][0]["tpf"] == 8.0
  _check_train(saved["train"])


@pytest.mark.slow
def test_dry_run_writes_every_column(tmp_path):
  out = tmp_path / "gpu.json"
  result = gpu.main(["--dry_run", "--out", str(out)])
  saved = json.loads(out.read_text())
  assert saved["rows"] == result["rows"] and saved["preset"] == "dry_run"
  assert (tmp_path / "gpu.md").read_text().strip() == saved["markdown"]
  decoders = {(r["decoder"], r["batch_size"]) for r in saved["rows"]}
  names = [name for name, _, _ in gpu.DECODERS] + ["transformers generate"]
  assert decoders == {(n, b) for n in names for b in (1, 2)}
  for row in saved["rows"]:
    _check_row(row, prompts=2)
  one_step = {r["batch_size"]: r for r in saved["rows"] if r["decoder"] == "one-step B=8"}
  assert one_step[1]["tpf"] == 8.0
  _check_train(saved["train"])
