"""Image loading (PNG/JPEG/DICOM -> RGB) and Qwen2.5-VL preprocessing (-> patches, grid_thw).

Loading. `load_image(path)` returns an 8-bit RGB PIL image, as the Qwen2.5-VL processor
expects, or raises `BadImageError(reason, detail)`:
- the pixel count is checked from the header BEFORE any pixel is decoded, so a
  decompression bomb (a tiny file declaring a huge image) costs nothing ("decompression_bomb");
- empty, truncated, unidentifiable and undecodable files are refused with their reason;
- the EXIF Orientation tag of JPEG/PNG/TIFF/WebP files is applied (PIL.ImageOps.exif_transpose),
  so a rotated photo of a film reaches the model upright;
- 8-bit modes (L, P palette, LA, RGBA, CMYK, YCbCr, 1) go through PIL's own conversion to
  RGB (alpha is dropped, as `Image.convert("RGB")` does in the reference pipelines);
- 16-bit and 32-bit grayscale (I;16, I, F) are min-max scaled to 0..255; a plain
  `convert("L")` would clip every value above 255 to white;
- DICOM (".dcm" or the "DICM" magic) is read with pydicom: modality LUT, then the VOI LUT
  sequence or the first window (center/width, LINEAR / LINEAR_EXACT / SIGMOID), else the
  image's min-max; MONOCHROME1 is inverted so bone is bright; RGB/YBR files are scaled to
  8 bits. A compressed file without its decoder plugin is a "dicom_undecodable" skip.
`load_image_bytes(data, name)` does the same for a file's bytes held in memory (the images
of a TFDS dataset, echo_jax/data/tfds_source.py); `name` stands for the path in messages.

Warnings. `load_study_images` warns (`ImageSizeWarning`, naming the file) about an image
that loads but is far from what the model was trained on: more than 4x below min_pixels
before resizing (the upscale invents most of it) or flat (one value everywhere: a blank
or failed export). The report of such an image is still produced.

Preprocessing. `preprocess(image, config)` matches transformers' Qwen2-VL image processor
(Qwen2VLImageProcessorPil) exactly: `smart_resize` to multiples of patch*merge (28) within
[min_pixels, max_pixels] keeping the aspect ratio, PIL bicubic resize, x/255 rescale (in
float64, then float32), (x - mean) / std with the OpenAI CLIP mean/std, the still image
repeated over temporal_patch_size frames, and patches flattened in Hugging Face order:
rows are ordered (t, h-block, w-block, h-in-merge, w-in-merge), columns (C, T, P, P).
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from echo_jax.models.config import VisionConfig

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
# Formats whose EXIF Orientation tag is applied (MPO is a multi-picture JPEG).
_EXIF_FORMATS = ("JPEG", "MPO", "PNG", "TIFF", "WEBP")
# An image more than this factor below min_pixels is mostly invented by the upscaling.
FAR_BELOW_MIN_PIXELS = 4


class ImageSizeWarning(UserWarning):
  """A usable image far from what the model saw in training (tiny, flat); `path` names it."""

  def __init__(self, message: str, path: str = ""):
    super().__init__(message)
    self.path = path


class BadImageError(ValueError):
  """An image that cannot (or must not) be used; `reason` is a short key for the SkipLog."""

  def __init__(self, reason: str, detail: str):
    super().__init__(f"{reason}: {detail}")
    self.reason = reason
    self.detail = detail


@dataclasses.dataclass(frozen=True)
class ImageConfig:
  """Qwen2.5-VL image preprocessing settings; the defaults are the released ECHO models' (docs/RELEASED.md)."""

  min_pixels: int = 256 * 28 * 28  # smallest resized area
  max_pixels: int = 1500 * 1500  # largest resized area (about 2,870 merged tokens)
  patch_size: int = 14
  temporal_patch_size: int = 2
  merge_size: int = 2
  image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
  image_std: tuple[float, float, float] = OPENAI_CLIP_STD
  max_image_pixels: int = 50_000_000  # larger declared images are refused before decoding

  @classmethod
  def from_vision_config(cls, vision: VisionConfig, **overrides) -> ImageConfig:
    """Settings whose patch geometry matches a model's VisionConfig."""
    return cls(
      patch_size=vision.patch_size,
      temporal_patch_size=vision.temporal_patch_size,
      merge_size=vision.spatial_merge_size,
      **overrides,
    )

  def __post_init__(self):
    factor = self.patch_size * self.merge_size
    if self.min_pixels < factor * factor or self.max_pixels < self.min_pixels:
      raise ValueError(
        f"need (patch*merge)^2={factor * factor} <= min_pixels={self.min_pixels} <= max_pixels={self.max_pixels}"
      )

  @property
  def factor(self) -> int:
    return self.patch_size * self.merge_size


# ----------------------------------------------------------------------------- loading


def _has_dicom_magic(header: bytes) -> bool:
  """A DICOM file's 128-byte preamble is followed by "DICM"."""
  return header[128:132] == b"DICM"


def _is_dicom(path: str) -> bool:
  if path.lower().endswith((".dcm", ".dicom")):
    return True
  try:
    with open(path, "rb") as f:
      return _has_dicom_magic(f.read(132))
  except OSError:
    return False


def _check_size(path: str, width: int, height: int, frames: int, limit: int) -> None:
  if width <= 0 or height <= 0:
    raise BadImageError("unreadable_image", f"{path}: declared size {width}x{height}")
  if width * height * frames > limit:
    raise BadImageError(
      "decompression_bomb",
      f"{path}: declares {width}x{height}{f'x{frames}' if frames > 1 else ''} pixels, over the "
      f"limit of {limit} (ImageConfig.max_image_pixels)",
    )


def _scale_to_u8(arr: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
  """Linearly map [lo, hi] (default: the array's min and max) to 0..255."""
  arr = np.asarray(arr, dtype=np.float64)
  lo = float(arr.min()) if lo is None else lo
  hi = float(arr.max()) if hi is None else hi
  if not math.isfinite(lo) or not math.isfinite(hi):
    raise ValueError("image has non-finite values")
  if hi <= lo:
    return np.zeros(arr.shape, np.uint8)
  return np.clip(np.round((arr - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
  """An 8-bit RGB copy of `image`, whatever its mode (see the module docstring)."""
  if image.mode == "RGB":
    return image
  if image.mode in _HIGH_BIT_MODES:
    return Image.fromarray(_scale_to_u8(np.asarray(image)), "L").convert("RGB")
  return image.convert("RGB")


def _load_pil(source: str | io.BytesIO, path: str, limit: int) -> Image.Image:
  """`source` is the file or its bytes; `path` names it in errors."""
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      with Image.open(source) as image:
        _check_size(path, *image.size, 1, limit)  # only the first frame is ever decoded
        image.load()
        if image.format in _EXIF_FORMATS:
          # A camera or phone photo of a film stores its rotation in EXIF; the pixels
          # alone would reach the model sideways.
          image = ImageOps.exif_transpose(image)
        return to_rgb(image).copy()
  except BadImageError:
    raise
  except Image.DecompressionBombError as e:
    raise BadImageError("decompression_bomb", f"{path}: {e}") from None
  except UnidentifiedImageError:
    raise BadImageError("unreadable_image", f"{path}: not an image Pillow can identify") from None
  except OSError as e:
    reason = "truncated_image" if "truncated" in str(e).lower() else "unreadable_image"
    raise BadImageError(reason, f"{path}: {e}") from None
  except (ValueError, SyntaxError, MemoryError) as e:  # PIL raises these for corrupt chunks
    raise BadImageError("unreadable_image", f"{path}: {type(e).__name__}: {e}") from None


def _window(arr: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
  """DICOM VOI windowing (PS3.3 C.11.2.1.2) into [0, 1]."""
  function = function.upper()
  if function == "SIGMOID":
    if width <= 0:
      raise ValueError(f"window width {width} must be > 0 for SIGMOID")
    return 1.0 / (1.0 + np.exp(-4.0 * (arr - center) / width))
  if function == "LINEAR_EXACT":
    if width <= 0:
      raise ValueError(f"window width {width} must be > 0 for LINEAR_EXACT")
    return np.clip((arr - center) / width + 0.5, 0.0, 1.0)
  if function != "LINEAR":
    raise ValueError(f"unsupported VOI LUT function {function!r}")
  if width < 1:
    raise ValueError(f"window width {width} must be >= 1 for LINEAR")
  c, w = center - 0.5, width - 1.0
  if w == 0:
    return (arr > c).astype(np.float64)
  return np.clip((arr - c) / w + 0.5, 0.0, 1.0)


def _first(value) -> float:
  try:
    return (
      float(value[0])
      if isinstance(value, Sequence) and not isinstance(value, str)
      else float(value)
    )
  except (IndexError, TypeError):
    return float(value)


def _load_dicom(source: str | io.BytesIO, path: str, limit: int) -> Image.Image:
  import pydicom  # imported lazily: most datasets are PNG/JPEG
  from pydicom.pixels import apply_modality_lut, apply_voi

  try:
    ds = pydicom.dcmread(source)
    rows, cols = int(ds.Rows), int(ds.Columns)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    photometric = str(ds.PhotometricInterpretation).upper()
  except Exception as e:  # pydicom raises many types for malformed files
    raise BadImageError("bad_dicom", f"{path}: {type(e).__name__}: {e}") from None
  _check_size(path, cols, rows, frames, limit)
  try:
    arr = ds.pixel_array
  except Exception as e:
    raise BadImageError("dicom_undecodable", f"{path}: {type(e).__name__}: {e}") from None
  if frames > 1:
    arr = arr[0]  # the first frame; chest radiographs are single-frame
  try:
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
      values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
      if "VOILUTSequence" in ds:
        unit = _scale_to_u8(apply_voi(values, ds)).astype(np.float64) / 255.0
      elif "WindowCenter" in ds and "WindowWidth" in ds:
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR")
        unit = _window(values, _first(ds.WindowCenter), _first(ds.WindowWidth), function)
      else:
        unit = _scale_to_u8(values).astype(np.float64) / 255.0
      if photometric == "MONOCHROME1":
        unit = 1.0 - unit  # MONOCHROME1 stores bright as low values
      gray = np.clip(np.round(unit * 255.0), 0, 255).astype(np.uint8)
      return Image.fromarray(gray, "L").convert("RGB")
    if arr.ndim != 3 or arr.shape[-1] != 3:
      raise ValueError(f"photometric {photometric} with pixel shape {arr.shape} is not supported")
    if arr.dtype != np.uint8:
      arr = _scale_to_u8(arr, 0.0, float(2 ** int(ds.get("BitsStored", 8)) - 1))
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")
  except Exception as e:
    raise BadImageError("bad_dicom", f"{path}: {type(e).__name__}: {e}") from None


def load_image(path: str, *, max_image_pixels: int = ImageConfig.max_image_pixels) -> Image.Image:
  """Load PNG/JPEG/DICOM as 8-bit RGB, EXIF orientation applied; raises BadImageError with a
  reason (module docstring)."""
  try:
    size = os.stat(path).st_size
  except OSError as e:
    raise BadImageError("missing_image", f"{path}: {e.strerror}") from None
  if size == 0:
    raise BadImageError("zero_byte_image", path)
  if _is_dicom(path):
    return _load_dicom(path, path, max_image_pixels)
  return _load_pil(path, path, max_image_pixels)


def load_image_bytes(
  data: bytes, name: str, *, max_image_pixels: int = ImageConfig.max_image_pixels
) -> Image.Image:
  """`load_image` of a file's encoded bytes (a study read from a TFDS dataset); `name`
  stands for the path in errors and warnings. Same checks, same conversions."""
  if not data:
    raise BadImageError("zero_byte_image", name)
  source = io.BytesIO(data)
  if _has_dicom_magic(data):
    return _load_dicom(source, name, max_image_pixels)
  return _load_pil(source, name, max_image_pixels)


# ----------------------------------------------------------------------------- preprocessing


def smart_resize(
  height: int, width: int, factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
  """(height, width) rounded to multiples of `factor` with min_pixels <= h*w <= max_pixels.

  The Qwen2-VL rule: round each side to the nearest multiple; if the area is too large,
  scale both sides down by sqrt(area / max_pixels) and floor; if too small, scale up by
  sqrt(min_pixels / area) and ceil. Aspect ratios above 200 are refused.
  """
  if min(height, width) <= 0:
    raise BadImageError("unreadable_image", f"image size {width}x{height}")
  if max(height, width) / min(height, width) > 200:
    raise BadImageError("extreme_aspect_ratio", f"{width}x{height} has an aspect ratio above 200")
  h_bar = round(height / factor) * factor
  w_bar = round(width / factor) * factor
  if h_bar * w_bar > max_pixels:
    beta = math.sqrt((height * width) / max_pixels)
    h_bar = max(factor, math.floor(height / beta / factor) * factor)
    w_bar = max(factor, math.floor(width / beta / factor) * factor)
  elif h_bar * w_bar < min_pixels:
    beta = math.sqrt(min_pixels / (height * width))
    h_bar = math.ceil(height * beta / factor) * factor
    w_bar = math.ceil(width * beta / factor) * factor
  return h_bar, w_bar


def patchify(frames_TCHW: np.ndarray, config: ImageConfig) -> tuple[np.ndarray, np.ndarray]:
  """(T, C, H, W) normalized frames -> (grid_t*grid_h*grid_w, C*T'*P*P) patches, grid_thw.

  T must be a multiple of temporal_patch_size T'. Hugging Face order: rows run over
  (t, h // merge, w // merge, h % merge, w % merge), columns over (C, T', P, P).
  """
  t, c, h, w = frames_TCHW.shape
  p, tp, m = config.patch_size, config.temporal_patch_size, config.merge_size
  if t % tp or h % (p * m) or w % (p * m):
    raise ValueError(f"frames {frames_TCHW.shape} do not tile into T={tp}, P*merge={p * m}")
  gt, gh, gw = t // tp, h // p, w // p
  x = frames_TCHW.reshape(gt, tp, c, gh // m, m, p, gw // m, m, p)
  x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
  patches = x.reshape(gt * gh * gw, c * tp * p * p)
  return np.ascontiguousarray(patches, dtype=np.float32), np.array([gt, gh, gw], np.int64)


def preprocess(
  image: Image.Image, config: ImageConfig = ImageConfig()
) -> tuple[np.ndarray, np.ndarray]:
  """RGB PIL image -> (patches (n, C*T*P*P) float32, grid_thw (3,) int64), as HF computes them."""
  image = to_rgb(image)
  width, height = image.size
  new_h, new_w = smart_resize(height, width, config.factor, config.min_pixels, config.max_pixels)
  if (new_w, new_h) != (width, height):
    image = image.resize((new_w, new_h), resample=Image.Resampling.BICUBIC)
  # Same arithmetic as transformers: rescale in float64, cast to float32, normalize in float32.
  x_HWC = (np.asarray(image, dtype=np.uint8).astype(np.float64) * (1.0 / 255.0)).astype(np.float32)
  x_HWC = (x_HWC - np.asarray(config.image_mean, np.float32)) / np.asarray(
    config.image_std, np.float32
  )
  x_CHW = x_HWC.transpose(2, 0, 1)
  frames = np.broadcast_to(x_CHW[None], (config.temporal_patch_size, *x_CHW.shape))
  return patchify(frames, config)


def warn_unusual_image(image: Image.Image, config: ImageConfig, path: str = "") -> None:
  """ImageSizeWarning for a tiny or flat image (module docstring); silent otherwise."""
  width, height = image.size
  name = path or "image"
  if width * height * FAR_BELOW_MIN_PIXELS < config.min_pixels:
    warnings.warn(
      ImageSizeWarning(
        f"{name}: {width}x{height} is {width * height} pixels, more than "
        f"{FAR_BELOW_MIN_PIXELS}x below min_pixels={config.min_pixels}; it is upscaled and the "
        "report will say little about it",
        path,
      ),
      stacklevel=2,
    )
  extrema = image.getextrema()
  bands = extrema if isinstance(extrema[0], tuple) else (extrema,)
  if all(lo == hi for lo, hi in bands):
    warnings.warn(
      ImageSizeWarning(
        f"{name}: the image is flat (every pixel {bands[0][0]}); a blank or failed export?",
        path,
      ),
      stacklevel=2,
    )


def num_image_tokens(grid_thw: np.ndarray, merge_size: int = 2) -> int:
  """Number of <|image_pad|> tokens (merged vision tokens) one image contributes."""
  t, h, w = (int(v) for v in np.asarray(grid_thw).reshape(3))
  return t * h * w // (merge_size * merge_size)


def load_study_images(
  paths: Sequence[str], config: ImageConfig = ImageConfig(), encoded: Sequence[bytes] = ()
) -> tuple[np.ndarray, np.ndarray]:
  """Load and preprocess every image of a study.

  `encoded`, when given, holds the images' file bytes (one per path; the paths then only
  name them): they are decoded by `load_image_bytes` instead of reading the files, and
  everything after decoding is the same.

  Returns the patches of all images concatenated (sum n_i, C*T*P*P) and grid_thw
  (num_images, 3); raises BadImageError (naming the file) if any image is unusable.
  """
  if not paths:
    raise BadImageError("no_image", "the study has no images")
  if encoded and len(encoded) != len(paths):
    raise ValueError(f"{len(encoded)} encoded images for {len(paths)} image names")
  patches, grids = [], []
  for i, path in enumerate(paths):
    if encoded:
      image = load_image_bytes(encoded[i], path, max_image_pixels=config.max_image_pixels)
    else:
      image = load_image(path, max_image_pixels=config.max_image_pixels)
    warn_unusual_image(image, config, path)
    p, g = preprocess(image, config)
    patches.append(p)
    grids.append(g)
  return np.concatenate(patches, axis=0), np.stack(grids)
