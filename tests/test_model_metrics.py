"""SemScore and RaTEScore with tiny random models built and saved here (no downloads)."""

import subprocess
import sys

import numpy as np
import pytest

from echo_jax.eval import ratescore as rs
from echo_jax.eval.semscore import semscore

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

WORDS = [
  "[PAD]",
  "[UNK]",
  "[CLS]",
  "[SEP]",
  "[MASK]",
  "the",
  "lungs",
  "are",
  "clear",
  ".",
  "no",
  "small",
  "left",
  "right",
  "pleural",
  "effusion",
  "heart",
  "is",
  "enlarged",
  "mild",
  "edema",
  "pneumonia",
  "findings",
  ":",
  "impression",
  "lobe",
  "lower",
  "opacity",
]
RATE_LABELS = ["O"] + [f"{p}-{t}" for t in rs.TYPES for p in ("B", "I")]


def _tokenizer(tmp_path):
  vocab = tmp_path / "vocab.txt"
  vocab.write_text("\n".join(WORDS))
  return transformers.BertTokenizer(str(vocab))


def _config(**kw):
  return transformers.BertConfig(
    vocab_size=len(WORDS),
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=64,
    **kw,
  )


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("bert")
  torch.manual_seed(0)
  transformers.BertModel(_config()).save_pretrained(d)
  _tokenizer(d).save_pretrained(d)
  return d


def _ner_dir(root, label):
  """Tiny token classifier that tags every token with `label` (bias dominates)."""
  d = root / f"ner_{label}"
  cfg = _config(
    id2label=dict(enumerate(RATE_LABELS)), label2id={k: i for i, k in enumerate(RATE_LABELS)}
  )
  torch.manual_seed(1)
  m = transformers.BertForTokenClassification(cfg)
  with torch.no_grad():
    m.classifier.weight.zero_()
    m.classifier.bias.fill_(-10.0)
    m.classifier.bias[RATE_LABELS.index(label)] = 10.0
  m.save_pretrained(d)
  _tokenizer(d).save_pretrained(d)
  return d


PREDS = [
  "Findings: the lungs are clear.",
  "mild edema. small left pleural effusion.",
  "the heart is enlarged.",
]
REFS = [
  "Findings: the lungs are clear.",
  "small right pleural effusion.",
  "right lower lobe opacity. pneumonia.",
]


def test_semscore_not_computed_without_path():
  assert semscore(PREDS, REFS, None) is None


def test_semscore_matches_unbatched_cls_cosine(bert_dir):
  got = semscore(PREDS, REFS, bert_dir, batch_size=2)
  tok = transformers.AutoTokenizer.from_pretrained(bert_dir)
  model = transformers.AutoModel.from_pretrained(bert_dir).eval()
  want = []
  with torch.no_grad():
    for p, r in zip(PREDS, REFS):
      a = model(**tok(p, return_tensors="pt")).last_hidden_state[0, 0].double()
      b = model(**tok(r, return_tensors="pt")).last_hidden_state[0, 0].double()
      want.append(float(a @ b / (a.norm() * b.norm())))
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert got[0] == pytest.approx(1.0, abs=1e-6)  # identical texts


def test_semscore_bad_path_says_what_to_do(tmp_path):
  with pytest.raises(FileNotFoundError, match="--semscore-model"):
    semscore(PREDS, REFS, tmp_path / "missing")


def test_package_does_not_import_torch():
  code = "import sys, echo_jax.evaluate, echo_jax.eval.pipeline; print('torch' in sys.modules)"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "False"


def test_positive_affinity_keeps_only_abnormality_and_disease_rows():
  w, neg = rs.affinity_matrix("positive")
  long_w, _ = rs.affinity_matrix("long")
  assert neg == pytest.approx(0.3611577852354489)
  for (row, col), v in w.items():
    if row in ("ABNORMALITY", "DISEASE"):
      assert v == long_w[(row, col)]
    else:
      assert v == 0.0
  assert w[("DISEASE", "ANATOMY")] == pytest.approx(0.9950209388542061)


def test_pair_score_by_hand():
  w, neg = rs.affinity_matrix("positive")
  e = np.array([[1.0, 0.0], [0.0, 1.0]])
  # no entity on one side -> 0.1
  assert rs.pair_score((e, ["ABNORMALITY", "ANATOMY"]), (np.zeros((0, 2)), []), w, neg) == 0.1
  # identical entities -> 1
  assert rs.pair_score(
    (e, ["ABNORMALITY", "DISEASE"]), (e, ["ABNORMALITY", "DISEASE"]), w, neg
  ) == pytest.approx(1.0)
  # only non-abnormality entities -> every weight is zero -> 0
  assert rs.pair_score((e, ["NON-ABNORMALITY"] * 2), (e, ["NON-ABNORMALITY"] * 2), w, neg) == 0.0
  # negated type pair is down-weighted by neg_weight: ref ABNORMALITY vs pred NON-ABNORMALITY, same vector
  ref = (np.array([[1.0, 0.0]]), ["ABNORMALITY"])
  pred = (np.array([[1.0, 0.0]]), ["NON-ABNORMALITY"])
  assert rs.directional_score(ref[0], pred[0], ref[1], pred[1], w, neg) == pytest.approx(neg)
  # pred->ref starts from a NON-ABNORMALITY entity: zero weight, so the harmonic mean is 0
  assert rs.directional_score(pred[0], ref[0], pred[1], ref[1], w, neg) == 0.0
  assert rs.pair_score(ref, pred, w, neg) == 0.0
  # cosine, not dot product: scaled vectors give the same score
  a = (np.array([[3.0, 4.0]]), ["DISEASE"])
  b = (np.array([[0.6, 0.8]]) * 10, ["DISEASE"])
  assert rs.pair_score(a, b, w, neg) == pytest.approx(1.0)


def test_decode_bio():
  labs = ["B-ANATOMY", "I-ANATOMY", "O", "I-DISEASE", "B-ABNORMALITY", "B-DISEASE", "I-DISEASE"]
  assert rs.decode_bio(list("abcdefg"), labs) == [
    (0, 1, "ANATOMY"),
    (4, 4, "ABNORMALITY"),
    (5, 6, "DISEASE"),
  ]


def test_ratescore_not_computed_without_path():
  assert rs.ratescore(PREDS, REFS, None) is None


def test_ratescore_no_entities_scores_point_one(tmp_path, bert_dir):
  got = rs.ratescore(PREDS, REFS, _ner_dir(tmp_path, "O"), bert_dir)
  np.testing.assert_array_equal(got, [0.1, 0.1, 0.1])


def test_ratescore_all_abnormality_entities_matches_direct_computation(tmp_path, bert_dir):
  scorer = rs.RaTEScorer(_ner_dir(tmp_path, "B-ABNORMALITY"), bert_dir)
  ents = scorer.entities(["the heart is enlarged."])[0]
  assert ents == [(w, "ABNORMALITY") for w in ["the", "heart", "is", "enlarged", "."]]
  got = scorer.score(PREDS, REFS)
  assert got[0] == pytest.approx(1.0)
  # independent computation for pair 2: every token its own ABNORMALITY entity
  tok = transformers.AutoTokenizer.from_pretrained(bert_dir)
  model = transformers.AutoModel.from_pretrained(bert_dir).eval()

  def emb(words):
    with torch.no_grad():
      e = (
        model(**tok(words, padding=True, return_tensors="pt"))
        .last_hidden_state[:, 0]
        .double()
        .numpy()
      )
    return e / np.linalg.norm(e, axis=1, keepdims=True)

  words_p = [w for s in ("mild edema.", "small left pleural effusion.") for w in tok.tokenize(s)]
  words_r = tok.tokenize("right lower lobe opacity.") + tok.tokenize("pneumonia.")
  sim = emb(words_r) @ emb(words_p).T
  p, r = sim.max(1).mean(), sim.max(0).mean()  # equal weights, no negated pairs
  assert got[2] == pytest.approx(2 * p * r / (p + r), rel=1e-6)


def test_ratescore_positive_variant_ignores_non_abnormality(tmp_path, bert_dir):
  ner = _ner_dir(tmp_path, "B-NON-ABNORMALITY")
  assert rs.ratescore(PREDS[1:], REFS[1:], ner, bert_dir).tolist() == [0.0, 0.0]
  long = rs.ratescore(PREDS[1:], REFS[1:], ner, bert_dir, affinity="long")
  assert (long > 0).all()


def test_ratescore_path_layout_and_errors(tmp_path, bert_dir):
  with pytest.raises(ValueError, match="ratescore-embed-model"):
    rs.RaTEScorer(tmp_path)
  root = tmp_path / "rate"
  root.mkdir()
  (root / "ner").symlink_to(_ner_dir(tmp_path, "O"))
  (root / "encoder").symlink_to(bert_dir)
  assert rs.RaTEScorer(root).score(["a"], ["b"]).tolist() == [0.1]
  bad = tmp_path / "bad_ner"
  cfg = _config(id2label={0: "O", 1: "B-PERSON"}, label2id={"O": 0, "B-PERSON": 1})
  transformers.BertForTokenClassification(cfg).save_pretrained(bad)
  _tokenizer(bad).save_pretrained(bad)
  with pytest.raises(ValueError, match="PERSON"):
    rs.RaTEScorer(bad, bert_dir)
