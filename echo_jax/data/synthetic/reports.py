"""Normalized report text: paraphrase choice, sentence order, and the phrase inventory.

A report is `Findings: <sentences> Impression: <sentences>`. Every region
(lungs, pleura, heart, mediastinum, bones, devices) gets an explicit positive
or negative statement drawn from the phrase table (phrases.py). Paraphrase
choice and sentence order are random per study; this variability is what
makes one-step block decoding hard and is part of the benchmark.
"""

from __future__ import annotations

import itertools
import string
from collections.abc import Iterator

import numpy as np

from echo_jax.data.synthetic.findings import GRADES, LOBES, RIBS, SIZES
from echo_jax.data.synthetic.phrases import PHRASES, Phrase

_ORDINALS = {4: "fourth", 5: "fifth", 6: "sixth", 7: "seventh", 8: "eighth", 9: "ninth"}
_ADVERB = {"mild": "mildly", "moderate": "moderately", "severe": "severely"}
# Every slot and the values it can take (for enumerating the inventory).
SLOT_VALUES: dict[str, tuple[str, ...]] = {
  "side": ("right", "left"),
  "size": SIZES,
  "grade": GRADES,
  "grade_adv": tuple(_ADVERB.values()),
  "lobe": tuple(f"{s} {lobe} lobe" for s, lobes in LOBES.items() for lobe in lobes),
  "kind": ("nodule", "mass"),
  "pattern": ("plate-like", "linear"),
  "rib": tuple(_ORDINALS[r] for r in RIBS),
}


class _Slots(dict):
  """Template values; `{Name}` gives the capitalized form of `{name}`."""

  def __missing__(self, key: str) -> str:
    low = key[:1].lower() + key[1:]
    if low != key and low in self:
      return self[low][:1].upper() + self[low][1:]
    raise KeyError(f"template slot {key!r} has no value")


def _slots(attrs: dict) -> _Slots:
  s = _Slots()
  if "side" in attrs:
    s["side"] = attrs["side"]
  if "severity" in attrs:
    sev = attrs["severity"]
    s["size"] = s["grade"] = sev  # templates use the word of their finding
    if sev in _ADVERB:
      s["grade_adv"] = _ADVERB[sev]
  if "lobe" in attrs:
    s["lobe"] = f"{attrs['side']} {attrs['lobe']} lobe"
  for key in ("kind", "pattern"):
    if key in attrs:
      s[key] = attrs[key]
  if "rib" in attrs:
    s["rib"] = _ORDINALS[int(attrs["rib"])]
  return s


def _say(key: str, slots: dict, rng: np.random.Generator) -> str:
  templates = PHRASES[key].templates
  text = templates[int(rng.integers(len(templates)))].format_map(_Slots(slots))
  return text[:1].upper() + text[1:]


def _positive_keys(kind: str, attrs: dict) -> tuple[str, str]:
  """(findings phrase key, impression phrase key) of a positive finding."""
  bilateral = attrs.get("side") == "bilateral"
  if kind == "consolidation":
    key = "pneumonia" if attrs.get("pneumonia") else "consolidation"
  elif kind == "pleural_effusion":
    key = "effusion_bilateral" if bilateral else "effusion"
  elif kind == "atelectasis":
    key = "atelectasis_bilateral" if bilateral else "atelectasis"
  elif kind == "lung_opacity":
    key = "opacity"
  elif kind == "lung_lesion":
    key = "lesion"
  elif kind == "enlarged_cardiomediastinum":
    key = "mediastinum_wide"
  else:
    key = kind
  return key, "imp_" + key


def render_report(findings: dict, rng: np.random.Generator) -> tuple[str, str]:
  """(findings text, impression text) for a finding set, paraphrased and shuffled."""
  said: list[str] = []
  summary: list[str] = []
  pathologies = {k: a for k, a in findings.items() if k != "support_devices"}
  for kind, attrs in pathologies.items():
    fkey, ikey = _positive_keys(kind, attrs)
    said.append(_say(fkey, _slots(attrs), rng))
    summary.append(_say(ikey, _slots(attrs), rng))

  lung_kinds = ("consolidation", "lung_opacity", "lung_lesion", "edema", "atelectasis")
  if not any(k in findings for k in lung_kinds):
    said.append(
      _say(
        str(rng.choice(["lungs_clear", "lungs_clear_consolidation", "lungs_clear_full"])), {}, rng
      )
    )
  elif rng.random() < 0.5:  # optionally negate the main lung observations that are absent
    absent = [k for k in ("consolidation", "edema") if k not in findings]
    if len(absent) == 2:
      said.append(_say("lungs_clear_full", {}, rng))
    elif absent == ["consolidation"]:
      said.append(_say("lungs_clear_consolidation", {}, rng))
    elif absent == ["edema"]:
      said.append(_say("edema_absent", {}, rng))

  effusion, ptx = "pleural_effusion" in findings, "pneumothorax" in findings
  if not effusion and not ptx:
    said.append(_say("pleura_normal", {}, rng))
  elif not effusion:
    said.append(_say("effusion_absent", {}, rng))
  elif not ptx:
    said.append(_say("pneumothorax_absent", {}, rng))

  heart, mediastinum = "cardiomegaly" in findings, "enlarged_cardiomediastinum" in findings
  if not heart and not mediastinum and rng.random() < 0.5:
    said.append(_say("cardiomediastinal_normal", {}, rng))
  else:
    if not heart:
      said.append(_say("heart_normal", {}, rng))
    if not mediastinum:
      said.append(_say("mediastinum_normal", {}, rng))

  if "fracture" not in findings:
    said.append(_say(str(rng.choice(["bones_normal", "fracture_absent"])), {}, rng))

  devices = findings.get("support_devices")
  if devices:
    for device in devices["devices"]:
      side = (
        devices.get("catheter_side")
        if device == "central_venous_catheter"
        else devices.get("pacemaker_side")
      )
      said.append(_say(device, {"side": side} if side else {}, rng))
  else:
    said.append(_say("devices_absent", {}, rng))

  rng.shuffle(said)
  rng.shuffle(summary)
  if not pathologies:
    summary = [
      _say("imp_normal" if devices or rng.random() < 0.75 else "imp_normal_study", {}, rng)
    ]
  if devices:
    summary.append(_say("imp_devices", {}, rng))
  return " ".join(said), " ".join(summary)


def format_report(findings_text: str, impression_text: str) -> str:
  """The normalized report string: `Findings: ... Impression: ...`."""
  return f"Findings: {findings_text} Impression: {impression_text}"


def phrase_inventory() -> list[Phrase]:
  """Every statement the generator can write (for labeler tests and vocabulary checks)."""
  return list(PHRASES.values())


def enumerate_sentences() -> Iterator[tuple[str, str, dict[str, int]]]:
  """Every concrete sentence (all templates x all slot values) as (phrase key, text, labels).

  `labels` holds only the observations the sentence mentions (1 asserted, 0
  negated); a labeler should leave every other observation unmentioned.
  """
  for phrase in PHRASES.values():
    for template in phrase.templates:
      names = sorted(
        {f[1][:1].lower() + f[1][1:] for f in string.Formatter().parse(template) if f[1]}
      )
      for values in itertools.product(*(SLOT_VALUES[n] for n in names)):
        text = template.format_map(_Slots(zip(names, values)))
        yield phrase.key, text[:1].upper() + text[1:], dict(phrase.labels)
