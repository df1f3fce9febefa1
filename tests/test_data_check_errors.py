"""`python -m echo_jax.data.check` on damaged datasets: the file named, no traceback.

A damaged file (a CSV row with the wrong number of fields, a truncated .gz, a JSON
file with bytes that are not UTF-8) or a bad flag is one `error:` line and exit 2.
A damaged entry is skipped with its reason and file, as the readers always do, and
counts towards --max-bad-fraction (exit 1 above it).
"""

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from echo_jax.data.synthetic import write_benchmark


def _run(*args):
  env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run(
    [sys.executable, "-m", "echo_jax.data.check", *args],
    capture_output=True,
    text=True,
    timeout=120,
    env=env,
  )


def _user_error(proc, *needles):
  assert proc.returncode == 2, proc.stdout + proc.stderr
  assert "Traceback" not in proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
  for needle in needles:
    assert needle in lines[0], lines[0]


def _png(path):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.full((64, 64), 128, np.uint8)).save(path)


REPORT = " FINDINGS:\n \n The lungs are clear.\n \n IMPRESSION:\n \n No acute process.\n"


def _mimic(root, split_rows, gz=False):
  """A two-study MIMIC-CXR-JPG copy whose split file has the given rows."""
  for subject, study, dicom in (("10000001", "50000001", "d1"), ("10000002", "50000002", "d2")):
    folder = os.path.join(root, f"files/p{subject[:2]}/p{subject}/s{study}")
    _png(os.path.join(folder, f"{dicom}.jpg"))
    with open(folder + ".txt", "w") as f:
      f.write(REPORT)
  meta = (
    "dicom_id,subject_id,study_id,ViewPosition\nd1,10000001,50000001,PA\nd2,10000002,50000002,AP\n"
  )
  with open(os.path.join(root, "mimic-cxr-2.0.0-metadata.csv"), "w") as f:
    f.write(meta)
  text = "dicom_id,study_id,subject_id,split\n" + "".join(r + "\n" for r in split_rows)
  name = os.path.join(root, "mimic-cxr-2.0.0-split.csv")
  if gz:
    with open(name + ".gz", "wb") as f:
      f.write(gzip.compress(text.encode()))
  else:
    with open(name, "w") as f:
      f.write(text)
  return name + (".gz" if gz else "")


GOOD_ROWS = ["d1,50000001,10000001,train", "d2,50000002,10000002,test"]


def test_mimic_good_copy_passes(tmp_path):
  _mimic(str(tmp_path), GOOD_ROWS)
  proc = _run("--format", "mimic-cxr-jpg", "--root", str(tmp_path))
  assert proc.returncode == 0, proc.stderr
  assert "studies: 2 usable" in proc.stdout


@pytest.mark.parametrize(
  "row, fields", [("d2,50000002,10000002", 3), ("d2,50000002,10000002,test,extra", 5)]
)
def test_mimic_short_or_long_csv_row_names_file_and_line(tmp_path, row, fields):
  path = _mimic(str(tmp_path), [GOOD_ROWS[0], row])
  proc = _run("--format", "mimic-cxr-jpg", "--root", str(tmp_path))
  _user_error(proc, f"split file has a row of {fields} fields in {path}:3", "the header has 4")


def test_truncated_csv_gz_is_named(tmp_path):
  path = _mimic(str(tmp_path), GOOD_ROWS, gz=True)
  data = open(path, "rb").read()
  open(path, "wb").write(data[: len(data) // 2])
  proc = _run("--format", "mimic-cxr-jpg", "--root", str(tmp_path))
  _user_error(proc, "truncated or damaged gzip split file in", path, "download the file again")


def _rexrank(root, image_path):
  _png(os.path.join(root, "CXR1/0.png"))
  _png(os.path.join(root, "CXR2/0.png"))
  data = {
    "CXR1": {
      "image_path": ["CXR1/0.png"],
      "key_image_path": "CXR1/0.png",
      "report": "x",
      "section_findings": "Clear.",
      "section_impression": "Normal.",
    },
    # With a key image, key_image_only looked the key up among the paths: a list among
    # them raised "unhashable type: 'list'".
    "CXR2": {
      "image_path": image_path,
      "key_image_path": "CXR2/0.png",
      "section_findings": "Clear.",
      "section_impression": "N.",
    },
  }
  with open(os.path.join(root, "rexrank_test.json"), "w") as f:
    json.dump(data, f)


def test_rexrank_key_image_only_with_nested_paths_skips_the_study(tmp_path):
  _rexrank(str(tmp_path), [["CXR2/0.png"]])
  proc = _run(
    "--format",
    "rexrank",
    "--root",
    str(tmp_path),
    "--arg",
    "key_image_only=true",
    "--max-bad-fraction",
    "0.5",
  )
  assert proc.returncode == 0, proc.stderr
  assert "Traceback" not in proc.stderr
  assert "skipped CXR2: bad_field: image_path holds a list, not a path string" in proc.stdout
  proc = _run("--format", "rexrank", "--root", str(tmp_path), "--arg", "key_image_only=true")
  assert proc.returncode == 1 and proc.stderr.startswith("FAIL: 50.00%")


def test_reader_options_are_checked(tmp_path):
  _rexrank(str(tmp_path), ["CXR2/0.png"])
  proc = _run("--format", "rexrank", "--root", str(tmp_path), "--arg", "key_image_only=yes")
  _user_error(proc, "--arg key_image_only='yes'", "needs bool")
  proc = _run("--format", "rexrank", "--root", str(tmp_path), "--arg", "key_image=true")
  _user_error(proc, "--arg key_image: rexrank has no option 'key_image'", "key_image_only")
  proc = _run("--format", "rexrank", "--root", str(tmp_path / "nope"))
  _user_error(proc, "--root")
  proc = _run("--format", "rexrank", "--root", str(tmp_path), "--arg", 'views="lateral"')
  _user_error(proc, "views='lateral'")


def _rexgradient(root, name, content: bytes):
  rel = "deid_png/P0/S0/studies/1/series/2/instances/3.png"
  _png(os.path.join(root, rel))
  os.makedirs(os.path.join(root, "metadata"), exist_ok=True)
  with open(os.path.join(root, "metadata", name), "wb") as f:
    f.write(content.replace(b"IMG", rel.encode()))
  return os.path.join(root, "metadata", name)


GOOD_REX = b'{"id": "s0", "ImagePath": ["IMG"], "Findings": "Clear.", "Impression": "Normal."}'
LATIN1_REX = b'{"id": "s1", "ImagePath": ["IMG"], "Findings": "Caf\xe9.", "Impression": "N."}'


def test_rexgradient_latin1_json_file_is_refused_by_name_and_line(tmp_path):
  path = _rexgradient(str(tmp_path), "train.json", b"[\n" + GOOD_REX + b",\n" + LATIN1_REX + b"\n]")
  proc = _run("--format", "rexgradient", "--root", str(tmp_path))
  _user_error(proc, f"ReXGradient metadata is not UTF-8 in {path}:3", "byte 0xe9")


def test_rexgradient_latin1_jsonl_line_is_skipped_by_name_and_line(tmp_path):
  path = _rexgradient(str(tmp_path), "train.jsonl", GOOD_REX + b"\n" + LATIN1_REX + b"\n")
  proc = _run("--format", "rexgradient", "--root", str(tmp_path), "--max-bad-fraction", "0.5")
  assert proc.returncode == 0, proc.stderr
  assert f"not_utf8: {path}: line 2: byte 0xe9 is not UTF-8" in proc.stdout
  assert "studies: 1 usable" in proc.stdout


def test_rexgradient_latin1_csv_row_is_skipped_with_the_file(tmp_path):
  header = b"id,ImagePath,Findings,Impression\n"
  rows = b"s0,IMG,Clear.,Normal.\ns1,IMG,Caf\xe9.,N.\n"
  path = _rexgradient(str(tmp_path), "train.csv", header + rows)
  proc = _run("--format", "rexgradient", "--root", str(tmp_path), "--max-bad-fraction", "0.5")
  assert proc.returncode == 0, proc.stderr
  assert f"skipped s1: not_utf8: {path}: text has bytes that are not UTF-8" in proc.stdout


def test_rexgradient_wrong_field_types_are_skips(tmp_path):
  bad = b'{"id": ["s1"], "ImagePath": ["IMG"], "Findings": "x"}\n{"id": "s2", "ImagePath": ["IMG"], "Findings": 3}'
  _rexgradient(str(tmp_path), "train.jsonl", GOOD_REX + b"\n" + bad + b"\n")
  proc = _run("--format", "rexgradient", "--root", str(tmp_path), "--max-bad-fraction", "1")
  assert proc.returncode == 0, proc.stderr
  assert "bad_field" in proc.stdout and "'id' is a list" in proc.stdout
  assert "'Findings' is a number, not text" in proc.stdout


def test_format_synthetic_reads_the_benchmark(tmp_path):
  write_benchmark(str(tmp_path / "syn"), 6, 0, progress=False, workers=1, gallery=False)
  proc = _run("--format", "synthetic", "--root", str(tmp_path / "syn"))
  assert proc.returncode == 0, proc.stderr
  assert "studies: 6 usable" in proc.stdout and "labels: 6 studies" in proc.stdout


def test_r2gen_field_types_are_checked(tmp_path):
  root = tmp_path / "r2"
  for sid in ("a", "b", "c", "d"):
    _png(str(root / "images" / sid / "0.png"))
  entries = [
    {"id": "a", "report": "Findings: Clear. Impression: Normal.", "image_path": ["a/0.png"]},
    {"id": "b", "report": ["not", "text"], "image_path": ["b/0.png"]},
    {"id": "c", "report": "Clear.", "image_path": [["c/0.png"]]},
    {"id": "d", "report": "Clear.", "image_path": ["d/0.png"], "study_id": {"x": 1}},
  ]
  (root / "annotation.json").write_text(json.dumps({"train": entries, "val": [], "test": []}))
  proc = _run("--format", "r2gen", "--root", str(root), "--max-bad-fraction", "1")
  assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
  assert "skipped b: bad_field: report is a list, not text" in proc.stdout
  assert "skipped c: missing_field: image path ['c/0.png'] is not a non-empty string" in proc.stdout
  assert "skipped d: bad_field: study_id is an object, not a string or number" in proc.stdout
  assert "studies: 1 usable" in proc.stdout
