"""Rule-based CheXpert labeler: 14 CheXpert observations from report text, offline.

Modelled on the design of the published CheXpert labeler (mention extraction,
then three ordered classification passes, then per-report aggregation), with
regular-expression cue scopes in place of its dependency-parse patterns:

1. Mentions. Each observation has mention phrases, unmention phrases (a mention
   inside an unmention span is dropped: "mass effect" is not a lung mass) and,
   for Cardiomegaly / Enlarged Cardiomediastinum, anchors that count only when
   qualified ("heart size is enlarged" / "... is normal"); see chexpert_phrases.py.
2. Classification of each mention, in this order, the first that fires wins:
   pre-negation uncertainty ("cannot exclude X", "X is not ruled out") -> uncertain;
   negation ("no X", "without X", "X is not seen", "X has resolved") -> negative;
   post-negation uncertainty ("possible X", "X versus Y", "may represent X") ->
   uncertain; otherwise positive. A cue reaches a mention only inside its clause:
   sentences end at . ; ? ! and section headers, clauses at terminators such as
   "but", "however", "otherwise". Post-mention cues must start within a few words.
   Pseudo-negations ("no change in X", "not significantly changed") are removed
   first, so "no change in the small effusion" stays positive.
3. Aggregation per report and observation: any positive -> 1; else any uncertain
   -> -1; else negative -> 0; no mention -> blank (NaN). A positive or uncertain
   "congestive heart failure"/"CHF" adds an uncertain Cardiomegaly (as the
   published labeler does). No Finding is 1 when no observation other than Support
   Devices, and no other abnormality from the no-finding list (emphysema,
   scoliosis, ...), is positive or uncertain; blank otherwise.

This is "rule-based CheXpert" labelling, not the CheXbert model. It labels the
whole report (findings and impression); the published labeler read the
impression only.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import numpy as np

from echo_jax.eval import chexpert_phrases as ph

POSITIVE, NEGATIVE, UNCERTAIN = 1, 0, -1
OTHER_FINDING = "Other Finding"  # pseudo-observation that only breaks No Finding


@dataclasses.dataclass(frozen=True)
class Mention:
  """One classified mention: character span in the original text, status and the cue."""

  observation: str
  start: int
  end: int
  text: str
  status: int
  cue: str | None


def _alt(patterns: Sequence[str]) -> re.Pattern[str]:
  return re.compile(r"\b(?:" + "|".join(f"(?:{p})" for p in patterns) + r")(?!\w)")


def _any(patterns: Sequence[str]) -> re.Pattern[str]:
  return re.compile("|".join(f"(?:{p})" for p in patterns))


_SENT_BREAK = re.compile(r"(?<=[.!?;])\s+|\n+|\b(?:findings|impression|conclusion)\s*:", re.I)
_WORD = re.compile(r"\S+")


class CheXpertLabeler:
  """Labels reports with the 14 CheXpert observations (1 pos, 0 neg, -1 uncertain, NaN blank)."""

  observations: tuple[str, ...] = ph.OBSERVATIONS

  def __init__(self) -> None:
    self._mention = {o: _alt(p) for o, p in ph.MENTIONS.items()}
    self._mention[OTHER_FINDING] = _alt(ph.OTHER_FINDINGS)
    self._unmention = {o: _alt(p) for o, p in ph.UNMENTIONS.items() if p}
    self._anchor = {o: _alt(p) for o, p in ph.ANCHORS.items()}
    self._normal_only = {o: _alt(p) for o, p in ph.NORMAL_ONLY_ANCHORS.items()}
    self._abnormal = {o: _alt([p]) for o, p in ph.ANCHOR_ABNORMAL.items()}
    self._normal = _alt([ph.ANCHOR_NORMAL])
    self._borderline = _any([r"top[- ]normal", r"upper limits? of normal", r"borderline"])
    self._pre_unc_pre = _any(ph.PRE_NEG_UNCERTAINTY_PRE)
    self._pre_unc_post = _any(ph.PRE_NEG_UNCERTAINTY_POST)
    self._neg_pre = _any(ph.NEGATION_PRE)
    self._neg_post = _any(ph.NEGATION_POST)
    self._neg_inner = _any(ph.NEGATION_INNER)
    self._pseudo = _any(ph.PSEUDO_NEGATIONS)
    self._unc_pre = _any(ph.UNCERTAINTY_PRE)
    self._unc_post = _any(ph.UNCERTAINTY_POST)
    self._or = _any([ph.OR_CUE])
    self._term = _any(ph.TERMINATORS)
    self._anchor_stop = re.compile(r"\b(?:with|by|from|due|secondary|and there)\b")

  # -- segmentation ---------------------------------------------------------
  def _clauses(self, low: str) -> list[tuple[int, int]]:
    """(start, end) character spans of clauses: sentences cut at terminators."""
    spans: list[tuple[int, int]] = []
    pos = 0
    cuts = [m for m in _SENT_BREAK.finditer(low)]
    bounds = [(pos, m.start(), m.end()) for m in cuts]
    sentences: list[tuple[int, int]] = []
    for _, a, b in bounds:
      sentences.append((pos, a))
      pos = b
    sentences.append((pos, len(low)))
    for s, e in sentences:
      start = s
      for m in self._term.finditer(low, s, e):
        if m.start() > start:
          spans.append((start, m.start()))
        start = m.start()
      if e > start:
        spans.append((start, e))
    return [(s, e) for s, e in spans if low[s:e].strip()]

  @staticmethod
  def _window(text: str, n_words: int) -> str:
    words = list(_WORD.finditer(text))
    if len(words) <= n_words:
      return text
    return text[: words[n_words - 1].end()]

  # -- classification -------------------------------------------------------
  def _classify(self, pre: str, inner: str, post: str) -> tuple[int, str | None]:
    post_w = self._window(post, ph.POST_WINDOW)
    for text, pat in (
      (pre, self._pre_unc_pre),
      (inner, self._pre_unc_post),
      (post_w, self._pre_unc_post),
    ):
      m = pat.search(text)
      if m:
        return UNCERTAIN, m.group(0)
    pre_clean = self._pseudo.sub(lambda m: " " * len(m.group(0)), pre)
    post_clean = self._pseudo.sub(lambda m: " " * len(m.group(0)), post_w)
    inner_clean = self._pseudo.sub(lambda m: " " * len(m.group(0)), inner)
    for text, pat in (
      (pre_clean, self._neg_pre),
      (inner_clean, self._neg_inner),
      (post_clean, self._neg_post),
    ):
      m = pat.search(text)
      if m:
        return NEGATIVE, m.group(0)
    for text, pat in ((pre, self._unc_pre), (inner, self._unc_pre), (post_w, self._unc_post)):
      m = pat.search(text)
      if m:
        return UNCERTAIN, m.group(0)
    near_pre = " ".join(pre.split()[-ph.OR_WINDOW :])
    near_post = self._window(post, ph.OR_WINDOW)
    for text in (near_pre, near_post):
      m = self._or.search(text)
      if m:
        return UNCERTAIN, m.group(0)
    return POSITIVE, None

  def _anchor_mentions(
    self,
    obs: str,
    low: str,
    cs: int,
    ce: int,
    taken: list[tuple[int, int]],
    normal_only: bool = False,
  ) -> list[Mention]:
    out = []
    pattern = self._normal_only[obs] if normal_only else self._anchor[obs]
    kinds = (
      (("normal", self._normal),)
      if normal_only
      else (("abnormal", self._abnormal[obs]), ("normal", self._normal))
    )
    for a in pattern.finditer(low, cs, ce):
      if any(a.start() < e and s < a.end() for s, e in taken):
        continue
      after = self._window(low[a.end() : ce], ph.ANCHOR_WINDOW_AFTER)
      stop = self._anchor_stop.search(after)
      if stop:
        after = after[: stop.start()]
      best = None
      for kind, pat in kinds:
        m = pat.search(after)
        if m and (best is None or m.start() < best[1].start()):
          best = (kind, m)
      if best is not None:
        kind, m = best
        span = (a.start(), a.end() + m.end())
        inner = low[a.end() : a.end() + m.start()]
        qual = m.group(0)
      else:
        before_text = low[cs : a.start()]
        words = list(_WORD.finditer(before_text))
        lo = words[-ph.ANCHOR_WINDOW_BEFORE].start() if len(words) >= ph.ANCHOR_WINDOW_BEFORE else 0
        before = before_text[lo:]
        for kind, pat in kinds:
          ms = list(pat.finditer(before))
          if ms and (best is None or ms[-1].start() > best[1].start()):
            best = (kind, ms[-1])
        if best is None:
          continue
        kind, m = best
        span = (cs + lo + m.start(), a.end())
        inner = low[span[0] + len(m.group(0)) : a.start()]
        qual = m.group(0)
      pre, post = low[cs : span[0]], low[span[1] : ce]
      if kind == "normal":
        ctx = low[max(cs, span[1] - len(qual) - 20) : span[1]]
        b = self._borderline.search(ctx)
        status, cue = (UNCERTAIN, b.group(0)) if b else (NEGATIVE, qual)
      else:
        status, cue = self._classify(pre, inner, post)
      out.append(Mention(obs, span[0], span[1], "", status, cue))
      taken.append(span)
    return out

  def mentions(self, text: str) -> list[Mention]:
    """All classified mentions in a report, in text order."""
    if not isinstance(text, str):
      raise TypeError(f"report must be str, got {type(text).__name__}")
    low = text.lower()
    found: list[Mention] = []
    for cs, ce in self._clauses(low):
      for obs, pat in self._mention.items():
        unm = self._unmention.get(obs)
        bad = [(m.start(), m.end()) for m in unm.finditer(low, cs, ce)] if unm else []
        taken: list[tuple[int, int]] = []
        for m in pat.finditer(low, cs, ce):
          if any(m.start() < e and s < m.end() for s, e in bad):
            continue
          status, cue = self._classify(low[cs : m.start()], "", low[m.end() : ce])
          found.append(Mention(obs, m.start(), m.end(), "", status, cue))
          taken.append((m.start(), m.end()))
        if obs in self._anchor:
          found.extend(self._anchor_mentions(obs, low, cs, ce, taken))
        if obs in self._normal_only:
          found.extend(self._anchor_mentions(obs, low, cs, ce, taken, normal_only=True))
    found.sort(key=lambda m: (m.start, m.end))
    return [dataclasses.replace(m, text=text[m.start : m.end]) for m in found]

  # -- aggregation ----------------------------------------------------------
  def aggregate(self, mentions: Sequence[Mention]) -> dict[str, float]:
    """Per-report labels from classified mentions (CheXpert aggregation rules)."""
    per: dict[str, list[int]] = {}
    no_finding = True
    for m in mentions:
      if m.observation != "Support Devices" and m.status in (POSITIVE, UNCERTAIN):
        no_finding = False
      if m.observation == "Edema" and m.status in (POSITIVE, UNCERTAIN):
        if re.fullmatch(r"(?:congestive )?heart failure|chf", m.text.lower()):
          per.setdefault("Cardiomegaly", []).append(UNCERTAIN)
      per.setdefault(m.observation, []).append(m.status)
    out: dict[str, float] = {}
    for obs in ph.OBSERVATIONS:
      if obs == "No Finding":
        out[obs] = 1.0 if no_finding else float("nan")
        continue
      vals = per.get(obs)
      if not vals:
        out[obs] = float("nan")
      elif POSITIVE in vals:
        out[obs] = 1.0
      elif UNCERTAIN in vals:
        out[obs] = -1.0
      else:
        out[obs] = 0.0
    return out

  def label(self, text: str) -> dict[str, float]:
    """Labels of one report: observation -> 1.0, 0.0, -1.0 or NaN (not mentioned)."""
    return self.aggregate(self.mentions(text))

  def label_many(self, texts: Sequence[str]) -> np.ndarray:
    """Labels of many reports as a float array [N, 14] in ``OBSERVATIONS`` order."""
    out = np.full((len(texts), len(ph.OBSERVATIONS)), np.nan)
    for i, t in enumerate(texts):
      lab = self.label(t)
      out[i] = [lab[o] for o in ph.OBSERVATIONS]
    return out
