"""Image loading (modes, DICOM, bad files) and parity of preprocessing with transformers."""

import io
import struct
import time
import zlib

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from echo_jax.data.images import (
  BadImageError,
  ImageConfig,
  load_image,
  load_study_images,
  num_image_tokens,
  patchify,
  preprocess,
  smart_resize,
)
from echo_jax.models.presets import get_preset

SMALL = ImageConfig(min_pixels=56 * 56, max_pixels=28 * 28 * 64)


# ----------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("size", [(217, 300), (90, 64), (700, 1000), (28, 28 * 9)])
def test_preprocess_matches_transformers(size):
  from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

  w, h = size
  rng = np.random.default_rng(w * h)
  image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
  patches, grid = preprocess(image, SMALL)
  hf = Qwen2VLImageProcessorPil(min_pixels=SMALL.min_pixels, max_pixels=SMALL.max_pixels)
  ref = hf(images=[image], return_tensors="np")
  np.testing.assert_array_equal(grid[None], ref["image_grid_thw"])
  assert patches.dtype == np.float32 and patches.shape == ref["pixel_values"].shape
  # Same PIL bicubic resize and the same float64->float32 arithmetic: bit-identical.
  np.testing.assert_array_equal(patches, ref["pixel_values"])


def test_smart_resize_matches_transformers():
  from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
    smart_resize as hf_smart_resize,
  )

  rng = np.random.default_rng(0)
  for h, w in rng.integers(10, 4000, (200, 2)):
    if max(h, w) / min(h, w) > 200:
      continue
    ours = smart_resize(int(h), int(w), 28, 256 * 28 * 28, 1500 * 1500)
    assert ours == hf_smart_resize(int(h), int(w), 28, 256 * 28 * 28, 1500 * 1500)
    assert (
      ours[0] % 28 == 0 and ours[1] % 28 == 0 and 256 * 28 * 28 <= ours[0] * ours[1] <= 1500 * 1500
    )
  with pytest.raises(BadImageError, match="extreme_aspect_ratio"):
    smart_resize(10, 3000, 28, 56 * 56, 10**6)


def test_patchify_order():
  """Row r = (t, bh, bw, mh, mw) in row-major order; column = (c, tt, i, j)."""
  config = ImageConfig(
    patch_size=2, temporal_patch_size=2, merge_size=2, min_pixels=16, max_pixels=4096
  )
  t, c, h, w = 2, 3, 8, 4
  frames = np.arange(t * c * h * w, dtype=np.float32).reshape(t, c, h, w)
  patches, grid = patchify(frames, config)
  np.testing.assert_array_equal(grid, [1, 4, 2])
  p, m = 2, 2
  row = 0
  for bh in range(h // p // m):
    for bw in range(w // p // m):
      for mh in range(m):
        for mw in range(m):
          y, x = (bh * m + mh) * p, (bw * m + mw) * p
          expected = frames[:, :, y : y + p, x : x + p].transpose(1, 0, 2, 3).reshape(-1)
          np.testing.assert_array_equal(patches[row], expected)
          row += 1
  assert row == patches.shape[0]


def test_config_from_preset_and_token_count(tmp_path):
  config = ImageConfig.from_vision_config(
    get_preset("tiny").vision, min_pixels=56 * 56, max_pixels=112 * 112
  )
  assert (config.patch_size, config.merge_size, config.temporal_patch_size) == (14, 2, 2)
  for i, size in enumerate([(100, 80), (60, 200)]):
    Image.fromarray(np.full(size[::-1], 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
  patches, grids = load_study_images([str(tmp_path / "0.png"), str(tmp_path / "1.png")], config)
  assert grids.shape == (2, 3) and patches.shape == (int(grids.prod(axis=1).sum()), 3 * 2 * 14 * 14)
  assert [num_image_tokens(g) for g in grids] == [int(g.prod()) // 4 for g in grids]
  with pytest.raises(ValueError, match="min_pixels"):
    ImageConfig(min_pixels=100)


# ----------------------------------------------------------------------------- modes


def test_16bit_png_is_scaled_not_clipped(tmp_path):
  values = np.arange(256, dtype=np.uint16).reshape(16, 16)
  Image.fromarray(values * 257).save(tmp_path / "full.png")  # 0..65535
  image = load_image(str(tmp_path / "full.png"))
  assert image.mode == "RGB"
  np.testing.assert_array_equal(np.asarray(image)[..., 0], values.astype(np.uint8))
  # 12-bit data in a 16-bit PNG: min-max maps it onto the full 8-bit range, order kept.
  twelve = (np.linspace(0, 4095, 256).astype(np.uint16)).reshape(16, 16)
  Image.fromarray(twelve).save(tmp_path / "twelve.png")
  gray = np.asarray(load_image(str(tmp_path / "twelve.png")))[..., 0]
  assert (
    gray.min() == 0 and gray.max() == 255 and np.all(np.diff(gray.reshape(-1).astype(int)) >= 0)
  )
  assert len(np.unique(gray)) > 200  # a plain convert("L") would make nearly all pixels 255


def test_palette_cmyk_and_alpha(tmp_path):
  pal = Image.new("P", (4, 2))
  pal.putpalette([0, 0, 0, 255, 0, 0, 0, 128, 255] + [0] * (256 * 3 - 9))
  pal.putdata([0, 1, 2, 1, 0, 1, 2, 1])
  pal.save(tmp_path / "pal.png")
  rgb = np.asarray(load_image(str(tmp_path / "pal.png")))
  np.testing.assert_array_equal(rgb[0], [[0, 0, 0], [255, 0, 0], [0, 128, 255], [255, 0, 0]])

  Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)
  red = np.asarray(load_image(str(tmp_path / "cmyk.jpg"))).astype(int)
  assert red.shape == (8, 8, 3) and np.all(red[..., 0] > 240) and np.all(red[..., 1:] < 15)

  Image.new("LA", (4, 4), (200, 0)).save(tmp_path / "la.png")
  np.testing.assert_array_equal(
    np.asarray(load_image(str(tmp_path / "la.png"))), np.full((4, 4, 3), 200)
  )


# ----------------------------------------------------------------------------- bad files


def _png_bytes(width, height):
  ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)

  def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

  return (
    b"\x89PNG\r\n\x1a\n"
    + chunk(b"IHDR", ihdr)
    + chunk(b"IDAT", zlib.compress(b"\0" * 10))
    + chunk(b"IEND", b"")
  )


def test_bad_files_are_reported_with_reasons(tmp_path):
  cases = {}
  cases["missing_image"] = tmp_path / "missing.png"
  (tmp_path / "zero.png").write_bytes(b"")
  cases["zero_byte_image"] = tmp_path / "zero.png"
  (tmp_path / "junk.png").write_bytes(b"this is not an image at all")
  cases["unreadable_image"] = tmp_path / "junk.png"
  buf = io.BytesIO()
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(
    buf, "PNG"
  )
  (tmp_path / "trunc.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
  cases["truncated_image"] = tmp_path / "trunc.png"
  (tmp_path / "bomb.png").write_bytes(_png_bytes(100_000, 100_000))  # 10^10 pixels declared
  cases["decompression_bomb"] = tmp_path / "bomb.png"
  for reason, path in cases.items():
    start = time.perf_counter()
    with pytest.raises(BadImageError) as e:
      load_image(str(path))
    assert e.value.reason == reason, (path, e.value)
    assert time.perf_counter() - start < 1.0
  # The limit is configurable and checked before decoding a perfectly valid image.
  Image.new("L", (100, 100)).save(tmp_path / "ok.png")
  with pytest.raises(BadImageError, match="decompression_bomb"):
    load_image(str(tmp_path / "ok.png"), max_image_pixels=5_000)
  assert load_image(str(tmp_path / "ok.png")).size == (100, 100)


# ----------------------------------------------------------------------------- DICOM


def _dicom(
  path,
  pixels,
  photometric="MONOCHROME2",
  window=None,
  syntax=ExplicitVRLittleEndian,
  rows=None,
  **extra,
):
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
  meta.MediaStorageSOPInstanceUID = generate_uid()
  meta.TransferSyntaxUID = syntax
  ds = Dataset()
  ds.file_meta = meta
  ds.SOPClassUID = meta.MediaStorageSOPClassUID
  ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
  ds.Modality = "DX"
  ds.Rows, ds.Columns = rows or pixels.shape[0], pixels.shape[1]
  ds.SamplesPerPixel = 1
  ds.PhotometricInterpretation = photometric
  ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
  if window is not None:
    ds.WindowCenter, ds.WindowWidth = window
  for k, v in extra.items():
    setattr(ds, k, v)
  ds.PixelData = pixels.astype(np.uint16).tobytes()
  ds.save_as(path, enforce_file_format=True)


def test_dicom_window_minmax_and_monochrome1(tmp_path):
  ramp = np.array([[0, 1000, 2000, 3000, 4095, 2048]], np.uint16).repeat(2, axis=0)
  _dicom(tmp_path / "w.dcm", ramp, window=(2000, 2001))  # LINEAR: [1000, 3000] -> [0, 1]
  got = np.asarray(load_image(str(tmp_path / "w.dcm")))[0, :, 0]
  c, w = 2000 - 0.5, 2001 - 1
  expected = np.round(np.clip((ramp[0] - c) / w + 0.5, 0, 1) * 255)
  np.testing.assert_array_equal(got, expected)
  assert got[0] == 0 and got[3] == 255

  _dicom(tmp_path / "m.dcm", ramp)  # no window: min-max
  np.testing.assert_array_equal(
    np.asarray(load_image(str(tmp_path / "m.dcm")))[0, :, 0],
    np.round(ramp[0].astype(float) * 255 / 4095),
  )

  _dicom(
    tmp_path / "inv", ramp, photometric="MONOCHROME1", RescaleSlope=1, RescaleIntercept=0
  )  # no extension
  inv = np.asarray(load_image(str(tmp_path / "inv")))[0, :, 0]
  np.testing.assert_array_equal(inv, 255 - np.round(ramp[0].astype(float) * 255 / 4095))
  assert pydicom.dcmread(tmp_path / "inv").PhotometricInterpretation == "MONOCHROME1"


def test_bad_dicoms(tmp_path):
  (tmp_path / "junk.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x01\x02garbage")
  with pytest.raises(BadImageError, match="bad_dicom"):
    load_image(str(tmp_path / "junk.dcm"))
  _dicom(
    tmp_path / "bomb.dcm", np.zeros((2, 60_000), np.uint16), rows=60_000
  )  # declares 3.6e9 pixels
  with pytest.raises(BadImageError, match="decompression_bomb"):
    load_image(str(tmp_path / "bomb.dcm"))
  _dicom(
    tmp_path / "short.dcm", np.zeros((2, 8), np.uint16), rows=50
  )  # PixelData too short for Rows
  with pytest.raises(BadImageError, match="dicom_undecodable"):
    load_image(str(tmp_path / "short.dcm"))
