"""TensorFlow Datasets builder for the report datasets, and a TensorFlow-free way to read it.

One `GeneratorBasedBuilder`, `EchoCxr` (tfds name "echo_cxr"), with one BuilderConfig per
dataset format of `echo_jax.data.readers`: r2gen, mimic_cxr_jpg, chexpert_plus, rexrank,
rexgradient. The user's copy of a dataset is the *manual download directory*: the builder
reads it through `read_dataset`, so the readers' skip rules hold unchanged (a bad entry is
logged and counted in a `SkipLog`, never a crash; `TooManyBadError` when too many are bad),
loads every image with `echo_jax.data.images.load_image` (so DICOMs are windowed and
MONOCHROME1 inverted exactly as in training) and writes ArrayRecord shards. Build:

  python -m echo_jax.data.tfds_builder --format mimic-cxr-jpg \
      --manual_dir /data/mimic-cxr-jpg --data_dir /data/tfds \
      --reader_kwargs '{"reports_root": "/data/mimic-cxr", "views": "frontal"}' \
      --config_name mimic_frontal

which prints the studies per split and the skips, and leaves the dataset in
DATA_DIR/echo_cxr/CONFIG/1.0.0. With tensorflow-datasets 4.9.10 neither building nor
reading imports TensorFlow (the ArrayRecord shards are written with array_record and
protobuf); other tfds versions may need it to build, which tensorflow-cpu covers.

Features of one record (one study):
  id              text: the reader's study id
  images          sequence of PNG bytes, 8 bit, frontal first: `load_image` output
                  re-encoded losslessly; stored as one gray channel when R == G == B
                  (every radiograph), else as RGB
  view_positions  sequence of text, one per image ("" when the dataset does not say)
  findings        text ("" when the report has none)
  impression      text ("" when none)
  split           text: "train", "val" or "test" (also the tfds split the record is in)
The builder's `info.metadata` records the reader's and the image stage's skip counts.

Reading (tests check that TensorFlow stays unimported):

  source = tfds_source("/data/tfds/echo_cxr/mimic_frontal/1.0.0", "train")
  len(source); inputs = record_to_study_inputs(source[0])   # StudyInputs

`source` is a random-access sequence (`__len__`, `__getitem__`) that pickles, and its records
are plain dicts of bytes and lists of bytes, so both go to Grain worker processes.
Training, evaluation and `generate` read a build through `TfdsStudies`
(echo_jax/data/tfds_source.py: `--config.data.name=tfds`, `generate --dataset tfds`),
which turns each record into a `Study` carrying its PNG bytes; `StudyExamples` then decodes
them with `echo_jax.data.images.load_image_bytes` and preprocesses them as any other study.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import io
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from echo_jax.data.images import BadImageError, load_image
from echo_jax.data.readers import READERS, RexGradientFields, read_dataset
from echo_jax.data.study import SPLITS, SkipLog, Study, TooManyBadError

log = logging.getLogger(__name__)

NAME = "echo_cxr"  # the tfds dataset name: DATA_DIR/echo_cxr/CONFIG/VERSION

_MANUAL_INSTRUCTIONS = """\
Pass the folder holding your copy of the dataset as the manual directory
(tfds.download.DownloadConfig(manual_dir=...), or --manual_dir on the command line), laid out
as that format's reader in echo_jax/data/readers expects (its module docstring): e.g. for r2gen the
folder with annotation.json and images/, for mimic-cxr-jpg the folder with files/ and the
mimic-cxr-2.0.0-*.csv[.gz] files. Nothing is downloaded.
"""


def config_name(format: str) -> str:
  """The default BuilderConfig name of a reader format: 'mimic-cxr-jpg' -> 'mimic_cxr_jpg'."""
  return format.lower().replace("-", "_")


@dataclasses.dataclass(eq=False)
class EchoCxrConfig(tfds.core.BuilderConfig):
  """A dataset format plus the reader options to build it with.

  Attributes:
    format: a key of `echo_jax.data.readers.READERS` ("r2gen", "mimic-cxr-jpg", ...).
    reader_kwargs: keyword arguments for the reader (views, max_images, require,
      reports_root, json_path, fields, ...). A variant built with other options than the
      defaults needs its own `name` (not one of the built-in configs' names), so both can
      live in one data_dir.
  """

  format: str = "r2gen"
  reader_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def make_config(
  format: str,
  name: str | None = None,
  reader_kwargs: Mapping[str, Any] | None = None,
) -> EchoCxrConfig:
  """A validated EchoCxrConfig; `name` defaults to `config_name(format)`."""
  reader = format.lower().replace("_", "-")
  if reader not in READERS:
    raise ValueError(f"unknown dataset format {format!r}; known: {', '.join(READERS)}")
  kwargs = dict(reader_kwargs or {})
  if reader == "rexgradient" and isinstance(kwargs.get("fields"), Mapping):
    kwargs["fields"] = RexGradientFields(**kwargs["fields"])  # as given on the command line
  bad = sorted({"skips", "max_bad_fraction"} & set(kwargs))
  if bad:
    raise ValueError(f"reader_kwargs {bad} are set by the builder; pass max_bad_fraction to it")
  shown = json.dumps(kwargs, default=repr, sort_keys=True)
  return EchoCxrConfig(
    name=name or config_name(reader),
    description=f"format {reader}, reader options {shown}",
    format=reader,
    reader_kwargs=kwargs,
  )


# ----------------------------------------------------------------------------- images


def encode_png(image: Image.Image) -> bytes:
  """8-bit PNG bytes of an RGB image: one channel when R == G == B (lossless either way)."""
  arr_HWC = np.asarray(image.convert("RGB"))
  gray = bool(
    (arr_HWC[..., 0] == arr_HWC[..., 1]).all() and (arr_HWC[..., 1] == arr_HWC[..., 2]).all()
  )
  out = (
    Image.fromarray(np.ascontiguousarray(arr_HWC[..., 0]), "L")
    if gray
    else Image.fromarray(arr_HWC, "RGB")
  )
  buf = io.BytesIO()
  out.save(buf, format="PNG")
  return buf.getvalue()


def decode_png(data: bytes) -> Image.Image:
  """The 8-bit RGB PIL image stored by `encode_png` (pixel-identical to `load_image`'s)."""
  with Image.open(io.BytesIO(data)) as image:
    image.load()
    return image.convert("RGB")


def _encode_study(study: Study) -> list[bytes]:
  return [encode_png(load_image(p)) for p in study.image_paths]


# ----------------------------------------------------------------------------- builder


# Under `python -m echo_jax.data.tfds_builder` this file also runs as __main__; tfds finds a
# builder's files through its module's package, which __main__ lacks, so that copy is not
# registered and the command line runs the copy imported under the real module name.
class EchoCxr(tfds.core.GeneratorBasedBuilder, skip_registration=__name__ == "__main__"):
  """Chest X-ray studies with findings and impression, from a user's copy of a dataset."""

  name = NAME
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Studies read by echo_jax.data.readers; images as 8-bit PNG."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL_INSTRUCTIONS
  BUILDER_CONFIGS = [make_config(f) for f in READERS]
  # tensorflow-datasets 4.9.x derives this from the package's resource path and on the way
  # touches the backport `importlib_resources`, which it only requires on Python < 3.9, so a
  # Python 3.11 install fails with ModuleNotFoundError. It only locates checksums.tsv (no
  # downloads here), so the file itself is the right answer.
  code_path = epath.Path(__file__)

  def __init__(self, *, num_workers: int = 0, max_bad_fraction: float = 0.05, **kwargs):
    """Options that do not change the data (so are not part of the config).

    Args:
      num_workers: threads loading and encoding images while writing (0: this thread).
      max_bad_fraction: the SkipLog limit for the reader and for the image stage.
      **kwargs: for tfds.core.GeneratorBasedBuilder (config, data_dir, file_format, ...).
    """
    if num_workers < 0:
      raise ValueError(f"num_workers={num_workers} must be >= 0")
    if not 0.0 <= max_bad_fraction <= 1.0:
      raise ValueError(f"max_bad_fraction={max_bad_fraction} must lie in [0, 1]")
    self.num_workers = num_workers
    self.max_bad_fraction = max_bad_fraction
    self.read_skips: SkipLog | None = None
    self.image_skips: SkipLog | None = None
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    text = tfds.features.Text
    return self.dataset_info_from_configs(
      description=(
        "Chest X-ray studies (images + findings + impression) read from the user's copy of "
        "the dataset by echo_jax.data.readers; images are load_image output as 8-bit PNG."
      ),
      features=tfds.features.FeaturesDict(
        {
          "id": text(),
          "images": tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_)),
          "view_positions": tfds.features.Sequence(text()),
          "findings": text(),
          "impression": text(),
          "split": text(),
        }
      ),
      metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    config: EchoCxrConfig = self.builder_config
    root = os.fspath(dl_manager.manual_dir)
    self.read_skips = SkipLog(f"{config.name}:read", max_bad_fraction=self.max_bad_fraction)
    self.image_skips = SkipLog(f"{config.name}:images", max_bad_fraction=self.max_bad_fraction)
    studies = read_dataset(config.format, root, skips=self.read_skips, **config.reader_kwargs)
    by_split: dict[str, list[Study]] = collections.defaultdict(list)
    for study in studies:
      by_split[study.split].append(study)
    self._record_metadata()
    log.info("%s", self.read_skips.summary())
    if not by_split:
      raise ValueError(f"{root}: the {config.format} reader found no usable study")
    # Splits with no study are left out: tfds refuses to write an empty split.
    return {s: self._generate_examples(by_split[s]) for s in SPLITS if by_split.get(s)}

  def _generate_examples(self, studies: Sequence[Study]) -> Iterator[tuple[str, dict]]:
    for study, encoded in self._load_all(studies):
      if isinstance(encoded, BadImageError):
        self.image_skips.skip(study.id, encoded.reason, encoded.detail)
        continue
      self.image_skips.ok()
      yield (
        study.id,
        {
          "id": study.id,
          "images": encoded,
          "view_positions": list(study.view_positions),
          "findings": study.findings,
          "impression": study.impression,
          "split": study.split,
        },
      )
    self._record_metadata()
    log.info("%s", self.image_skips.summary())
    # A dataset whose images mostly fail (a missing DICOM decoder, a wrong root) is refused;
    # raising here leaves no half-written dataset (tfds writes into a temporary folder).
    self.image_skips.check()

  def _load_all(self, studies: Sequence[Study]) -> Iterator[tuple[Study, Any]]:
    """(study, [png bytes] or BadImageError) in order; a bounded window of threads ahead."""

    def work(study: Study) -> Any:
      try:
        return _encode_study(study)
      except BadImageError as e:
        return e

    if self.num_workers == 0:
      for study in studies:
        yield study, work(study)
      return
    window = 4 * self.num_workers  # bounds the encoded images held in memory
    with concurrent.futures.ThreadPoolExecutor(self.num_workers) as pool:
      pending: collections.deque = collections.deque()
      for study in studies:
        pending.append((study, pool.submit(work, study)))
        if len(pending) >= window:
          s, f = pending.popleft()
          yield s, f.result()
      while pending:
        s, f = pending.popleft()
        yield s, f.result()

  def _record_metadata(self) -> None:
    """Skip counts into info.metadata (written to dataset_info after generation)."""
    for key, skips in (("read", self.read_skips), ("images", self.image_skips)):
      if skips is not None:
        self.info.metadata[key] = {
          "num_ok": skips.num_ok,
          "num_skipped": skips.num_skipped,
          "reasons": dict(skips.reasons()),
        }


def build(
  format: str,
  manual_dir: str,
  data_dir: str,
  *,
  name: str | None = None,
  reader_kwargs: Mapping[str, Any] | None = None,
  max_bad_fraction: float = 0.05,
  num_workers: int = 0,
) -> EchoCxr:
  """Build (or find already built) the dataset in DATA_DIR/echo_cxr/NAME/VERSION.

  Returns the builder: `builder.data_dir` is the builder directory for `tfds_source`,
  `builder.info.splits[s].num_examples` the counts and `builder.info.metadata` the skips.
  """
  if not os.path.isdir(manual_dir):
    raise ValueError(f"manual_dir {manual_dir} is not a folder: pass your copy of the dataset")
  config = make_config(format, name, reader_kwargs)
  builtin = {c.name: c for c in EchoCxr.BUILDER_CONFIGS}
  if config.name in builtin:
    if config.format != builtin[config.name].format or config.reader_kwargs:
      raise ValueError(
        f"config name {config.name!r} is the built-in config for format "
        f"{builtin[config.name].format} with default reader options: name this variant otherwise"
      )
    config = config.name  # tfds refuses a custom config object named like a built-in one
  builder = EchoCxr(
    config=config,
    data_dir=data_dir,
    file_format=tfds.core.FileFormat.ARRAY_RECORD,
    num_workers=num_workers,
    max_bad_fraction=max_bad_fraction,
  )
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


# ----------------------------------------------------------------------------- reading


def resolve_builder_dir(path: str) -> str:
  """DATA_DIR/echo_cxr/CONFIG[/VERSION] -> the folder holding dataset_info.json."""
  if os.path.isfile(os.path.join(path, "dataset_info.json")):
    return path
  versions = [
    d for d in os.listdir(path) if os.path.isfile(os.path.join(path, d, "dataset_info.json"))
  ]
  if not versions:
    raise ValueError(
      f"{path} holds no built dataset (no dataset_info.json in it or in a version folder under "
      "it): pass DATA_DIR/echo_cxr/CONFIG/VERSION, or a name such as 'echo_cxr/r2gen' with data_dir"
    )
  return os.path.join(path, max(versions, key=lambda v: tfds.core.Version(v)))


def tfds_source(
  name_or_builder_dir: str, split: str, *, data_dir: str | None = None
) -> Sequence[dict[str, Any]]:
  """A random-access source of one split's records (no TensorFlow needed).

  Args:
    name_or_builder_dir: a built dataset's folder (DATA_DIR/echo_cxr/CONFIG/VERSION, or
      DATA_DIR/echo_cxr/CONFIG for its newest version), or a tfds name such as
      "echo_cxr/r2gen" looked up in `data_dir` (names work for the built-in configs; a custom
      config is read by its folder).
    split: "train", "val" or "test".
    data_dir: where to look a name up (tfds' default data dir when None).

  Returns the tfds ArrayRecord data source: `len()`, `source[i]` -> a record dict (see the
  module docstring; text fields are bytes), picklable for Grain workers.
  """
  by_dir = os.path.isdir(name_or_builder_dir)
  if by_dir:
    builder = tfds.builder_from_directory(resolve_builder_dir(name_or_builder_dir))
  else:
    builder = tfds.builder(name_or_builder_dir, data_dir=data_dir)
  if split not in builder.info.splits:
    raise ValueError(
      f"{name_or_builder_dir} has no split {split!r}; it has {sorted(builder.info.splits)} "
      "(a split with no usable study is not written)"
    )
  if by_dir:
    return builder.as_data_source(split=split)
  return tfds.data_source(name_or_builder_dir, split=split, data_dir=data_dir, download=False)


@dataclasses.dataclass(frozen=True)
class StudyInputs:
  """What the training transform needs from one record.

  Attributes:
    id: the study id.
    images: the decoded 8-bit RGB PIL images (frontal first), or their PNG bytes when
      `record_to_study_inputs(..., decode=False)`.
    view_positions / findings / impression / split: as in `Study`.
  """

  id: str
  images: tuple[Image.Image, ...] | tuple[bytes, ...]
  view_positions: tuple[str, ...]
  findings: str
  impression: str
  split: str

  @property
  def report(self) -> str:
    """The training target, exactly as `Study.report` builds it."""
    parts = ["Findings:", self.findings, "Impression:", self.impression]
    return " ".join(p for p in parts if p)


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def record_to_study_inputs(record: Mapping[str, Any], *, decode: bool = True) -> StudyInputs:
  """Turn one `tfds_source` record into StudyInputs (images decoded to PIL unless decode=False).

  Raises ValueError naming the missing fields when the record is not from this builder.
  """
  missing = [
    k
    for k in ("id", "images", "view_positions", "findings", "impression", "split")
    if k not in record
  ]
  if missing:
    raise ValueError(
      f"record lacks {missing}: is the source an echo_cxr dataset? keys: {sorted(record)}"
    )
  blobs = tuple(bytes(b) for b in record["images"])
  return StudyInputs(
    id=_text(record["id"]),
    images=tuple(decode_png(b) for b in blobs) if decode else blobs,
    view_positions=tuple(_text(v) for v in record["view_positions"]),
    findings=_text(record["findings"]),
    impression=_text(record["impression"]),
    split=_text(record["split"]),
  )


# ----------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m echo_jax.data.tfds_builder", description=__doc__.split("\n\n")[0]
  )
  parser.add_argument("--format", required=True, help=f"one of {', '.join(READERS)}")
  parser.add_argument("--manual_dir", required=True, help="your copy of the dataset")
  parser.add_argument("--data_dir", required=True, help="where to write the tfds dataset")
  parser.add_argument("--config_name", help="name of this variant (required with --reader_kwargs)")
  parser.add_argument("--reader_kwargs", default="{}", help="JSON object of reader options")
  parser.add_argument("--max_bad_fraction", type=float, default=0.05)
  parser.add_argument("--num_workers", type=int, default=os.cpu_count() or 1)
  args = parser.parse_args(argv)
  try:
    kwargs = json.loads(args.reader_kwargs)
  except json.JSONDecodeError as e:
    parser.error(f"--reader_kwargs is not JSON: {e}")
  if not isinstance(kwargs, dict):
    parser.error("--reader_kwargs must be a JSON object")
  if kwargs and not args.config_name:
    parser.error("--reader_kwargs changes the data: also pass --config_name to name this variant")
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  try:
    builder = build(
      args.format,
      args.manual_dir,
      args.data_dir,
      name=args.config_name,
      reader_kwargs=kwargs,
      max_bad_fraction=args.max_bad_fraction,
      num_workers=args.num_workers,
    )
  except (ValueError, TooManyBadError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"built {builder.info.full_name} in {builder.data_dir}")
  for split in SPLITS:
    if split in builder.info.splits:
      print(f"  {split}: {builder.info.splits[split].num_examples} studies")
  for stage, counts in builder.info.metadata.items():
    print(f"  skipped ({stage}): {counts['num_skipped']} {counts['reasons']}")
  return 0


if __name__ == "__main__":
  from echo_jax.data import tfds_builder  # the registered copy (see EchoCxr)

  sys.exit(tfds_builder.main())
