"""The evaluation HTML report and plot: study counts, X-ray thumbnails, any text, 1280 px."""

import base64
import io

import numpy as np
import pydicom  # noqa: F401  (the DICOM writer below needs it installed)
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from echo_jax.eval import plots
from echo_jax.eval.html_report import render_html
from echo_jax.eval.pipeline import EvalOptions, evaluate_predictions


def _records(models, studies, image_paths=None):
  out = []
  for m in models:
    for i, sid in enumerate(studies):
      rec = {
        "id": sid,
        "model": m,
        "prediction": f"Small left pleural effusion {m}.",
        "reference": "No pleural effusion.",
        "stats": {"tpf": 1.0 + models.index(m)},
      }
      if image_paths:
        rec["images"] = image_paths[i]
      out.append(rec)
  return out


OPTS = EvalOptions(conventions=("echo",), meteor=False, n_boot=5)


def test_header_counts_studies_not_studies_times_models():
  recs = _records(["a", "b", "c"], ["s1", "s2"])
  page = render_html(evaluate_predictions(recs, options=OPTS), recs)
  assert "2 studies, 3 model(s), 6 reports." in page


def _dicom(path, pixels):
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
  ds.PhotometricInterpretation = "MONOCHROME1"  # inverted: a naive reader shows it wrong
  ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
  ds.PixelData = pixels.astype(np.uint16).tobytes()
  ds.save_as(path, enforce_file_format=True)


def _thumbs(page):
  uris = [p.split('"')[0] for p in page.split('src="data:image/jpeg;base64,')[1:]]
  return [np.asarray(Image.open(io.BytesIO(base64.b64decode(u)))) for u in uris]


def test_cards_show_xrays_from_the_records_paths_png_and_dicom(tmp_path):
  png = tmp_path / "a.png"
  Image.fromarray(np.full((80, 60), 200, np.uint8)).save(png)
  dcm = tmp_path / "b.dcm"
  ramp = np.tile(np.linspace(0, 4095, 64), (64, 1))  # dark left, bright right in the raw values
  _dicom(dcm, ramp)
  recs = _records(["m"], ["s1", "s2", "s3"], [[str(png)], [str(dcm)], [str(tmp_path / "gone.png")]])
  page = render_html(evaluate_predictions(recs, options=OPTS), recs)  # no images_root
  thumbs = _thumbs(page)
  assert len(thumbs) == 2
  by_shape = {t.shape: t for t in thumbs}
  assert abs(int(by_shape[(80, 60)].mean()) - 200) <= 2
  dicom_thumb = by_shape[(64, 64)].astype(int)
  # MONOCHROME1 is inverted by the image loader: the left (low raw values) is bright.
  assert dicom_thumb[:, :8].mean() > 200 and dicom_thumb[:, -8:].mean() < 55
  assert "[gone.png: missing_image]" in page


def test_any_text_can_be_written(tmp_path):
  recs = _records(["m\ud83d"], ["s\udc00"])
  recs[0]["prediction"] = "Text \ud83d\x00 <b>bold</b>"
  page = render_html(evaluate_predictions(recs, options=OPTS), recs)
  page.encode("utf-8")  # strict: no lone surrogate left
  assert "Text \ufffd\ufffd &lt;b&gt;bold&lt;/b&gt;" in page
  assert "s\ufffd" in page


def _models(n):
  rng = np.random.default_rng(0)
  return {
    f"model-with-a-long-name-{i}": {
      "speed": {"tpf": 1.0 + (i % 2) * 0.01},  # nearly the same TPF: names would collide
      "metrics": {k: float(rng.uniform(0.2, 0.3)) for k, _ in plots.QUALITY_METRICS},
      "ci": {},
    }
    for i in range(n)
  }


@pytest.mark.parametrize("n_models", [1, 7])
def test_plot_fits_1280_px_and_labels_do_not_overlap(n_models):
  models = _models(n_models)
  png = plots.quality_vs_tpf_png(models)
  width, height = Image.open(io.BytesIO(png)).size
  assert width <= plots.MAX_WIDTH_PX and height < 1280
  fig = plots.quality_vs_tpf_figure(models)
  fig.canvas.draw()
  renderer = fig.canvas.get_renderer()
  texts = [t for t in fig.legends[0].get_texts()] + [
    ax.title for ax in fig.axes if ax.get_visible()
  ]
  assert len(fig.legends[0].get_texts()) == n_models
  boxes = [t.get_window_extent(renderer) for t in texts]
  for i, a in enumerate(boxes):
    assert 0 <= a.x0 and a.x1 <= width + 1  # inside the figure
    for b in boxes[i + 1 :]:
      assert not a.overlaps(b)
