"""RaTEScore (Zhao et al., EMNLP 2024) and the positive-findings variant ECHO reports.

Per report pair:
1. Sentences are split (regular expression on . ! ? and line breaks; the original
   uses medspaCy's PyRuSH splitter) and a token-classification NER model (local
   directory; the original is RaTE-NER-DeBERTa) tags IOB entities of five types:
   ABNORMALITY, NON-ABNORMALITY, DISEASE, NON-DISEASE, ANATOMY. An entity runs from
   a B- token through the following I- tokens and takes the B- token's type.
2. Each entity string is embedded by an encoder (local directory; the original is
   BioLORD-2023-C) as its last-layer [CLS] vector.
3. For every entity of side A, the most cosine-similar entity of side B is found;
   score(A->B) = sum(sim * w(type_a, type_b) * t) / sum(w), where w is the type
   affinity matrix and t = ``neg_weight`` when one of the pair is a negated type of
   the other (DISEASE vs NON-DISEASE, ...), else 1. A zero weight sum gives 0.
4. RaTEScore = harmonic mean of score(ref->pred) and score(pred->ref) (0 if both 0).
   A pair where either report has no entity scores 0.1.

The positive variant (``affinity="positive"``, the default, the matrix the ECHO
authors call "new") keeps the ABNORMALITY and DISEASE rows of the long-paragraph
matrix, zeroes the rows of ANATOMY, NON-ABNORMALITY and NON-DISEASE entities, and
takes ``neg_weight`` from the short matrix: only abnormal findings and diseases
weigh. The matrices below are the published RaTEScore weights (MIT licence).

torch/transformers are imported inside ``RaTEScorer`` only; without model paths
the metric is not computed (None).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import numpy as np

from echo_jax.eval.semscore import check_model_dir

TYPES = ("ABNORMALITY", "NON-ABNORMALITY", "DISEASE", "NON-DISEASE", "ANATOMY")
NO_ENTITY_SCORE = 0.1
_NEG_PAIRS = frozenset(
  {
    ("NON-DISEASE", "DISEASE"),
    ("NON-ABNORMALITY", "ABNORMALITY"),
    ("DISEASE", "NON-DISEASE"),
    ("ABNORMALITY", "NON-ABNORMALITY"),
    ("NON-DISEASE", "ABNORMALITY"),
    ("NON-ABNORMALITY", "DISEASE"),
    ("DISEASE", "NON-ABNORMALITY"),
    ("ABNORMALITY", "NON-DISEASE"),
  }
)
# Rows: type of the entity being matched; columns: type of its nearest neighbour.
# Column order: ABNORMALITY, NON-ABNORMALITY, DISEASE, NON-DISEASE, ANATOMY.
_LONG = {
  "ABNORMALITY": (
    0.4276119164393705,
    0.5431049700217344,
    0.0034478181112993847,
    0.27005425386213877,
    0.6240929990607657,
  ),
  "NON-ABNORMALITY": (
    0.16546764653692908,
    0.0009357166071730684,
    0.719397354576018,
    0.0927333564267591,
    0.018670610691852826,
  ),
  "DISEASE": (
    0.8396510075734789,
    0.9820689020512646,
    0.8460555030578727,
    0.3789136708096537,
    0.9950209388542061,
  ),
  "NON-DISEASE": (
    0.7759420231214385,
    0.03860183811876373,
    0.10073046076318157,
    0.34065681486566446,
    0.1839139293714062,
  ),
  "ANATOMY": (
    0.7487824274337533,
    0.02097055139911715,
    0.4592143222158069,
    0.00013736314126696204,
    0.2856134859160784,
  ),
}
_SHORT = {
  "ABNORMALITY": (
    0.4070293318365468,
    0.9479148658006686,
    0.28342529466226446,
    0.23875064111146294,
    0.6952639610605605,
  ),
  "NON-ABNORMALITY": (
    0.1712744286898638,
    0.0007887930317199857,
    0.00045065329822896076,
    0.8555432840895761,
    0.4485149671497294,
  ),
  "DISEASE": (
    0.8840397619834857,
    0.6962283914800402,
    0.19018958438059513,
    0.943727057946997,
    0.9637659445696822,
  ),
  "NON-DISEASE": (
    0.9555801066212176,
    0.05650711141169969,
    0.6072996585919443,
    0.3214769399791204,
    0.13122106162635216,
  ),
  "ANATOMY": (
    0.5829759950441763,
    0.794672584951181,
    0.0006059634829551632,
    0.27982942400798977,
    0.7709590751917746,
  ),
}
_NEG_WEIGHT = {"long": 0.8716553966489615, "short": 0.3611577852354489}


def affinity_matrix(name: str = "positive") -> tuple[dict[tuple[str, str], float], float]:
  """Type-affinity weights {(row_type, col_type): w} and neg_weight for a named matrix."""
  if name not in ("positive", "long", "short"):
    raise ValueError(f"affinity must be 'positive', 'long' or 'short', got {name!r}")
  rows = _SHORT if name == "short" else _LONG
  w = {(r, c): rows[r][j] for r in TYPES for j, c in enumerate(TYPES)}
  if name == "positive":
    w = {k: (v if k[0] in ("ABNORMALITY", "DISEASE") else 0.0) for k, v in w.items()}
    return w, _NEG_WEIGHT["short"]
  return w, _NEG_WEIGHT[name]


def directional_score(
  emb_a_AD: np.ndarray,
  emb_b_BD: np.ndarray,
  types_a: Sequence[str],
  types_b: Sequence[str],
  weights: dict[tuple[str, str], float],
  neg_weight: float,
) -> float:
  """score(A->B): weighted mean over A's entities of the cosine to their nearest B entity."""
  a = emb_a_AD / np.maximum(np.linalg.norm(emb_a_AD, axis=1, keepdims=True), 1e-12)
  b = emb_b_BD / np.maximum(np.linalg.norm(emb_b_BD, axis=1, keepdims=True), 1e-12)
  sim_AB = a @ b.T
  nearest = sim_AB.argmax(1)
  num = den = 0.0
  for i, j in enumerate(nearest):
    pair = (types_a[i], types_b[j])
    w = weights[pair]
    t = neg_weight if pair in _NEG_PAIRS else 1.0
    num += float(sim_AB[i, j]) * w * t
    den += w
  return num / den if den != 0 else 0.0


def pair_score(
  ref: tuple[np.ndarray, Sequence[str]],
  pred: tuple[np.ndarray, Sequence[str]],
  weights: dict[tuple[str, str], float],
  neg_weight: float,
) -> float:
  """RaTEScore of one pair from (embeddings [E, D], types) of reference and prediction."""
  if len(ref[1]) == 0 or len(pred[1]) == 0:
    return NO_ENTITY_SCORE
  p = directional_score(ref[0], pred[0], ref[1], pred[1], weights, neg_weight)
  r = directional_score(pred[0], ref[0], pred[1], ref[1], weights, neg_weight)
  return 0.0 if p + r == 0 else 2 * p * r / (p + r)


_SENT = re.compile(r"(?<=[.!?])\s+|\n+")


def split_sentences(text: str) -> list[str]:
  """Sentences with at least one word and three characters (as the original filters)."""
  return [s.strip() for s in _SENT.split(text) if len(s.strip()) >= 3 and s.split()]


def decode_bio(tokens: Sequence[str], labels: Sequence[str]) -> list[tuple[int, int, str]]:
  """IOB tags -> (start, end_inclusive, type) spans; a stray I- tag opens nothing."""
  spans: list[tuple[int, int, str]] = []
  start, typ = None, None
  for i, lab in enumerate(labels):
    if lab.startswith("B-"):
      if start is not None:
        spans.append((start, i - 1, typ))
      start, typ = i, lab[2:]
    elif lab.startswith("I-") and start is not None:
      continue
    else:
      if start is not None:
        spans.append((start, i - 1, typ))
      start, typ = None, None
  if start is not None:
    spans.append((start, len(labels) - 1, typ))
  return spans


def _resolve_paths(
  ner: str | os.PathLike[str], embed: str | os.PathLike[str] | None
) -> tuple[str, str]:
  ner = os.fspath(ner)
  if embed is None:
    if os.path.isdir(os.path.join(ner, "ner")) and os.path.isdir(os.path.join(ner, "encoder")):
      return os.path.join(ner, "ner"), os.path.join(ner, "encoder")
    raise ValueError(
      f"RaTEScore needs an NER model and an entity encoder: pass --ratescore-embed-model, "
      f"or give --ratescore-model a directory with 'ner/' and 'encoder/' subdirectories (got {ner!r})"
    )
  return ner, os.fspath(embed)


class RaTEScorer:
  """Loads the local NER model and entity encoder once and scores report pairs."""

  def __init__(
    self,
    ner_model_path: str | os.PathLike[str],
    embed_model_path: str | os.PathLike[str] | None = None,
    affinity: str = "positive",
    batch_size: int = 16,
    device: str = "cpu",
  ) -> None:
    import torch
    from transformers import AutoModel, AutoModelForTokenClassification, AutoTokenizer

    ner, emb = _resolve_paths(ner_model_path, embed_model_path)
    ner = check_model_dir(ner, "RaTEScore NER", "--ratescore-model")
    emb = check_model_dir(emb, "RaTEScore entity encoder", "--ratescore-embed-model")
    self._torch = torch
    self.ner_tok = AutoTokenizer.from_pretrained(ner, local_files_only=True)
    self.ner = (
      AutoModelForTokenClassification.from_pretrained(ner, local_files_only=True).eval().to(device)
    )
    self.emb_tok = AutoTokenizer.from_pretrained(emb, local_files_only=True)
    self.emb = AutoModel.from_pretrained(emb, local_files_only=True).eval().to(device)
    self.id2label = {int(k): v for k, v in self.ner.config.id2label.items()}
    bad = {v[2:] for v in self.id2label.values() if v != "O" and v[2:] not in TYPES}
    if bad:
      raise ValueError(
        f"NER model labels {sorted(bad)} are not RaTE types {TYPES}; use a RaTE-NER model"
      )
    self.weights, self.neg_weight = affinity_matrix(affinity)
    self.batch_size, self.device = batch_size, device

  def entities(self, texts: Sequence[str]) -> list[list[tuple[str, str]]]:
    """(entity text, type) per report, sentences concatenated."""
    torch = self._torch
    sents, owner = [], []
    for i, t in enumerate(texts):
      for s in split_sentences(t):
        sents.append(s)
        owner.append(i)
    out: list[list[tuple[str, str]]] = [[] for _ in texts]
    special = set(self.ner_tok.all_special_ids)
    with torch.inference_mode():
      for b in range(0, len(sents), self.batch_size):
        batch = sents[b : b + self.batch_size]
        enc = self.ner_tok(
          batch, max_length=512, padding=True, truncation=True, return_tensors="pt"
        ).to(self.device)
        pred_BL = self.ner(**enc).logits.argmax(-1).cpu().numpy()
        ids_BL = enc["input_ids"].cpu().numpy()
        mask_BL = enc["attention_mask"].cpu().numpy()
        for k in range(len(batch)):
          keep = [
            j for j in range(ids_BL.shape[1]) if mask_BL[k, j] and ids_BL[k, j] not in special
          ]
          toks = self.ner_tok.convert_ids_to_tokens([int(ids_BL[k, j]) for j in keep])
          labs = [self.id2label[int(pred_BL[k, j])] for j in keep]
          for s, e, typ in decode_bio(toks, labs):
            out[owner[b + k]].append(
              (self.ner_tok.convert_tokens_to_string(toks[s : e + 1]).strip(), typ)
            )
    return out

  def embed(self, entities: Sequence[str]) -> np.ndarray:
    """[CLS] embeddings [E, D] of entity strings (max 30 tokens each)."""
    torch = self._torch
    if not entities:
      return np.zeros((0, 1))
    with torch.inference_mode():
      enc = self.emb_tok(
        list(entities), truncation=True, padding=True, max_length=30, return_tensors="pt"
      ).to(self.device)
      return self.emb(**enc).last_hidden_state[:, 0, :].double().cpu().numpy()

  def score(self, preds: Sequence[str], refs: Sequence[str]) -> np.ndarray:
    """Per-pair RaTEScore [N]."""
    if len(preds) != len(refs):
      raise ValueError(f"{len(preds)} predictions but {len(refs)} references")
    ref_ents, pred_ents = self.entities(refs), self.entities(preds)
    out = np.zeros(len(preds))
    for i, (re_, pe) in enumerate(zip(ref_ents, pred_ents)):
      r = (self.embed([e for e, _ in re_]), [t for _, t in re_])
      p = (self.embed([e for e, _ in pe]), [t for _, t in pe])
      out[i] = pair_score(r, p, self.weights, self.neg_weight)
    return out


def ratescore(
  preds: Sequence[str],
  refs: Sequence[str],
  ner_model_path: str | os.PathLike[str] | None,
  embed_model_path: str | os.PathLike[str] | None = None,
  affinity: str = "positive",
  device: str = "cpu",
) -> np.ndarray | None:
  """Per-pair RaTEScore [N], or None (not computed) when no NER model path is given."""
  if ner_model_path is None:
    return None
  return RaTEScorer(ner_model_path, embed_model_path, affinity=affinity, device=device).score(
    preds, refs
  )
