"""EXIF orientation is applied on load; tiny and flat images raise an ImageSizeWarning."""

import warnings

import numpy as np
import pytest
from PIL import Image

from echo_jax.data.images import (
  ImageConfig,
  ImageSizeWarning,
  load_image,
  load_study_images,
  warn_unusual_image,
)

ORIENTATION = 0x0112  # the EXIF Orientation tag
SMALL = ImageConfig(min_pixels=56 * 56, max_pixels=28 * 28 * 64)


def _pixels(height=48, width=80, seed=0):
  """A non-square, non-symmetric image: any rotation or flip changes it."""
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def _save(path, pixels, orientation=None, **kwargs):
  exif = Image.Exif()
  if orientation is not None:
    exif[ORIENTATION] = orientation
  Image.fromarray(pixels).save(path, exif=exif, **kwargs)
  return str(path)


def test_png_orientation_6_is_the_clockwise_rotation(tmp_path):
  pixels = _pixels()
  loaded = np.asarray(load_image(_save(tmp_path / "r.png", pixels, orientation=6)))
  # Orientation 6: the stored rows are the picture's right-hand column; shown upright
  # the image is the stored one turned 90 degrees clockwise.
  assert loaded.shape == (80, 48, 3)
  np.testing.assert_array_equal(loaded, np.rot90(pixels, k=-1))


def test_jpeg_orientation_6_equals_the_rotated_plain_jpeg(tmp_path):
  pixels = _pixels(seed=1)
  plain = np.asarray(load_image(_save(tmp_path / "plain.jpg", pixels, quality=95)))
  tagged = np.asarray(load_image(_save(tmp_path / "tagged.jpg", pixels, 6, quality=95)))
  # The EXIF block does not change the compressed pixels, only how they are shown.
  np.testing.assert_array_equal(tagged, np.rot90(plain, k=-1))
  assert not np.array_equal(tagged.shape, plain.shape)


@pytest.mark.parametrize("orientation,turn", [(1, lambda a: a), (3, lambda a: np.rot90(a, 2))])
def test_other_orientations(tmp_path, orientation, turn):
  pixels = _pixels(seed=orientation)
  loaded = np.asarray(load_image(_save(tmp_path / "o.png", pixels, orientation)))
  np.testing.assert_array_equal(loaded, turn(pixels))


def _warnings_of(fn):
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    fn()
  return [w.message for w in caught if issubclass(w.category, ImageSizeWarning)]


def test_tiny_image_warns_naming_the_file(tmp_path):
  path = _save(tmp_path / "tiny.png", _pixels(10, 10))
  found = _warnings_of(lambda: load_study_images([path], SMALL))
  assert len(found) == 1 and found[0].path == path
  assert "10x10" in str(found[0]) and "min_pixels=3136" in str(found[0])


def test_flat_image_warns(tmp_path):
  path = _save(tmp_path / "flat.png", np.full((64, 64, 3), 17, np.uint8))
  found = _warnings_of(lambda: load_study_images([path], SMALL))
  assert len(found) == 1 and "flat" in str(found[0]) and path in str(found[0])


def test_normal_images_do_not_warn(tmp_path):
  paths = [_save(tmp_path / f"{i}.png", _pixels(64 + 8 * i, 60, seed=i)) for i in range(3)]
  assert _warnings_of(lambda: load_study_images(paths, SMALL)) == []
  # Just above the limit (min_pixels / 4 = 784 pixels = 28 x 28) is not far below.
  assert _warnings_of(lambda: warn_unusual_image(Image.fromarray(_pixels(28, 28)), SMALL)) == []
  assert len(_warnings_of(lambda: warn_unusual_image(Image.fromarray(_pixels(27, 28)), SMALL)))
