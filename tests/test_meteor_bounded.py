"""METEOR never hangs or stops the evaluation: stand-in jars that hang, die or never read.

The stand-ins are small Python programs given as the jar's command line, so these tests
need no java and run in seconds; the real jar is exercised by test_evaluate_errors.py.
"""

import sys
import time

import numpy as np
import pytest

from echo_jax.eval import meteor as M
from echo_jax.eval import pipeline
from echo_jax.eval.pipeline import EvalOptions, evaluate_predictions


def _py(code):
  return [sys.executable, "-c", code]


# Answers the protocol with fixed numbers: "1 2" stats per SCORE line, then 0.5 per study
# and 0.25 for the corpus on the EVAL line.
ECHO_JAR = """
import sys
for line in sys.stdin:
  if line.startswith("SCORE"):
    print("1 2", flush=True)
  elif line.startswith("EVAL"):
    n = line.count("|||")
    for _ in range(n):
      print(0.5)
    print(0.25, flush=True)
"""


def test_sanitize_removes_what_breaks_the_line_protocol():
  text = "a\ud83d b\x00c\r\nd ||| e\u2028f\tg"
  clean, cut = M.sanitize(text)
  assert clean == "a b c d e f g" and not cut
  clean.encode("utf-8")
  assert M.sanitize("") == (".", False)
  assert M.sanitize("w " * 10, max_words=3) == ("w w w", True)


def test_protocol_round_trip_with_a_stand_in():
  out = M.meteor(["x", "y\ud83d", ""], ["r", "s", "t"], command=_py(ECHO_JAR), timeout_s=30)
  assert out.reason is None and out.score == 0.25
  np.testing.assert_array_equal(out.per_study, [0.5, 0.5, 0.5])


def test_hanging_jar_times_out_with_the_reason():
  start = time.monotonic()
  out = M.meteor(["a"], ["a"], command=_py("import time; time.sleep(60)"), timeout_s=1.5)
  assert time.monotonic() - start < 10
  assert out.score is None and out.per_study is None and out.reason == "timed out after 1.5 s"


def test_jar_that_never_reads_a_huge_payload_does_not_deadlock():
  # 2 MB of SCORE lines fill the pipe; the writer thread blocks, the deadline still holds.
  big = ["word " * 1000] * 400
  start = time.monotonic()
  out = M.meteor(
    big, big, command=_py("import time; time.sleep(60)"), timeout_s=1.5, max_words=10**6
  )
  assert time.monotonic() - start < 10 and "timed out" in out.reason


def test_dying_jar_reports_its_exit_and_stderr():
  code = "import sys; sys.stdin.readline(); sys.stderr.write('Exception: boom\\n'); sys.exit(3)"
  out = M.meteor(["a"], ["a"], command=_py(code), timeout_s=10)
  assert out.score is None and out.reason == "the jar exited (status 3): Exception: boom"


def test_garbage_answer_is_not_computed():
  code = "import sys\nfor line in sys.stdin: print('nonsense', flush=True)"
  out = M.meteor(["a"], ["a"], command=_py(code), timeout_s=10)
  assert out.score is None and "unexpected answer" in out.reason


def test_missing_java_is_a_reason(monkeypatch):
  monkeypatch.setattr(M.shutil, "which", lambda name: None)
  out = M.meteor(["a"], ["a"])
  assert out.score is None and out.reason == "no java executable on PATH"


class _BrokenScorer:
  def __init__(self, *args, **kwargs):
    pass

  def score(self, preds, refs):
    raise RuntimeError("model weights are corrupt")


def test_one_failing_metric_does_not_stop_the_others(monkeypatch):
  monkeypatch.setattr(pipeline, "SemScorer", _BrokenScorer)
  recs = [{"id": "1", "prediction": "No effusion.", "reference": "No effusion."}]
  result = evaluate_predictions(
    recs, options=EvalOptions(conventions=("echo",), meteor=False, n_boot=5, semscore_model="x")
  )
  m = result["models"]["model"]
  assert m["metrics"]["semscore"] is None
  assert result["notes"]["semscore"] == "not computed: RuntimeError: model weights are corrupt"
  assert m["metrics"]["echo/rouge_l"] == pytest.approx(1.0)
  assert "chexpert/f1_micro_14" in m["metrics"]
