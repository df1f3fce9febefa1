"""Dataset readers on small fixtures written in each published layout, good and bad entries."""

import csv
import gzip
import json
import os

import numpy as np
import pytest
from PIL import Image

from echo_jax.data.readers import RexGradientFields, read_dataset
from echo_jax.data.readers.sections import findings_impression, section_text
from echo_jax.data.study import SkipLog, Study, TooManyBadError


def _png(path, size=(8, 6), value=128):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.full((size[1], size[0]), value, np.uint8)).save(path)


def _write_csv(path, header, rows):
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "wt", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)


# ----------------------------------------------------------------------------- Study, SkipLog


def test_study_report_and_validation():
  s = Study("a", ("/x/0.png",), ("PA",), "Lungs clear.", "Normal.", "train")
  assert s.report == "Findings: Lungs clear. Impression: Normal."
  assert Study("b", ("/x",), ("",), "", "Normal.", "val").report == "Findings: Impression: Normal."
  with pytest.raises(ValueError, match="view positions"):
    Study("c", ("/x",), (), "f", "i", "train")
  with pytest.raises(ValueError, match="split"):
    Study("c", ("/x",), ("",), "f", "i", "validate")


def test_skiplog_counts_and_limit():
  log = SkipLog("t", max_bad_fraction=0.25)
  log.ok(3)
  log.skip("s1", "missing_image", "/a.png")
  assert (log.total, log.num_skipped, log.bad_fraction) == (4, 1, 0.25)
  log.check()  # exactly at the limit is fine
  log.skip("s2", "empty_report")
  assert log.reasons() == {"missing_image": 1, "empty_report": 1}
  with pytest.raises(TooManyBadError, match=r"s1 \(missing_image: /a.png\)"):
    log.check()


# ----------------------------------------------------------------------------- R2Gen


def _iu_fixture(root):
  entries = []
  for i in range(4):
    sid = f"CXR{i}_IM-000{i}"
    _png(os.path.join(root, "images", sid, "0.png"))
    _png(os.path.join(root, "images", sid, "1.png"))
    entries.append(
      {
        "id": sid,
        "report": f"The heart is  normal.\nStudy {i}.",
        "image_path": [f"{sid}/0.png", f"{sid}/1.png"],
        "split": "train",
      }
    )
  open(os.path.join(root, "images", "zero.png"), "wb").close()
  bad = [
    {"id": "missing", "report": "x", "image_path": ["nope/0.png"]},
    {"id": "escape", "report": "x", "image_path": ["../../etc/passwd"]},
    {"id": "absolute", "report": "x", "image_path": ["/etc/passwd"]},
    {"id": "empty", "report": "   ", "image_path": ["CXR0_IM-0000/0.png"]},
    {"id": "noreport", "image_path": ["CXR0_IM-0000/0.png"]},
    {"id": "zero", "report": "x", "image_path": ["zero.png"]},
    "not an object",
  ]
  ann = {"train": entries[:2] + bad, "val": entries[2:3], "test": entries[3:]}
  with open(os.path.join(root, "annotation.json"), "w") as f:
    json.dump(ann, f)


def test_r2gen_iu_good_and_bad_entries(tmp_path):
  _iu_fixture(str(tmp_path))
  log = SkipLog("r2gen", max_bad_fraction=1.0)
  studies = read_dataset("r2gen", str(tmp_path), skips=log)
  assert [s.id for s in studies] == ["CXR0_IM-0000", "CXR1_IM-0001", "CXR2_IM-0002", "CXR3_IM-0003"]
  assert [s.split for s in studies] == ["train", "train", "val", "test"]
  s = studies[0]
  assert s.image_paths == (
    str(tmp_path / "images/CXR0_IM-0000/0.png"),
    str(tmp_path / "images/CXR0_IM-0000/1.png"),
  )
  assert s.view_positions == ("", "")
  # No section markers: the whole (whitespace-normalized) report is the findings.
  assert (s.findings, s.impression) == ("The heart is normal. Study 0.", "")
  assert log.reasons() == {
    "missing_image": 1,
    "path_escape": 2,
    "empty_report": 1,
    "missing_field": 2,
    "zero_byte_image": 1,
  }
  assert log.num_ok == 4
  # 7 of 11 entries are bad: far above the default limit.
  with pytest.raises(TooManyBadError, match="unusable"):
    read_dataset("r2gen", str(tmp_path))
  assert [
    s.id for s in read_dataset("r2gen", str(tmp_path), splits=["val"], max_bad_fraction=1.0)
  ] == ["CXR2_IM-0002"]
  assert all(
    len(s.image_paths) == 1
    for s in read_dataset("r2gen", str(tmp_path), max_images=1, max_bad_fraction=1.0)
  )


def test_r2gen_synthetic_markers_and_labels(tmp_path):
  root = str(tmp_path)
  for sid in ("syn0", "syn1", "syn2"):
    _png(os.path.join(root, "images", sid, "0.png"))
  report = "Findings: The lungs are clear. No effusion. Impression: No acute process."
  ann = {
    "train": [
      {"id": "syn0", "report": report, "image_path": ["syn0/0.png"], "split": "train"},
      {
        "id": "syn1",
        "report": "findings: Small left effusion, impression: Effusion.",
        "image_path": ["syn1/0.png"],
      },
      {
        "id": "syn3",
        "report": "The new finding: effusion. Impression: x",
        "image_path": ["syn0/0.png"],
      },
    ],
    "val": [{"id": "syn2", "report": report, "image_path": ["syn2/0.png"]}],
    "test": [],
  }
  json.dump(ann, open(os.path.join(root, "annotation.json"), "w"))
  labels = {
    "syn0": {"labels": {"Cardiomegaly": 0, "Pleural Effusion": 0}, "attributes": {}},
    "syn1": {"labels": {"Cardiomegaly": 0, "Pleural Effusion": 1}, "attributes": {}},
    "syn3": {"labels": {"Cardiomegaly": 1, "Pleural Effusion": 1}, "attributes": {}},
  }
  json.dump(labels, open(os.path.join(root, "labels.json"), "w"))
  log = SkipLog("r2gen", max_bad_fraction=1.0)
  studies = read_dataset("r2gen", root, skips=log)
  assert [(s.id, s.findings, s.impression) for s in studies] == [
    ("syn0", "The lungs are clear. No effusion.", "No acute process."),
    ("syn1", "Small left effusion", "Effusion."),
    ("syn3", "The new finding: effusion. Impression: x", ""),  # no leading marker: kept whole
  ]
  assert studies[0].report == report
  assert studies[1].labels == {"Cardiomegaly": 0, "Pleural Effusion": 1}
  assert log.reasons() == {"missing_labels": 1}  # syn2 has no labels entry


def test_r2gen_mimic_group_by_study(tmp_path):
  root = str(tmp_path)
  entries = []
  for dicom, study in (("d1", 5001), ("d2", 5001), ("d3", 5002)):
    rel = f"p10/p10000001/s{study}/{dicom}.jpg"
    _png(os.path.join(root, "images", rel))
    entries.append(
      {
        "id": dicom,
        "study_id": study,
        "subject_id": 10000001,
        "report": f"report {study}",
        "image_path": [rel],
        "split": "train",
      }
    )
  json.dump(
    {"train": entries, "val": [], "test": []}, open(os.path.join(root, "annotation.json"), "w")
  )
  assert [s.id for s in read_dataset("r2gen", root)] == ["d1", "d2", "d3"]
  grouped = read_dataset("r2gen", root, group_by_study=True)
  assert [(s.id, len(s.image_paths)) for s in grouped] == [("5001", 2), ("5002", 1)]
  assert grouped[0].meta["dicom_ids"] == ["d1", "d2"]


def test_r2gen_file_level_errors(tmp_path):
  with pytest.raises(ValueError, match="does not exist"):
    read_dataset("r2gen", str(tmp_path))
  (tmp_path / "annotation.json").write_text("{not json")
  with pytest.raises(ValueError, match="not valid JSON"):
    read_dataset("r2gen", str(tmp_path))
  (tmp_path / "annotation.json").write_bytes(b'{"train": [{"report": "\xff\xfe"}]}')
  with pytest.raises(ValueError, match="not UTF-8"):
    read_dataset("r2gen", str(tmp_path))
  with pytest.raises(ValueError, match="unknown dataset format"):
    read_dataset("iu", str(tmp_path))
  with pytest.raises(ValueError, match="splits"):
    read_dataset("r2gen", str(tmp_path), splits=["validate"])


# ----------------------------------------------------------------------------- MIMIC-CXR


MIMIC_REPORT = "\n".join(
  [
    "                                 FINAL REPORT",
    " EXAMINATION:  CHEST (PA AND LAT)",
    "",
    " INDICATION:  ___F with cough",
    "",
    " COMPARISON:  ___",
    "",
    " FINDINGS:",
    " ",  # MIMIC-CXR paragraph breaks are a line holding one space
    " The lungs are clear without focal consolidation.  No pleural effusion or",
    " pneumothorax.  The cardiomediastinal silhouette is normal.",
    " ",
    " IMPRESSION:",
    " ",
    " No acute cardiopulmonary process.",
    "",
  ]
)


def test_section_parser_rules():
  f, i = findings_impression(MIMIC_REPORT)
  assert (
    f
    == "The lungs are clear without focal consolidation. No pleural effusion or pneumothorax. The cardiomediastinal silhouette is normal."
  )
  assert i == "No acute cardiopulmonary process."
  _, names = section_text(MIMIC_REPORT)
  assert names == ["preamble", "examination", "indication", "comparison", "findings", "impression"]
  # Synonyms / misspellings, an empty findings header, the last impression wins.
  text = "\n FINDINGS:\n \n IMPRESSON:  first.\n PA AND LATERAL VIEWS OF THE CHEST:  lungs clear.\n CONCLUSION:  final one.\n"
  sections, names = section_text(text)
  assert names == ["preamble", "impression", "findings", "impression"]
  assert findings_impression(text) == ("lungs clear.", "final one.")
  # No findings/impression: the last paragraph becomes the impression.
  text = "\n INDICATION:  cough.\n \n Heart size normal.\n \n Lungs clear."
  assert findings_impression(text) == ("", "Heart size normal. Lungs clear.")
  assert findings_impression(text, fallback=False) == ("", "")
  assert findings_impression("no headers at all") == ("", "")


def _mimic_fixture(root):
  rows, meta = [], []
  layout = {  # study -> [(dicom, view)], split
    "50000001": ([("d1", "PA"), ("d2", "LATERAL")], "train"),
    "50000002": ([("d3", "LL")], "validate"),
    "50000003": ([("d4", "AP")], "test"),  # its report is missing
    "50000004": ([("d5", "AP")], "train"),  # its report is not UTF-8
  }
  for study, (images, split) in layout.items():
    folder = os.path.join(root, "files", "p10", "p10000001", f"s{study}")
    for dicom, view in images:
      _png(os.path.join(folder, f"{dicom}.jpg"))
      rows.append([dicom, study, "10000001", split])
      meta.append([dicom, "10000001", study, "CHEST", view, 6, 8])
  rep = os.path.join(root, "files", "p10", "p10000001")
  open(os.path.join(rep, "s50000001.txt"), "w").write(MIMIC_REPORT)
  open(os.path.join(rep, "s50000002.txt"), "w").write("\n IMPRESSION:  Lateral only.\n")
  open(os.path.join(rep, "s50000004.txt"), "wb").write(b"\n IMPRESSION:  caf\xe9\n")
  _write_csv(
    os.path.join(root, "mimic-cxr-2.0.0-split.csv.gz"),
    ["dicom_id", "study_id", "subject_id", "split"],
    rows,
  )
  _write_csv(
    os.path.join(root, "mimic-cxr-2.0.0-metadata.csv"),
    [
      "dicom_id",
      "subject_id",
      "study_id",
      "PerformedProcedureStepDescription",
      "ViewPosition",
      "Rows",
      "Columns",
    ],
    meta,
  )
  _write_csv(
    os.path.join(root, "mimic-cxr-2.0.0-chexpert.csv.gz"),
    ["subject_id", "study_id", "Cardiomegaly", "Edema"],
    [["10000001", "50000001", "1.0", ""], ["10000001", "50000002", "-1.0", "0.0"]],
  )


def test_mimic_cxr_jpg(tmp_path):
  root = str(tmp_path)
  _mimic_fixture(root)
  log = SkipLog("mimic", max_bad_fraction=1.0)
  studies = read_dataset("mimic-cxr-jpg", root, skips=log)
  assert [(s.id, s.split, s.view_positions) for s in studies] == [
    ("50000001", "train", ("PA", "LATERAL")),
    ("50000002", "val", ("LL",)),
  ]
  assert studies[0].image_paths[0] == os.path.join(root, "files/p10/p10000001/s50000001/d1.jpg")
  assert studies[0].impression == "No acute cardiopulmonary process."
  assert studies[0].findings.startswith("The lungs are clear")
  assert studies[0].labels == {"Cardiomegaly": 1.0}
  assert studies[1].labels == {"Cardiomegaly": -1.0, "Edema": 0.0}
  assert log.reasons() == {"missing_report": 1, "not_utf8": 1}
  frontal = read_dataset("mimic-cxr-jpg", root, views="frontal", max_bad_fraction=1.0)
  assert [(s.id, s.view_positions) for s in frontal] == [("50000001", ("PA",))]
  log = SkipLog("mimic", max_bad_fraction=1.0)
  read_dataset("mimic-cxr-jpg", root, views=["PA", "AP"], skips=log)
  assert log.reasons()["no_image_after_view_filter"] == 1
  both = read_dataset("mimic-cxr-jpg", root, require="both", max_bad_fraction=1.0)
  assert [s.id for s in both] == ["50000001"]


# ----------------------------------------------------------------------------- CheXpert Plus


def test_chexpert_plus(tmp_path):
  root = str(tmp_path)
  header = [
    "path_to_image",
    "path_to_dcm",
    "frontal_lateral",
    "ap_pa",
    "deid_patient_id",
    "report",
    "section_findings",
    "section_impression",
    "split",
  ]
  rows = [
    [
      "train/patient1/study1/view1_frontal.jpg",
      "",
      "Frontal",
      "PA",
      "patient1",
      "r",
      "HEART NORMAL.\nLUNGS CLEAR.",
      "1. NO ACUTE\nDISEASE.",
      "train",
    ],
    [
      "train/patient1/study1/view2_lateral.jpg",
      "",
      "Lateral",
      "",
      "patient1",
      "r",
      "HEART NORMAL.\nLUNGS CLEAR.",
      "1. NO ACUTE\nDISEASE.",
      "train",
    ],
    [
      "valid/patient2/study1/view1_frontal.jpg",
      "",
      "Frontal",
      "AP",
      "patient2",
      "r",
      "",
      "Impression only.",
      "valid",
    ],
    [
      "train/patient3/study2/view1_frontal.jpg",
      "",
      "Frontal",
      "AP",
      "patient3",
      "r",
      "",
      "",
      "train",
    ],
    ["no/study/here.jpg", "", "Frontal", "AP", "patient4", "r", "f", "i", "train"],
  ]
  _write_csv(os.path.join(root, "df_chexpert_plus_240401.csv"), header, rows)
  for r in rows[:4]:
    _png(os.path.join(root, "PNG", r[0].replace(".jpg", ".png")))
  log = SkipLog("chexpert", max_bad_fraction=1.0)
  studies = read_dataset("chexpert-plus", root, skips=log)
  assert [(s.id, s.split, s.view_positions) for s in studies] == [
    ("patient1_study1", "train", ("PA", "Lateral")),
    ("patient2_study1", "val", ("AP",)),
  ]
  assert studies[0].image_paths[0] == os.path.join(
    root, "PNG/train/patient1/study1/view1_frontal.png"
  )
  assert (studies[0].findings, studies[0].impression) == (
    "HEART NORMAL. LUNGS CLEAR.",
    "1. NO ACUTE DISEASE.",
  )
  assert log.reasons() == {"empty_report": 1, "missing_field": 1}
  assert [
    s.id for s in read_dataset("chexpert-plus", root, require="both", max_bad_fraction=1.0)
  ] == ["patient1_study1"]


def test_csv_row_with_bad_bytes_is_one_skip(tmp_path):
  root = str(tmp_path)
  lines = [
    b"path_to_image,frontal_lateral,ap_pa,section_findings,section_impression,split",
    b"train/patient1/study1/view1_frontal.png,Frontal,PA,Clear.,Normal.,train",
    b"train/patient2/study1/view1_frontal.png,Frontal,PA,Caf\xe9 opacity.,Normal.,train",
  ]
  (tmp_path / "df_chexpert_plus_240401.csv").write_bytes(b"\n".join(lines) + b"\n")
  _png(os.path.join(root, "PNG/train/patient1/study1/view1_frontal.png"))
  _png(os.path.join(root, "PNG/train/patient2/study1/view1_frontal.png"))
  log = SkipLog("chexpert", max_bad_fraction=1.0)
  assert [s.id for s in read_dataset("chexpert-plus", root, skips=log)] == ["patient1_study1"]
  assert log.reasons() == {"not_utf8": 1}


# ----------------------------------------------------------------------------- ReXrank


def test_rexrank_nan_and_key_image(tmp_path):
  root = str(tmp_path)
  for rel in ("CXR1/0.png", "CXR1/1.png", "valid/patient1/study1/view1_frontal.png"):
    _png(os.path.join(root, rel))
  text = """{"CXR1": {"key_image_path": "CXR1/0.png", "image_path": ["CXR1/1.png", "CXR1/0.png"],
   "frontal_lateral": ["Lateral", "Frontal"], "report": "Findings: a. Impression: b.",
   "section_findings": "Lungs clear.", "section_impression": "Normal.", "split": "val"},
 "patient1_study1": {"image_path": ["valid/patient1/study1/view1_frontal.png"], "section_findings": NaN,
   "section_impression": "\\n1. NO ACUTE PROCESS.\\n", "ap_pa": ["AP"], "age": 77.0, "frontal_lateral": ["Frontal"],
   "report": "Findings: None. Impression: 1. NO ACUTE PROCESS."},
 "nan_both": {"image_path": ["CXR1/0.png"], "section_findings": NaN, "section_impression": NaN,
   "report": "Findings: None. Impression: Stable."},
 "noimg": {"image_path": NaN, "section_impression": "x"}}"""
  (tmp_path / "rexrank_test.json").write_text(text)
  log = SkipLog("rexrank", max_bad_fraction=1.0)
  studies = read_dataset("rexrank", root, skips=log)
  assert [(s.id, s.split, s.view_positions, s.findings, s.impression) for s in studies] == [
    ("CXR1", "val", ("Frontal", "Lateral"), "Lungs clear.", "Normal."),
    ("patient1_study1", "test", ("AP",), "", "1. NO ACUTE PROCESS."),
    ("nan_both", "test", ("",), "", "Stable."),
  ]
  assert studies[0].image_paths[0].endswith("CXR1/0.png")  # frontal first
  assert log.reasons() == {"missing_field": 1}
  key = read_dataset("rexrank", root, key_image_only=True, max_bad_fraction=1.0)
  assert key[0].image_paths == (os.path.join(root, "CXR1/0.png"),)


# ----------------------------------------------------------------------------- ReXGradient


def test_rexgradient_default_and_custom_fields(tmp_path):
  root = str(tmp_path)
  rels = [
    f"deid_png/P{i}/S{i}/studies/1.2.{i}/series/1.3.{i}/instances/1.4.{i}.png" for i in range(3)
  ]
  for rel in rels:
    _png(os.path.join(root, rel))
  os.makedirs(os.path.join(root, "metadata"))
  train = [
    {
      "id": "s0",
      "ImagePath": [rels[0]],
      "ImageViewPosition": ["PA"],
      "Findings": "Clear.",
      "Impression": "Normal.",
    },
    {"id": "s1", "ImagePath": [rels[1]], "Findings": None, "Impression": "Normal."},
    {"id": "s0", "ImagePath": [rels[0]], "Findings": "dup", "Impression": "dup"},
    {"ImagePath": [rels[0]], "Findings": "no id"},
  ]
  json.dump(train, open(os.path.join(root, "metadata", "train_metadata.json"), "w"))
  json.dump(
    {"s2": {"ImagePath": [rels[2]], "Findings": "F.", "Impression": "I."}},
    open(os.path.join(root, "metadata", "valid_metadata.json"), "w"),
  )
  log = SkipLog("rexgradient", max_bad_fraction=1.0)
  studies = read_dataset("rexgradient", root, skips=log)
  assert [(s.id, s.split, s.view_positions, s.findings) for s in studies] == [
    ("s0", "train", ("PA",), "Clear."),
    ("s1", "train", ("",), ""),
    ("s2", "val", ("",), "F."),
  ]
  assert log.reasons() == {"duplicate_id": 1, "missing_field": 1}

  # A CSV with other field names and list-valued cells written as strings.
  _write_csv(
    os.path.join(root, "test.csv"),
    ["study", "paths", "fnd", "imp", "views"],
    [
      ["t0", json.dumps([rels[0], rels[1]]), "F.", "I.", "['LATERAL', 'PA']"],
      ["t1", rels[2], "F.", "", ""],
    ],
  )
  fields = RexGradientFields(
    id="study", images="paths", findings="fnd", impression="imp", views="views"
  )
  studies = read_dataset(
    "rexgradient", root, metadata=os.path.join(root, "test.csv"), fields=fields
  )
  assert [(s.id, s.split, s.view_positions) for s in studies] == [
    ("t0", "test", ("PA", "LATERAL")),
    ("t1", "test", ("",)),
  ]
