"""A training run's studies and tokenizer: the configured dataset's splits, its tokenizer.

- `load_splits(name, path, ...)`: (train, val) Study sequences; the synthetic benchmark is
  written first when absent (by process 0, the others wait for it), then read like any
  R2Gen-layout dataset. Name "tfds": `path` is a dataset built by
  echo_jax/data/tfds_builder.py (DATA_DIR/echo_cxr/CONFIG/1.0.0) and the splits are
  `TfdsStudies` (echo_jax/data/tfds_source.py), read record by record, never held whole.
- `load_tokenizer_for(...)`: the named tokenizer.json; for the synthetic data without one,
  a byte-level BPE trained once on its training reports and kept beside the data; for
  "tfds" without one, DATA_PATH/tokenizer when it holds a tokenizer.json (a BPE is never
  trained by reading a whole TFDS split).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
from jax.experimental import multihost_utils

from echo_jax.data import readers, synthetic
from echo_jax.data import tokenizer as tokenizer_lib
from echo_jax.data.study import Study
from echo_jax.data.tfds_source import TfdsStudies
from echo_jax.models.config import TokenIds

TFDS = "tfds"  # data.name of a dataset built by echo_jax/data/tfds_builder.py


def load_splits(
  name: str, path: str, *, num_studies: int, seed: int, images_root: str = ""
) -> tuple[Sequence[Study], Sequence[Study]]:
  """(train, val) Study sequences of the dataset `name` at `path` (lists, or TfdsStudies)."""
  if name == TFDS:
    return TfdsStudies(path, "train"), TfdsStudies(path, "val")
  if name == "synthetic":
    if jax.process_index() == 0:
      synthetic.write_benchmark(path, num_studies, seed, progress=False)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("echo_jax synthetic benchmark written")
    name = "r2gen"
  kwargs = {"images_root": images_root} if images_root else {}
  train = readers.read_dataset(name, path, splits=["train"], **kwargs)
  val = readers.read_dataset(name, path, splits=["val"], **kwargs)
  return train, val


def synthetic_tokenizer_dir(data_path: str) -> str:
  """Where the synthetic benchmark's own tokenizer lives."""
  return os.path.join(data_path, "tokenizer")


def tfds_tokenizer_file(data_path: str) -> str:
  """Where a TFDS dataset's tokenizer is looked for when data.tokenizer is not set
  (the same DATA_PATH/tokenizer that generate looks in)."""
  return os.path.join(data_path, "tokenizer", "tokenizer.json")


def _train_synthetic_tokenizer(path: str, train_studies: Sequence[Study], vocab_size: int) -> None:
  # The prompt's fixed text joins the corpus so that it costs a few tokens, not ~90.
  prompt = [
    f"system\n{tokenizer_lib.DEFAULT_SYSTEM}",
    "user\n",
    tokenizer_lib.ECHO_INSTRUCTION,
    "\n",
    "assistant\n",
  ]
  texts = [s.report for s in train_studies] + prompt * max(len(train_studies) // 20, 50)
  tokenizer_lib.train_bpe_tokenizer(texts, vocab_size, out_dir=path)


def load_tokenizer_for(
  tokenizer_path: str,
  *,
  data_name: str,
  data_path: str,
  train_studies: Sequence[Study],
  vocab_size: int,
  token_ids: TokenIds,
  fallback_path: str = "",
) -> tokenizer_lib.Tokenizer:
  """The run's tokenizer, checked against the model's special token ids.

  `tokenizer_path` when set; else for the synthetic data its own BPE (trained on
  `train_studies` the first time); else `fallback_path` (e.g. the Hugging Face model
  the run starts from). ValueError when none of them applies.
  """
  path = tokenizer_path
  if not path and data_name == "synthetic":
    path = synthetic_tokenizer_dir(data_path)
    if not os.path.isfile(os.path.join(path, "tokenizer.json")):
      _train_synthetic_tokenizer(path, train_studies, vocab_size)
  elif not path and data_name == TFDS and os.path.isfile(tfds_tokenizer_file(data_path)):
    path = os.path.dirname(tfds_tokenizer_file(data_path))
  elif not path:
    path = fallback_path
  if not path and data_name == TFDS:
    raise ValueError(
      f"no tokenizer for the tfds dataset {data_path}: set --config.data.tokenizer to a "
      f"tokenizer.json (or its directory), or put one at {tfds_tokenizer_file(data_path)}"
    )
  if not path:
    raise ValueError(
      "no tokenizer: set --config.data.tokenizer to a tokenizer.json (or its directory)"
    )
  tokenizer = tokenizer_lib.load_tokenizer(path)
  tokenizer.check_ids(token_ids)
  return tokenizer
