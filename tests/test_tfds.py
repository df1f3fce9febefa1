"""The tfds builder: R2Gen and MIMIC-CXR-JPG fixtures built to ArrayRecord and read back."""

import contextlib
import csv
import gzip
import io
import json
import os
import pickle
import subprocess
import sys

import grain
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from echo_jax.data import tfds_builder as tb
from echo_jax.data.images import load_image
from echo_jax.data.readers import read_dataset
from echo_jax.data.study import Study, TooManyBadError

# ----------------------------------------------------------------------------- fixtures


def _save(path, array, mode=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array, mode).save(path)  # the format follows the extension (.png / .jpg)


def _dicom_monochrome1(path, pixels):
  """A 12-bit MONOCHROME1 radiograph with no window: load_image min-max scales and inverts."""
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
  meta.MediaStorageSOPInstanceUID = generate_uid()
  meta.TransferSyntaxUID = ExplicitVRLittleEndian
  ds = Dataset()
  ds.file_meta = meta
  ds.SOPClassUID = meta.MediaStorageSOPClassUID
  ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
  ds.Modality = "DX"
  ds.Rows, ds.Columns = pixels.shape
  ds.SamplesPerPixel = 1
  ds.PhotometricInterpretation = "MONOCHROME1"
  ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
  ds.PixelData = pixels.astype(np.uint16).tobytes()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  ds.save_as(path, enforce_file_format=True)


def _r2gen_fixture(root):
  rng = np.random.RandomState(0)
  img = os.path.join(root, "images")
  _save(f"{img}/CXR1/0.png", np.arange(48, dtype=np.uint8).reshape(6, 8))
  _dicom_monochrome1(f"{img}/CXR1/1.dcm", rng.randint(0, 4096, (5, 9)))
  _save(f"{img}/CXR2/0.png", rng.randint(0, 256, (7, 5, 3)).astype(np.uint8))  # color
  _save(f"{img}/CXR3/0.png", rng.randint(0, 65536, (4, 6)).astype(np.uint16))  # 16-bit
  _save(f"{img}/CXR4/0.png", np.full((3, 3), 200, np.uint8))
  os.makedirs(f"{img}/CXR6")
  with open(f"{img}/CXR6/0.png", "wb") as f:
    f.write(b"not an image at all")  # passes the reader (non-empty), fails load_image
  ann = {
    "train": [
      {
        "id": "CXR1",
        "report": "The heart is  normal in size.\nThe lungs are clear.",
        "image_path": ["CXR1/0.png", "CXR1/1.dcm"],
      },
      {
        "id": "CXR2",
        "report": "Findings: Mild cardiomegaly. Impression: No acute process.",
        "image_path": ["CXR2/0.png"],
      },
      {"id": "CXR5", "report": "x", "image_path": ["CXR5/missing.png"]},
    ],
    "val": [{"id": "CXR3", "report": "XXXX-year-old. Lungs clear.", "image_path": ["CXR3/0.png"]}],
    "test": [
      {"id": "CXR4", "report": "Impression: Normal chest.", "image_path": ["CXR4/0.png"]},
      {"id": "CXR6", "report": "Broken image.", "image_path": ["CXR6/0.png"]},
    ],
  }
  with open(os.path.join(root, "annotation.json"), "w") as f:
    json.dump(ann, f)


MIMIC_REPORT = (
  "                                 FINAL REPORT\n"
  " EXAMINATION:  CHEST (PA AND LAT)\n\n"
  " INDICATION:  ___F with cough\n\n"
  " FINDINGS:\n \n"
  " The lungs are clear without focal consolidation.  No pleural effusion or\n"
  " pneumothorax.\n \n"
  " IMPRESSION:\n \n"
  " No acute cardiopulmonary process.\n"
)


def _write_csv(path, header, rows):
  with (gzip.open if path.endswith(".gz") else open)(path, "wt", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)


def _mimic_fixture(root):
  layout = {  # study -> [(dicom, view)], split, report bytes (None: no report file)
    "50000001": ([("d1", "PA"), ("d2", "LATERAL")], "train", MIMIC_REPORT.encode()),
    "50000002": ([("d3", "AP"), ("d4", "LL")], "validate", b"\n IMPRESSION:  Lateral only.\n"),
    "50000003": ([("d5", "PA")], "test", b"\n FINDINGS:  Heart normal.\n"),
    "50000004": ([("d6", "LL")], "train", b"\n IMPRESSION:  x\n"),  # no view kept
    "50000005": ([("d7", "PA")], "train", None),  # missing report
    "50000006": ([("d8", "PA")], "validate", b"\n IMPRESSION:  caf\xe9\n"),  # not UTF-8
  }
  rng = np.random.RandomState(1)
  rows, meta = [], []
  folder = os.path.join(root, "files", "p10", "p10000001")
  for study, (images, split, report) in layout.items():
    for dicom, view in images:
      _save(f"{folder}/s{study}/{dicom}.jpg", rng.randint(0, 256, (10, 12)).astype(np.uint8))
      rows.append([dicom, study, "10000001", split])
      meta.append([dicom, "10000001", study, view])
    if report is not None:
      with open(f"{folder}/s{study}.txt", "wb") as f:
        f.write(report)
  _write_csv(
    f"{root}/mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"], rows
  )
  _write_csv(
    f"{root}/mimic-cxr-2.0.0-metadata.csv",
    ["dicom_id", "subject_id", "study_id", "ViewPosition"],
    meta,
  )


MIMIC_KWARGS = {"views": ["PA", "AP", "LATERAL"]}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """Both datasets built once: R2Gen through build(), MIMIC-CXR-JPG through the CLI."""
  base = tmp_path_factory.mktemp("tfds")
  r2gen_root, mimic_root, data_dir = base / "iu", base / "mimic", str(base / "out")
  r2gen_root.mkdir()
  mimic_root.mkdir()
  _r2gen_fixture(str(r2gen_root))
  _mimic_fixture(str(mimic_root))
  builder = tb.build("r2gen", str(r2gen_root), data_dir, max_bad_fraction=1.0, num_workers=2)
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    rc = tb.main(
      [
        "--format=mimic-cxr-jpg",
        f"--manual_dir={mimic_root}",
        f"--data_dir={data_dir}",
        "--config_name=mimic_views",
        f"--reader_kwargs={json.dumps(MIMIC_KWARGS)}",
        "--max_bad_fraction=1.0",
        "--num_workers=0",
      ]
    )
  assert rc == 0
  return {
    "r2gen": (str(r2gen_root), builder.data_dir),
    "mimic": (str(mimic_root), os.path.join(data_dir, "echo_cxr", "mimic_views")),
    "data_dir": data_dir,
    "cli_output": out.getvalue(),
  }


def _env():
  """The environment for a subprocess that imports echo_jax from this checkout."""
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(tb.__file__))))
  return {**os.environ, "PYTHONPATH": repo}


def _records(builder_dir, split):
  source = tb.tfds_source(builder_dir, split)
  return {r.id: r for r in (tb.record_to_study_inputs(source[i]) for i in range(len(source)))}


# ----------------------------------------------------------------------------- tests


def test_counts_splits_and_skips(built):
  _, r2gen_dir = built["r2gen"]
  assert {s: len(tb.tfds_source(r2gen_dir, s)) for s in ("train", "val", "test")} == {
    "train": 2,
    "val": 1,
    "test": 1,
  }
  # The skip counts are stored with the dataset.
  info = tb.tfds.builder_from_directory(r2gen_dir).info
  assert info.metadata["read"] == {"num_ok": 5, "num_skipped": 1, "reasons": {"missing_image": 1}}
  assert info.metadata["images"] == {
    "num_ok": 4,
    "num_skipped": 1,
    "reasons": {"unreadable_image": 1},
  }
  assert info.file_format == tb.tfds.core.FileFormat.ARRAY_RECORD
  assert any(f.startswith("echo_cxr-train.array_record") for f in os.listdir(r2gen_dir))

  # MIMIC through the CLI: the variant's reader options apply (d4 LL and study 50000004 dropped).
  _, mimic_dir = built["mimic"]
  assert {s: len(tb.tfds_source(mimic_dir, s)) for s in ("train", "val", "test")} == {
    "train": 1,
    "val": 1,
    "test": 1,
  }
  lines = built["cli_output"].splitlines()
  first = next(i for i, line in enumerate(lines) if line.startswith("built echo_cxr/mimic_views"))
  assert lines[first + 1 : first + 4] == [
    "  train: 1 studies",
    "  val: 1 studies",
    "  test: 1 studies",
  ]
  assert "skipped (read): 3 " in built["cli_output"]
  info = tb.tfds.builder_from_directory(tb.resolve_builder_dir(mimic_dir)).info
  assert info.metadata["read"]["reasons"] == {
    "no_image_after_view_filter": 1,
    "missing_report": 1,
    "not_utf8": 1,
  }
  assert '"views": ["PA", "AP", "LATERAL"]' in info.config_description


def test_text_fields_exact(built):
  _, r2gen_dir = built["r2gen"]
  got = {i: r for s in ("train", "val", "test") for i, r in _records(r2gen_dir, s).items()}
  assert {i: (r.split, r.findings, r.impression, r.view_positions) for i, r in got.items()} == {
    "CXR1": ("train", "The heart is normal in size. The lungs are clear.", "", ("", "")),
    "CXR2": ("train", "Mild cardiomegaly.", "No acute process.", ("",)),
    "CXR3": ("val", "XXXX-year-old. Lungs clear.", "", ("",)),
    "CXR4": ("test", "", "Normal chest.", ("",)),
  }
  assert got["CXR2"].report == "Findings: Mild cardiomegaly. Impression: No acute process."

  _, mimic_dir = built["mimic"]
  got = {i: r for s in ("train", "val", "test") for i, r in _records(mimic_dir, s).items()}
  assert {i: (r.split, r.findings, r.impression, r.view_positions) for i, r in got.items()} == {
    "50000001": (
      "train",
      "The lungs are clear without focal consolidation. No pleural effusion or pneumothorax.",
      "No acute cardiopulmonary process.",
      ("PA", "LATERAL"),
    ),
    "50000002": ("val", "", "Lateral only.", ("AP",)),
    "50000003": ("test", "Heart normal.", "", ("PA",)),
  }
  # Same as reading the folder directly, and the same report text as Study.report.
  mimic_root, _ = built["mimic"]
  for study in read_dataset("mimic-cxr-jpg", mimic_root, max_bad_fraction=1.0, **MIMIC_KWARGS):
    r = got[study.id]
    assert (r.findings, r.impression, r.view_positions) == (
      study.findings,
      study.impression,
      study.view_positions,
    )
    assert r.report == study.report


@pytest.mark.parametrize("which", ["r2gen", "mimic"])
def test_images_are_load_image_pixels(built, which):
  root, builder_dir = built[which]
  reader = {"r2gen": ("r2gen", {}), "mimic": ("mimic-cxr-jpg", MIMIC_KWARGS)}[which]
  originals = {
    s.id: s.image_paths for s in read_dataset(reader[0], root, max_bad_fraction=1.0, **reader[1])
  }
  seen = 0
  for split in ("train", "val", "test"):
    for study_id, inputs in _records(builder_dir, split).items():
      assert len(inputs.images) == len(originals[study_id])
      for image, path in zip(inputs.images, originals[study_id]):
        assert image.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(image), np.asarray(load_image(path)))
        seen += 1
  assert seen == {"r2gen": 5, "mimic": 4}[which]


def test_png_storage_and_undecoded_bytes(built):
  _, r2gen_dir = built["r2gen"]
  source = tb.tfds_source(r2gen_dir, "train")
  raw = {tb.record_to_study_inputs(source[i], decode=False).id: source[i] for i in range(2)}
  cxr1 = tb.record_to_study_inputs(raw["CXR1"], decode=False)
  assert all(isinstance(b, bytes) and b.startswith(b"\x89PNG") for b in cxr1.images)
  # Gray images (the DICOM included) are stored as one 8-bit channel, color ones as RGB.
  modes = [Image.open(io.BytesIO(b)).mode for b in cxr1.images]
  assert modes == ["L", "L"]
  cxr2 = tb.record_to_study_inputs(raw["CXR2"], decode=False)
  assert Image.open(io.BytesIO(cxr2.images[0])).mode == "RGB"
  # The MONOCHROME1 DICOM came out inverted (bright bone), as load_image makes it.
  dcm = pydicom.dcmread(os.path.join(built["r2gen"][0], "images/CXR1/1.dcm")).pixel_array
  stored = np.asarray(Image.open(io.BytesIO(cxr1.images[1])))
  assert stored[np.unravel_index(dcm.argmax(), dcm.shape)] == 0
  assert stored[np.unravel_index(dcm.argmin(), dcm.shape)] == 255


def test_grain_reads_the_source(built):
  source = tb.tfds_source(built["r2gen"][1], "train")
  ds = grain.MapDataset.source(source).map(lambda r: tb.record_to_study_inputs(r).id)
  assert sorted(ds[i] for i in range(len(ds))) == ["CXR1", "CXR2"]
  # Grain worker processes receive the source pickled.
  copy = pickle.loads(pickle.dumps(source))
  assert sorted(tb.record_to_study_inputs(copy[i]).id for i in range(len(copy))) == ["CXR1", "CXR2"]


def test_command_line_as_module(built):
  """`python -m` runs this file as __main__ too; the registered copy must do the work."""
  root, _ = built["r2gen"]
  cmd = [sys.executable, "-m", "echo_jax.data.tfds_builder", "--format=r2gen"]
  cmd += [f"--manual_dir={root}", f"--data_dir={built['data_dir']}"]  # already built: reused
  res = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=120)
  assert res.returncode == 0, res.stderr[-2000:]
  assert "  train: 2 studies\n  val: 1 studies\n  test: 1 studies\n" in res.stdout
  assert "  skipped (images): 1 {'unreadable_image': 1}" in res.stdout


def test_name_lookup_and_errors(built, tmp_path):
  by_name = tb.tfds_source("echo_cxr/r2gen", "val", data_dir=built["data_dir"])
  assert tb.record_to_study_inputs(by_name[0]).id == "CXR3"
  with pytest.raises(ValueError, match=r"no split 'validate'.*\['test', 'train', 'val'\]"):
    tb.tfds_source(built["r2gen"][1], "validate")
  with pytest.raises(ValueError, match="holds no built dataset"):
    tb.tfds_source(str(tmp_path), "train")
  with pytest.raises(ValueError, match="record lacks"):
    tb.record_to_study_inputs({"id": b"x"})
  with pytest.raises(ValueError, match="unknown dataset format"):
    tb.make_config("iu_xray")
  with pytest.raises(ValueError, match="built-in config"):
    tb.build("mimic-cxr-jpg", built["mimic"][0], str(tmp_path), name="r2gen")
  with pytest.raises(ValueError, match="name this variant"):
    tb.build("r2gen", built["r2gen"][0], str(tmp_path), reader_kwargs={"max_images": 1})
  with pytest.raises(SystemExit):
    tb.main(["--format=r2gen", "--manual_dir=x", "--data_dir=y", '--reader_kwargs={"a": 1}'])
  assert (
    tb.StudyInputs("a", (), (), "f", "", "train").report
    == Study("a", (), (), "f", "", "train").report
  )


def test_too_many_bad_images_leave_no_dataset(tmp_path):
  root = tmp_path / "bad"
  (root / "images").mkdir(parents=True)
  (root / "images" / "0.png").write_bytes(b"garbage")
  _save(str(root / "images" / "1.png"), np.zeros((2, 2), np.uint8))
  ann = {
    "train": [
      {"id": "a", "report": "x", "image_path": ["0.png"]},
      {"id": "b", "report": "y", "image_path": ["1.png"]},
    ]
  }
  (root / "annotation.json").write_text(json.dumps(ann))
  with pytest.raises(TooManyBadError, match="unreadable_image"):
    tb.build("r2gen", str(root), str(tmp_path / "out"), max_bad_fraction=0.1)
  assert not os.path.exists(tmp_path / "out" / "echo_cxr" / "r2gen" / "1.0.0")


def test_reading_does_not_import_tensorflow(built):
  code = (
    "import sys\n"
    "from echo_jax.data import tfds_builder as tb\n"
    f"src = tb.tfds_source({built['r2gen'][1]!r}, 'train')\n"
    "ids = sorted(tb.record_to_study_inputs(src[i]).id for i in range(len(src)))\n"
    "assert ids == ['CXR1', 'CXR2'], ids\n"
    "assert 'tensorflow' not in sys.modules, 'reading imported tensorflow'\n"
    "print('ok')\n"
  )
  res = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120
  )
  assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]
