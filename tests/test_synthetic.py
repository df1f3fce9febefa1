"""Tests of the embedded synthetic benchmark: determinism, labels vs text, pixels, layout, resume."""

import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from echo_jax.data.synthetic import (
  CHEXPERT_LABELS,
  enumerate_sentences,
  generate_study,
  is_complete,
  phrase_inventory,
  write_benchmark,
)
from echo_jax.data.synthetic import writer as writer_mod
from echo_jax.data.synthetic.anatomy import costophrenic_point, render_frontal, sample_anatomy
from echo_jax.data.synthetic.lesions import draw_pneumothorax
from echo_jax.data.synthetic.study import render_views

# --- a tiny mention + negation labeler, independent of the generator's tables ---

MENTIONS = {
  "Atelectasis": r"atelectasis",
  "Cardiomegaly": r"cardiomegaly|heart size|heart is|cardiac size|enlarged heart|cardiac silhouette|cardiomediastinal",
  "Consolidation": r"consolidation",
  "Edema": r"edema",
  "Enlarged Cardiomediastinum": r"mediastin",
  "Fracture": r"fracture",
  "Lung Lesion": r"nodule|\bmass\b",
  "Lung Opacity": r"opacity",
  "Pleural Effusion": r"effusion",
  "Pleural Other": r"pleural thickening",
  "Pneumonia": r"pneumonia",
  "Pneumothorax": r"pneumothorax",
  "Support Devices": r"tube|catheter|\blines?\b|pacemaker|devices?",
}
NEGATION = r"^(no|there is no|there are no)\b|\bwithout\b|\bnormal\b|within normal limits|not widened|unremarkable"
HEDGES = r"\b(possible|possibly|likely|suggest\w*|consistent|concerning|may|cannot|versus|suspicious|collapse)\b"


def sentence_labels(sentence: str) -> dict[str, int]:
  s = sentence.lower()
  value = 0 if re.search(NEGATION, s) else 1
  return {name: value for name, pat in MENTIONS.items() if re.search(pat, s)}


def report_labels(report: str) -> dict[str, int]:
  assert report.startswith("Findings: ") and report.count(" Impression: ") == 1, report
  body = report.replace("Findings: ", "").replace(" Impression: ", " ")
  labels = dict.fromkeys(CHEXPERT_LABELS, 0)
  for sentence in re.split(r"(?<=\.) ", body):
    for name, value in sentence_labels(sentence).items():
      labels[name] = max(labels[name], value)
  labels["No Finding"] = int(
    not any(v for k, v in labels.items() if k not in ("No Finding", "Support Devices"))
  )
  return labels


def test_phrase_inventory_reads_back_exactly():
  sentences = list(enumerate_sentences())
  assert len(phrase_inventory()) >= 40 and len(sentences) > 300
  for key, text, labels in sentences:
    assert sentence_labels(text) == labels, (key, text)
    assert not re.search(HEDGES, text.lower()), text
  # Paraphrases: every positive finding statement has at least 4 wordings.
  for p in phrase_inventory():
    if p.section == "findings" and 1 in p.labels.values():
      assert len(p.templates) >= 4, p.key


def test_labels_match_report_and_attributes():
  seen = set()
  for i in range(300):
    s = generate_study(i, seed=1, render=False)
    assert report_labels(s.report) == s.labels, (s.id, s.report)
    assert set(s.labels) == set(CHEXPERT_LABELS) and set(s.labels.values()) <= {0, 1}
    assert 15 <= len(s.report.split()) <= 95, s.report
    text = s.findings_text.lower()
    for kind, attrs in s.attributes["findings"].items():
      seen.add(kind)
      for key in ("severity", "kind", "pattern"):
        if key in attrs:
          assert attrs[key] in text, (kind, attrs, text)
      if "lobe" in attrs and attrs["side"] != "bilateral":
        assert f"{attrs['side']} {attrs['lobe']} lobe" in text, (kind, attrs, text)
      elif attrs.get("side") == "bilateral":
        assert re.search("bilateral|both|bibasilar", text), text
      elif "side" in attrs:
        assert attrs["side"] in text, (kind, attrs, text)
  assert len(seen) == 12  # all eleven pathologies and the devices occur


def test_deterministic_and_seeded():
  a = generate_study(7, seed=3, lateral=True, image_size=96)
  b = generate_study(7, seed=3, lateral=True, image_size=96)
  c = generate_study(7, seed=4, lateral=True, image_size=96)
  assert a.report == b.report and a.labels == b.labels and a.split == b.split
  assert len(a.images) == 2 and all(x.dtype == np.uint8 and x.shape == (96, 96) for x in a.images)
  np.testing.assert_array_equal(a.images[0], b.images[0])
  np.testing.assert_array_equal(a.images[1], b.images[1])
  assert not np.array_equal(a.images[0], c.images[0])
  # Text does not depend on rendering, nor the frontal image on the lateral option.
  assert generate_study(7, seed=3, render=False).report == a.report
  np.testing.assert_array_equal(generate_study(7, seed=3, image_size=96).images[0], a.images[0])


def test_paraphrase_and_order_variability():
  for findings in ({}, {"pleural_effusion": {"side": "left", "severity": "small"}}):
    reports = {generate_study(i, seed=0, findings=findings, render=False).report for i in range(60)}
    first = {r.split(". ")[0] for r in reports}
    assert len(reports) >= 45 and len(first) >= 6, (len(reports), len(first))


# --- pixels: each finding changes the image where it should, at the model's 168 px ---

SIZE = 168
ANAT = sample_anatomy(np.random.default_rng(11))


def render(findings: dict) -> np.ndarray:
  return render_views(ANAT, findings, SIZE, False, np.random.default_rng(5))[0].astype(np.float32)


def side_masks() -> tuple[np.ndarray, np.ndarray]:
  u, _ = ANAT.canvas(SIZE).grid
  return u < -0.05, u > 0.05


CASES = [
  ({"pleural_effusion": {"side": "right", "severity": "small"}}, "right"),
  ({"pleural_effusion": {"side": "left", "severity": "large"}}, "left"),
  ({"pneumothorax": {"side": "left", "severity": "small"}}, "left"),
  ({"pneumothorax": {"side": "right", "severity": "large"}}, "right"),
  ({"consolidation": {"side": "right", "lobe": "middle", "pneumonia": True}}, "right"),
  ({"lung_opacity": {"side": "left", "lobe": "upper"}}, "left"),
  ({"lung_lesion": {"side": "right", "lobe": "upper", "kind": "nodule"}}, "right"),
  ({"lung_lesion": {"side": "left", "lobe": "lower", "kind": "mass"}}, "left"),
  ({"atelectasis": {"side": "left", "lobe": "lower", "pattern": "linear"}}, "left"),
  ({"fracture": {"side": "right", "rib": 6}}, "right"),
  ({"pleural_thickening": {"side": "left"}}, "left"),
  ({"edema": {"severity": "mild"}}, None),
  ({"enlarged_cardiomediastinum": {}}, None),
  ({"support_devices": {"devices": ["endotracheal_tube"]}}, None),
  ({"support_devices": {"devices": ["pacemaker"], "pacemaker_side": "left"}}, "left"),
  (
    {"support_devices": {"devices": ["central_venous_catheter"], "catheter_side": "right"}},
    "right",
  ),
]


@pytest.mark.parametrize(
  "findings,side", CASES, ids=[next(iter(f)) + "-" + str(s) for f, s in CASES]
)
def test_finding_visible_on_its_side(findings, side):
  diff = render(findings) - render({})
  assert (np.abs(diff) >= 20).sum() >= 12, "finding barely changes the image at 168 px"
  if side is not None:
    right, left = side_masks()
    here, there = (right, left) if side == "right" else (left, right)
    assert np.abs(diff[here]).sum() > 4 * np.abs(diff[there]).sum()


def heart_width(img: np.ndarray) -> int:
  u, v = ANAT.canvas(SIZE).grid
  r, c = np.unravel_index(np.argmin(np.hypot(u - ANAT.heart_cx, v - ANAT.heart_cy - 0.05)), u.shape)
  row = img[r]
  bright = row > 0.85 * row[c]  # the silhouette is near the brightness of its centre
  lo, hi = c, c
  while lo > 0 and bright[lo - 1]:
    lo -= 1
  while hi < SIZE - 1 and bright[hi + 1]:
    hi += 1
  return hi - lo + 1


def test_cardiomegaly_widens_heart():
  widths = [heart_width(render({}))] + [
    heart_width(render({"cardiomegaly": {"severity": g}})) for g in ("mild", "moderate", "severe")
  ]
  assert widths == sorted(widths) and widths[1] >= widths[0] + 4 and widths[3] >= 1.3 * widths[0], (
    widths
  )


def test_effusion_fills_costophrenic_angle():
  u, v = ANAT.canvas(SIZE).grid
  a_cp, v_cp = costophrenic_point(ANAT, "right")
  window = np.hypot(u + a_cp - 0.07, v - v_cp + 0.07) < 0.05
  normal = render({})[window].mean()
  levels = [
    render({"pleural_effusion": {"side": "right", "severity": s}})[window].mean()
    for s in ("small", "large")
  ]
  assert levels[0] > normal + 25 and levels[1] >= levels[0] - 2, (normal, levels)


def test_pneumothorax_removes_markings_at_apex():
  u, v = ANAT.canvas(SIZE).grid
  apex = (u < -0.25) & (u > -0.45) & (v > ANAT.apex_v + 0.02) & (v < ANAT.apex_v + 0.12)
  normal, ptx = render({}), render({"pneumothorax": {"side": "right", "severity": "moderate"}})
  assert ptx[apex].mean() < normal[apex].mean() - 5  # more lucent
  # No vessel markings are left in the pleural space at the apex.
  fr = render_frontal(ANAT, SIZE, np.random.default_rng(5))
  in_lung = apex & (fr.lung > 0.9)
  before = fr.markings[in_lung].sum()
  draw_pneumothorax(fr, {"side": "right", "severity": "moderate"})
  assert before > 1.0 and fr.markings[in_lung].sum() < 0.05 * before


# --- files: R2Gen layout, labels file, atomic writes, resume ---


def test_write_benchmark_layout_and_resume(tmp_path, monkeypatch):
  out = tmp_path / "bench"
  summary = write_benchmark(out, 20, seed=2, lateral=True, image_size=80, workers=1, progress=False)
  assert summary["counts"] == {"train": 16, "val": 2, "test": 2} and not summary["skipped"]
  ann = json.loads((out / "annotation.json").read_text())
  labels = json.loads((out / "labels.json").read_text())
  assert set(ann) == {"train", "val", "test"}
  ids = []
  for split, entries in ann.items():
    for e in entries:
      assert set(e) == {"id", "report", "image_path", "split"} and e["split"] == split
      assert e["image_path"] == [f"{e['id']}/0.png", f"{e['id']}/1.png"]
      for p in e["image_path"]:
        im = Image.open(out / "images" / p)
        assert im.mode == "L" and im.size == (80, 80)
      assert report_labels(e["report"]) == labels[e["id"]]["labels"]
      ids.append(e["id"])
  assert sorted(ids) == sorted(labels) and len(ids) == 20
  assert (out / "gallery.png").stat().st_size > 10_000
  assert is_complete(out, 20, 2, True, 80) and not is_complete(out, 20, 2, True, 96)

  # Complete: a rerun skips everything.
  png = out / "images" / ids[0] / "0.png"
  mtime = png.stat().st_mtime_ns
  assert write_benchmark(out, 20, seed=2, lateral=True, image_size=80, workers=1, progress=False)[
    "skipped"
  ]

  # Interrupted before the JSON files: the rerun reuses finished PNGs and completes.
  (out / "manifest.json").unlink()
  (out / "annotation.json").unlink()
  writer_mod.atomic_write_json(out / ".generation.json", writer_mod._params(20, 2, True, 80))
  assert not write_benchmark(
    out, 20, seed=2, lateral=True, image_size=80, workers=1, progress=False
  )["skipped"]
  assert (
    png.stat().st_mtime_ns == mtime and json.loads((out / "annotation.json").read_text()) == ann
  )

  # A failing rename leaves the previous file intact and no temporary behind.
  def broken_replace(src, dst):
    raise OSError("disk full")

  monkeypatch.setattr(os, "replace", broken_replace)
  with pytest.raises(OSError):
    writer_mod.atomic_write_json(out / "annotation.json", {"broken": True})
  monkeypatch.undo()
  assert json.loads((out / "annotation.json").read_text()) == ann
  assert not [p for p in os.listdir(out) if p.endswith(".tmp")]


def test_studies_independent_of_count_and_workers(tmp_path):
  a, b = tmp_path / "a", tmp_path / "b"
  write_benchmark(a, 6, seed=9, image_size=72, workers=1, gallery=False, progress=False)
  write_benchmark(b, 10, seed=9, image_size=72, workers=2, gallery=False, progress=False)
  la, lb = json.loads((a / "labels.json").read_text()), json.loads((b / "labels.json").read_text())
  for sid in la:
    assert la[sid] == lb[sid]
    assert (a / "images" / sid / "0.png").read_bytes() == (
      b / "images" / sid / "0.png"
    ).read_bytes()


def test_bad_arguments_raise(tmp_path):
  with pytest.raises(ValueError, match="num_studies"):
    write_benchmark(tmp_path, 0, seed=0)
  with pytest.raises(ValueError, match="image_size"):
    generate_study(0, 0, image_size=16)
  with pytest.raises(ValueError, match="unknown finding"):
    generate_study(0, 0, findings={"tumor": {}}, render=False)
