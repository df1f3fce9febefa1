"""METEOR 1.5 through pycocoevalcap's jar, bounded in time and safe for any text.

The jar is driven over its ``-stdio`` protocol: one ``SCORE ||| ref ||| hyp`` line
per study answers with that study's statistics, then one ``EVAL ||| stats ...``
line answers with each study's score and the corpus score. pycocoevalcap's own
wrapper is not used: it writes and reads the pipes on one thread under a lock, so a
jar that stops reading (a huge line) or dies (a lone UTF-16 surrogate cannot be
encoded) blocks it forever, and its cleanup waits for the same lock.

Here a writer thread feeds stdin, a reader thread drains stdout, stderr goes to a
file, and every wait has a deadline; on any failure the jar is killed and METEOR
is reported as not computed with the reason. Texts are sanitised before they reach
Java: lone surrogates and control or line-separator characters become spaces (they
would break the UTF-8 encoding or the line protocol), the field separator ``|||``
is removed, and each text is cut to ``max_words`` words (reports are ~100 words;
METEOR's alignment on a megabyte of text would not finish). Truncations are counted
in the outcome so they are never silent.
"""

from __future__ import annotations

import atexit
import dataclasses
import importlib.util
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
import unicodedata
from collections.abc import Sequence

import numpy as np

DEFAULT_TIMEOUT_S = 120.0
DEFAULT_MAX_WORDS = 1000
_BREAKING = {"Cc", "Cs", "Zl", "Zp"}  # control, lone surrogate, line/paragraph separators


@dataclasses.dataclass
class MeteorOutcome:
  """Corpus and per-study METEOR, or None for both with `reason` saying why."""

  score: float | None
  per_study: np.ndarray | None
  reason: str | None = None
  truncated: int = 0  # texts cut to max_words before scoring


def sanitize(text: str, max_words: int = DEFAULT_MAX_WORDS) -> tuple[str, bool]:
  """Text safe for the jar's line protocol; also True when it was cut to `max_words`."""
  chars = [" " if unicodedata.category(c) in _BREAKING else c for c in text]
  words = "".join(chars).replace("|||", " ").split()
  cut = len(words) > max_words
  return (" ".join(words[:max_words]) or "."), cut


def jar_path() -> str | None:
  """Path of pycocoevalcap's METEOR 1.5 jar, or None when the package is not installed."""
  spec = importlib.util.find_spec("pycocoevalcap")
  if spec is None or not spec.submodule_search_locations:
    return None
  for base in spec.submodule_search_locations:
    path = os.path.join(base, "meteor", "meteor-1.5.jar")
    if os.path.isfile(path):
      return path
  return None


def _is_numbers(line: str) -> bool:
  parts = line.split()
  try:
    [float(x) for x in parts]
  except ValueError:
    return False
  return bool(parts)


class _Failed(Exception):
  """The jar did not answer as the protocol says; the message is the reason."""


class MeteorJar:
  """One running jar process; `score` may be called repeatedly, `close` kills it."""

  def __init__(self, command: Sequence[str], cwd: str | None = None) -> None:
    self._stderr = tempfile.TemporaryFile()
    self._proc = subprocess.Popen(
      list(command),
      cwd=cwd,
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      stderr=self._stderr,
    )
    self._lines: queue.Queue[bytes | None] = queue.Queue()
    threading.Thread(target=self._drain, daemon=True).start()

  def _drain(self) -> None:
    try:
      for line in self._proc.stdout:
        self._lines.put(line)
    except (OSError, ValueError):  # pipe closed by `close` while reading
      pass
    self._lines.put(None)

  def _write(self, payload: bytes, errors: list[BaseException]) -> None:
    try:
      self._proc.stdin.write(payload)
      self._proc.stdin.flush()
    except (OSError, ValueError) as e:  # the jar died or was killed mid-write
      errors.append(e)

  def _send(self, payload: bytes) -> threading.Thread:
    errors: list[BaseException] = []
    t = threading.Thread(target=self._write, args=(payload, errors), daemon=True)
    t.errors = errors  # type: ignore[attr-defined]
    t.start()
    return t

  def _read(self, n: int, deadline: float, timeout_s: float) -> list[str]:
    out = []
    for _ in range(n):
      remaining = deadline - time.monotonic()
      try:
        line = self._lines.get(timeout=max(remaining, 0.0))
      except queue.Empty:
        raise _Failed(f"timed out after {timeout_s:g} s") from None
      if line is None:
        raise _Failed(f"the jar exited (status {self._status()}){self._stderr_tail()}")
      out.append(line.decode("utf-8", "replace").strip())
    return out

  def _status(self) -> int | None:
    try:
      return self._proc.wait(timeout=2)  # stdout closed: the process is ending
    except subprocess.TimeoutExpired:
      return None

  def _stderr_tail(self) -> str:
    try:
      self._stderr.seek(0)
      lines = self._stderr.read().decode("utf-8", "replace").strip().splitlines()
    except (OSError, ValueError):
      return ""
    return f": {lines[-1][:200]}" if lines else ""

  def score(
    self, hyps: Sequence[str], refs: Sequence[str], timeout_s: float
  ) -> tuple[float, np.ndarray]:
    """Corpus and per-study scores of sanitised texts; raises _Failed with the reason."""
    deadline = time.monotonic() + timeout_s
    lines = "".join(f"SCORE ||| {r} ||| {h}\n" for h, r in zip(hyps, refs))
    writer = self._send(lines.encode("utf-8"))
    stats = self._read(len(hyps), deadline, timeout_s)
    for line in stats:  # each answer is a row of numbers; anything else is not METEOR
      if not _is_numbers(line):
        raise _Failed(f"unexpected answer from the jar: {line[:100]!r}")
    writer.join(max(deadline - time.monotonic(), 0.0))
    if writer.errors:  # type: ignore[attr-defined]
      raise _Failed(f"could not write to the jar: {writer.errors[0]}")  # type: ignore[attr-defined]
    self._send(("EVAL ||| " + " ||| ".join(stats) + "\n").encode("utf-8"))
    answers = self._read(len(hyps) + 1, deadline, timeout_s)
    try:
      values = [float(a) for a in answers]
    except ValueError:
      raise _Failed(f"unexpected answer from the jar: {answers[0][:100]!r}") from None
    return values[-1], np.asarray(values[:-1], np.float64)

  def close(self) -> None:
    """Kill the jar and release its pipes; never blocks for long."""
    self._proc.kill()
    try:
      self._proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      pass
    for f in (self._proc.stdin, self._proc.stdout, self._stderr):
      try:
        f.close()
      except OSError:
        pass


_JAR: MeteorJar | None = None  # one jar per process: starting it loads a 60 MB paraphrase table


def _close_jar() -> None:
  global _JAR
  if _JAR is not None:
    _JAR.close()
    _JAR = None


atexit.register(_close_jar)


def default_command() -> list[str] | None:
  """The java command line of the jar, or None when java or the jar is missing."""
  java, jar = shutil.which("java"), jar_path()
  if java is None or jar is None:
    return None
  return [java, "-Xmx2G", "-jar", jar, "-", "-", "-stdio", "-l", "en", "-norm"]


def meteor(
  hyps: Sequence[str],
  refs: Sequence[str],
  *,
  timeout_s: float = DEFAULT_TIMEOUT_S,
  max_words: int = DEFAULT_MAX_WORDS,
  command: Sequence[str] | None = None,
) -> MeteorOutcome:
  """METEOR of hypotheses against one reference each; never raises for the jar's failures.

  `command` replaces the java command line (tests use it to stand in a jar that
  hangs or dies). The reason is set whenever the scores are None.
  """
  global _JAR
  cleaned_h = [sanitize(t, max_words) for t in hyps]
  cleaned_r = [sanitize(t, max_words) for t in refs]
  truncated = sum(cut for _, cut in cleaned_h + cleaned_r)
  if command is None:
    command = default_command()
    if command is None:
      reason = "no java executable on PATH" if shutil.which("java") is None else "no METEOR jar"
      return MeteorOutcome(None, None, reason, truncated)
    cached = True
  else:
    cached = False
  jar = _JAR if cached and _JAR is not None else None
  try:
    if jar is None:
      # The jar finds its paraphrase table relative to the working directory.
      jar = MeteorJar(command, cwd=os.path.dirname(jar_path()) if cached else None)
      if cached:
        _JAR = jar
    score, per = jar.score([h for h, _ in cleaned_h], [r for r, _ in cleaned_r], timeout_s)
  except (_Failed, OSError) as e:
    if jar is not None:
      jar.close()
    if cached:
      _JAR = None
    return MeteorOutcome(None, None, str(e), truncated)
  if not cached:
    jar.close()
  return MeteorOutcome(score, per, None, truncated)
