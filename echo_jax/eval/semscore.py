"""SemScore: cosine similarity of BERT [CLS] embeddings of generated and reference reports.

As in the ECHO authors' evaluation: each (prediction, reference) pair is encoded
by a BERT-style encoder (the paper uses a CheXbert-style radiology BERT), the
last-layer [CLS] vectors are compared by cosine similarity, and the per-pair
values are averaged. Weights come only from a local directory the user passes
(``AutoModel``/``AutoTokenizer`` format); nothing is downloaded. torch and
transformers are imported inside ``SemScorer`` only, so the package never
imports torch unless a SemScore model is given. Without a model the metric is
"not computed" (None), never zero.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np


def check_model_dir(path: str | os.PathLike[str], what: str, flag: str) -> str:
  """Validates a local model directory (config.json present) and returns it as str."""
  p = os.fspath(path)
  if not os.path.isdir(p):
    raise FileNotFoundError(
      f"{what} model directory {p!r} does not exist; pass a local directory with {flag}"
    )
  if not os.path.isfile(os.path.join(p, "config.json")):
    raise FileNotFoundError(
      f"{what} model directory {p!r} has no config.json; save the model with save_pretrained() and pass it with {flag}"
    )
  return p


class SemScorer:
  """Loads a local BERT encoder once and scores report pairs."""

  def __init__(
    self,
    model_path: str | os.PathLike[str],
    batch_size: int = 16,
    device: str = "cpu",
    max_length: int = 512,
  ) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = check_model_dir(model_path, "SemScore", "--semscore-model")
    self._torch = torch
    self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    self.model = AutoModel.from_pretrained(path, local_files_only=True).eval().to(device)
    self.batch_size = batch_size
    self.device = device
    self.max_length = max_length

  def score(self, preds: Sequence[str], refs: Sequence[str]) -> np.ndarray:
    """Per-pair cosine similarity [N] (float64)."""
    if len(preds) != len(refs):
      raise ValueError(f"{len(preds)} predictions but {len(refs)} references")
    torch = self._torch
    out = []
    with torch.inference_mode():
      for i in range(0, len(preds), self.batch_size):
        hyp = list(preds[i : i + self.batch_size])
        ref = list(refs[i : i + self.batch_size])
        enc = self.tokenizer(
          hyp + ref, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length
        ).to(self.device)
        cls_BD = self.model(**enc).last_hidden_state[:, 0, :].double().cpu().numpy()
        h, r = cls_BD[: len(hyp)], cls_BD[len(hyp) :]
        den = np.linalg.norm(h, axis=1) * np.linalg.norm(r, axis=1)
        out.append((h * r).sum(1) / np.maximum(den, 1e-12))
    return np.concatenate(out) if out else np.zeros(0)


def semscore(
  preds: Sequence[str],
  refs: Sequence[str],
  model_path: str | os.PathLike[str] | None,
  batch_size: int = 16,
  device: str = "cpu",
) -> np.ndarray | None:
  """Per-pair SemScore [N], or None (not computed) when no model path is given."""
  if model_path is None:
    return None
  return SemScorer(model_path, batch_size=batch_size, device=device).score(preds, refs)
