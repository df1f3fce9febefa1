"""The echo-json reader on files shaped like the authors' normalized test sets."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from echo_jax.data import readers
from echo_jax.data.check import check_dataset
from echo_jax.data.readers.echo_json import read_echo_json
from echo_jax.data.study import SkipLog, TooManyBadError

MIMIC = "../CXRTest/mimic/files/p10/p10046166/s57379357"


def _png(path, size=(8, 6)):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.full((size[1], size[0]), 120, np.uint8)).save(path)


def _write(root, name, entries):
  os.makedirs(os.path.join(root, "jsons"), exist_ok=True)
  path = os.path.join(root, "jsons", name)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(entries, f, ensure_ascii=False)
  return path


def _layout(root):
  """The released demo layout: ROOT/jsons/*.json with images under ROOT/CXRTest."""
  for i in range(3):
    _png(os.path.join(root, "CXRTest/mimic/files/p10/p10046166/s57379357", f"{i}.png"))
  entries = [
    {
      "sample_id": "8ee4f186",
      "images": [f"{MIMIC}/0.png", f"{MIMIC}/1.png"],
      "ground_truth": {
        "findings": "The thorax is  symmetric.\nNo focal consolidation.",
        "impression": "No acute abnormality.",
      },
    },
    {  # impression only: kept (require="any")
      "sample_id": "a2",
      "images": [f"{MIMIC}/2.png"],
      "ground_truth": {"findings": "", "impression": "Stable."},
    },
    {"sample_id": "no_image", "images": [f"{MIMIC}/9.png"], "ground_truth": {"findings": "x"}},
    {"sample_id": "no_truth", "images": [f"{MIMIC}/0.png"]},
    {"sample_id": "empty_truth", "images": [f"{MIMIC}/0.png"], "ground_truth": {}},
    {"sample_id": "escape", "images": ["../../../etc/passwd"], "ground_truth": {"findings": "x"}},
    "not an object",
  ]
  return _write(root, "mimic_test_EN_for_infer_normalize_demo.json", entries)


def test_released_layout_good_and_bad_entries(tmp_path):
  root = str(tmp_path)
  path = _layout(root)
  log = SkipLog("t", max_bad_fraction=1.0)
  studies = read_echo_json(path, skips=log)
  assert [s.id for s in studies] == ["8ee4f186", "a2"]
  first = studies[0]
  assert first.image_paths == tuple(
    os.path.join(root, "CXRTest/mimic/files/p10/p10046166/s57379357", f"{i}.png") for i in (0, 1)
  )
  assert first.findings == "The thorax is symmetric. No focal consolidation."
  assert first.report == (
    "Findings: The thorax is symmetric. No focal consolidation. Impression: No acute abnormality."
  )
  assert first.split == "test" and first.meta["lang"] == "en"
  assert studies[1].report == "Findings: Impression: Stable."
  reasons = {item: reason for item, reason, _ in log.skipped}
  assert reasons == {
    "no_image": "missing_image",
    "no_truth": "missing_ground_truth",
    "empty_truth": "missing_ground_truth",
    "escape": "path_escape",
    "entry 6": "missing_field",
  }
  # More than 5% bad entries stops a default read with a clear message.
  with pytest.raises(TooManyBadError, match="missing_ground_truth: 2"):
    readers.read_dataset("echo-json", path)


def test_root_folder_chinese_file_and_splits(tmp_path):
  root = str(tmp_path)
  _png(os.path.join(root, "CXRTest/a/0.png"))
  entries = [
    {
      "sample_id": "30ece269",
      "images": ["../CXRTest/a/0.png"],
      "ground_truth": {
        "findings": "两侧胸廓基本对称。",
        "impression": "无提示肺栓塞的放射学发现。",
      },
    }
  ]
  _write(root, "reports.json", entries)  # the name does not say the language: the text does
  studies = readers.read_dataset("echo-json", root)  # ROOT/jsons/ holds exactly one file
  assert studies[0].findings == "两侧胸廓基本对称。" and studies[0].meta["lang"] == "zh"
  assert readers.read_dataset("echo-json", root, splits=["train"]) == []
  assert readers.read_dataset("echo-json", root, split="train")[0].split == "train"
  # An images root that does not hold the images refuses the paths.
  log = SkipLog("t", max_bad_fraction=1.0)
  assert read_echo_json(root, images_root=os.path.join(root, "jsons"), skips=log) == []
  assert log.reasons() == {"path_escape": 1}


def test_file_level_errors(tmp_path):
  root = str(tmp_path)
  with pytest.raises(ValueError, match="no .json test file"):
    read_echo_json(root)
  _write(root, "a.json", {"sample_id": "x"})
  with pytest.raises(ValueError, match="must be a JSON list"):
    read_echo_json(root)
  _write(root, "b.json", [])
  with pytest.raises(ValueError, match="holds 2 .json files"):
    read_echo_json(root)


def test_data_doctor_reads_echo_json(tmp_path):
  path = _layout(str(tmp_path))
  report = check_dataset("echo-json", path)
  assert [s.id for s in report.studies] == ["8ee4f186", "a2"]
  assert report.skips.reasons()["missing_ground_truth"] == 2
