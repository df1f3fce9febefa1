"""`python -m echo_jax.evaluate` on bad input: one line naming the file, exit 2, no traceback.

And on hostile but valid text (a lone surrogate, a megabyte prediction): it finishes,
with METEOR computed or reported as not computed with the reason.
"""

import json
import os
import subprocess
import sys
import time

import pytest

GOOD = {"id": "s1", "prediction": "The lungs are clear.", "reference": "No acute process."}


def _run(args, timeout=120):
  env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run(
    [sys.executable, "-m", "echo_jax.evaluate", *args],
    capture_output=True,
    text=True,
    timeout=timeout,
    env=env,
  )


def _lines(path, *lines, prefix=b""):
  path.write_bytes(prefix + b"".join(x.encode() + b"\n" for x in lines))
  return str(path)


def _assert_user_error(proc, *needles):
  assert proc.returncode == 2, proc.stderr
  assert "Traceback" not in proc.stderr
  err = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
  assert len(err) == 1, proc.stderr
  for needle in needles:
    assert needle in err[0], err[0]
  return err[0]


FAST = ["--no-meteor", "--n-boot", "10"]

PREDICTION_CASES = {
  "malformed line": (
    ['{"id": "s1", "prediction": "x", "reference": "y"', ""],
    ("malformed JSON in", "preds.jsonl:1:"),
  ),
  "JSON array line": (
    [json.dumps(GOOD), json.dumps([GOOD])],
    ("not a JSON object in", "preds.jsonl:2: the line is a JSON array"),
  ),
  "missing prediction": (
    [json.dumps({"id": "s1", "reference": "y"})],
    ("missing field 'prediction' in", "preds.jsonl:1"),
  ),
  "null prediction": (
    [json.dumps({"id": "s1", "prediction": None, "reference": "y"})],
    ("field 'prediction' is null in", "preds.jsonl:1"),
  ),
  "number prediction": (
    [json.dumps({"id": "s1", "prediction": 3, "reference": "y"})],
    ("field 'prediction' is a number in", "preds.jsonl:1"),
  ),
  "null id": ([json.dumps(dict(GOOD, id=None))], ("field 'id' is null in", "preds.jsonl:1")),
  "missing reference": (
    [json.dumps({"id": "s1", "prediction": "x"})],
    ("missing field 'reference' in", "preds.jsonl:1"),
  ),
  "duplicate id": (
    [json.dumps(GOOD), json.dumps(GOOD)],
    ("duplicate id 's1' for model 'model' in", "preds.jsonl:2: also on line 1"),
  ),
  "empty file": ([], ("no records in", "preds.jsonl: the file is empty")),
  "string tpf": (
    [json.dumps(dict(GOOD, stats={"tpf": "7.5"}))],
    ("stats.tpf is a string in", "preds.jsonl:1"),
  ),
  "NaN seconds": (
    [json.dumps(dict(GOOD, stats={"seconds": float("nan")}))],
    ("stats.seconds is nan in", "preds.jsonl:1"),
  ),
  "stats not an object": (
    [json.dumps(dict(GOOD, stats=[1]))],
    ("field 'stats' is an array in", "preds.jsonl:1"),
  ),
  "image path number": (
    [json.dumps(dict(GOOD, image_path=3))],
    ("field 'image_path' is a number in", "preds.jsonl:1"),
  ),
}


@pytest.mark.parametrize("case", sorted(PREDICTION_CASES))
def test_bad_prediction_file_is_one_line(tmp_path, case):
  lines, needles = PREDICTION_CASES[case]
  preds = _lines(tmp_path / "preds.jsonl", *lines)
  proc = _run(["--predictions", preds, "--out", str(tmp_path / "out"), *FAST])
  _assert_user_error(proc, *needles)
  assert not (tmp_path / "out").exists()  # refused before anything is written


def test_missing_file_and_bad_flags_are_named(tmp_path):
  proc = _run(["--predictions", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o")])
  _assert_user_error(proc, "file not found in", "nope.jsonl")
  preds = _lines(tmp_path / "p.jsonl", json.dumps(GOOD))
  proc = _run(["--predictions", preds, "--out", str(tmp_path / "o"), "--conventions", "coco"])
  _assert_user_error(proc, "--conventions", "coco")
  proc = _run(["--predictions", preds, "--out", str(tmp_path / "o"), "--n-boot", "0"])
  _assert_user_error(proc, "--n-boot")
  (tmp_path / "file").write_text("x")
  proc = _run(["--predictions", preds, "--out", str(tmp_path / "file"), *FAST])
  _assert_user_error(proc, "--out is a file", "file")


def test_reference_file_errors_name_the_reference_file(tmp_path):
  preds = _lines(tmp_path / "p.jsonl", json.dumps({"id": "s1", "prediction": "x"}))
  refs = _lines(
    tmp_path / "refs.jsonl", json.dumps({"id": "s1", "reference": "y"}), '{"id": "s1", "ref'
  )
  proc = _run(["--predictions", preds, "--references", refs, "--out", str(tmp_path / "o"), *FAST])
  _assert_user_error(proc, "malformed JSON in", "refs.jsonl:2:")
  refs = _lines(tmp_path / "refs.jsonl", json.dumps({"id": "s1", "findings": 5}))
  proc = _run(["--predictions", preds, "--references", refs, "--out", str(tmp_path / "o"), *FAST])
  _assert_user_error(proc, "refs.jsonl:1", "field 'findings' is a number")
  refs = _lines(tmp_path / "refs.jsonl", json.dumps({"id": "s2", "reference": "y"}))
  proc = _run(["--predictions", preds, "--references", refs, "--out", str(tmp_path / "o"), *FAST])
  _assert_user_error(proc, "id 's1' has no reference in", "p.jsonl:1")


def test_latin1_bytes_name_the_line(tmp_path):
  path = tmp_path / "p.jsonl"
  path.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"id": "s2", "prediction": "caf\xe9"}\n')
  proc = _run(["--predictions", str(path), "--out", str(tmp_path / "o"), *FAST])
  _assert_user_error(proc, "bytes that are not UTF-8 in", "p.jsonl:2: byte 0xe9")


def test_byte_order_mark_is_accepted(tmp_path):
  preds = _lines(tmp_path / "p.jsonl", json.dumps(GOOD), prefix=b"\xef\xbb\xbf")
  proc = _run(["--predictions", preds, "--out", str(tmp_path / "o"), *FAST])
  assert proc.returncode == 0, proc.stderr
  assert json.loads((tmp_path / "o" / "metrics.json").read_text())["models"]["model"]["n"] == 1


def _hostile_case(tmp_path, prediction, meteor_args):
  preds = _lines(
    tmp_path / "p.jsonl",
    json.dumps({"id": "s0", "prediction": prediction, "reference": "No acute process."}),
    json.dumps(GOOD),
  )
  start = time.monotonic()
  proc = _run(["--predictions", preds, "--out", str(tmp_path / "o"), *meteor_args], timeout=60)
  elapsed = time.monotonic() - start
  assert proc.returncode == 0, proc.stderr
  assert "Traceback" not in proc.stderr
  metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
  page = (tmp_path / "o" / "report.html").read_text(encoding="utf-8")
  return metrics, page, proc, elapsed


@pytest.mark.parametrize("meteor", [False, True], ids=["no-meteor", "meteor"])
def test_lone_surrogate_finishes_within_60s(tmp_path, meteor):
  args = ["--n-boot", "10"] + ([] if meteor else ["--no-meteor"])
  metrics, page, proc, elapsed = _hostile_case(tmp_path, "Clear lungs \ud83d \x00 ok.", args)
  assert elapsed < 60
  assert "Clear lungs \ufffd \ufffd ok." in page  # shown, with the unwritable characters marked
  meteor_value = metrics["models"]["model"]["metrics"]["r2gen/meteor"]
  if meteor:
    # Either scored or not computed with the reason; never a hang.
    assert meteor_value is not None or "not computed" in metrics["notes"]["r2gen/meteor"]
  else:
    assert meteor_value is None


def test_megabyte_prediction_finishes_within_60s(tmp_path):
  big = "there is a small left pleural effusion. " * 26000  # ~1 MB
  metrics, page, proc, elapsed = _hostile_case(tmp_path, big, ["--n-boot", "10"])
  assert len(big) > 10**6 and elapsed < 60
  note = metrics["notes"].get("r2gen/meteor", "")
  meteor_value = metrics["models"]["model"]["metrics"]["r2gen/meteor"]
  assert (meteor_value is not None and "cut to that length" in note) or "not computed" in note
  assert "lexical metrics" in proc.stderr  # progress lines while working
