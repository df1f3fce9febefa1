"""Dataset readers: each turns one published layout into a list of `Study` records.

  read_dataset("r2gen", "/data/iu_xray")                       # IU X-ray / MIMIC R2Gen / synthetic
  read_dataset("mimic-cxr-jpg", "/data/mimic-cxr-jpg", views="frontal", reports_root="/data/mimic-cxr")
  read_dataset("chexpert-plus", "/data/chexpert-plus", require="both")
  read_dataset("rexrank", "/data/rexrank/iu", json_path=".../IU_test.json")
  read_dataset("rexgradient", "/data/rexgradient", fields=RexGradientFields(images="image_paths"))
  read_dataset("echo-json", "/data/CXRTest_demo/jsons/mimic_test_EN_for_infer_normalize_demo.json")

Options every reader takes: splits (keep only these of "train"/"val"/"test"), views (None,
"frontal" or ViewPosition names), max_images (per study, frontal first), require ("any",
"findings", "impression", "both"), check_files (stat images), skips (a SkipLog; reading
stops with TooManyBadError when its bad fraction exceeds max_bad_fraction). The layouts are
described in each reader's module docstring.
"""

from __future__ import annotations

from collections.abc import Callable

from echo_jax.data.readers.chexpert_plus import read_chexpert_plus
from echo_jax.data.readers.common import DatasetFileError, DatasetOptionError
from echo_jax.data.readers.echo_json import read_echo_json
from echo_jax.data.readers.mimic_cxr_jpg import read_mimic_cxr_jpg
from echo_jax.data.readers.r2gen import read_r2gen
from echo_jax.data.readers.rexgradient import RexGradientFields, read_rexgradient
from echo_jax.data.readers.rexrank import read_rexrank
from echo_jax.data.study import SPLITS, SkipLog, Study

READERS: dict[str, Callable[..., list[Study]]] = {
  "r2gen": read_r2gen,
  "mimic-cxr-jpg": read_mimic_cxr_jpg,
  "chexpert-plus": read_chexpert_plus,
  "rexrank": read_rexrank,
  "rexgradient": read_rexgradient,
  "echo-json": read_echo_json,
}


def read_dataset(
  format: str, root: str, *, max_bad_fraction: float = 0.05, skips: SkipLog | None = None, **kw
) -> list[Study]:
  """Read the dataset at `root` in the named format (one of READERS).

  `max_bad_fraction` sets the SkipLog's limit when no `skips` is passed; other keyword
  arguments go to the reader (see its docstring).
  """
  name = format.lower().replace("_", "-")
  if name not in READERS:
    raise DatasetOptionError(
      f"unknown dataset format {format!r}", fix=f"use one of {', '.join(READERS)}"
    )
  splits = kw.get("splits")
  if splits is not None and (
    isinstance(splits, str) or not all(isinstance(s, str) for s in splits)
  ):
    raise DatasetOptionError(f"splits={splits!r}", fix=f"give a list drawn from {list(SPLITS)}")
  bad = [s for s in splits or () if s not in SPLITS]
  if bad:
    raise DatasetOptionError(f"splits {bad} are not among {SPLITS}", fix="use train, val, test")
  skips = skips if skips is not None else SkipLog(name, max_bad_fraction=max_bad_fraction)
  return READERS[name](root, skips=skips, **kw)


__all__ = [
  "READERS",
  "DatasetFileError",
  "DatasetOptionError",
  "RexGradientFields",
  "read_chexpert_plus",
  "read_dataset",
  "read_echo_json",
  "read_mimic_cxr_jpg",
  "read_r2gen",
  "read_rexgradient",
  "read_rexrank",
]
