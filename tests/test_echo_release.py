"""The released evaluation convention: formatting, rouge-package ROUGE-L, plain CIDEr with a
document-frequency file, nltk METEOR, judge perplexity, and `evaluate --convention`."""

import json
import math

import nltk
import numpy as np
import pytest
from rouge import Rouge

from echo_jax import evaluate
from echo_jax.eval import echo_release as er
from echo_jax.user_errors import UserError

PAIRS = [  # (prediction as generated, reference as echo_jax writes it)
  (
    "Findings: The lungs are clear. No pleural effusion. Heart size is normal., "
    "Impression: No acute cardiopulmonary process.",
    "Findings: Lungs are clear. There is no pleural effusion or pneumothorax. "
    "Impression: No acute cardiopulmonary abnormality.",
  ),
  (
    "Findings: Small left pleural effusion. Impression: Small left effusion.",
    "Findings: Moderate left pleural effusion with basilar atelectasis. "
    "Impression: Left pleural effusion.",
  ),
  ("The heart is enlarged.", "Findings: Cardiomegaly. Impression: Cardiomegaly."),
]


def test_sections_and_formatting():
  pred, ref = PAIRS[0]
  assert er.split_sections(pred) == (
    "The lungs are clear. No pleural effusion. Heart size is normal.,",
    "No acute cardiopulmonary process.",
  )
  assert er.format_prediction(pred) == (
    "Finding: The lungs are clear. No pleural effusion. Heart size is normal., "
    "Impression: No acute cardiopulmonary process."
  )
  # The reference gets a full stop appended, even after one (as released).
  assert er.format_reference(ref).endswith("Impression: No acute cardiopulmonary abnormality..")
  # No markers: both sections empty (the released parser's fallback).
  assert er.format_prediction(PAIRS[2][0]) == "Finding:  Impression: "
  assert er.split_sections("所见：两肺清晰。 结论：未见异常。") == ("两肺清晰。", "未见异常。")


def test_rouge_l_is_the_rouge_package_on_the_released_strings():
  hyps = [
    "finding: the lungs are clear. no pleural effusion. heart size is normal., "
    "impression: no acute cardiopulmonary process.",
    "finding: small left pleural effusion. impression: small left effusion.",
    "finding:  impression: ",
  ]
  refs = [
    "findings: lungs are clear. there is no pleural effusion or pneumothorax. "
    "impression: no acute cardiopulmonary abnormality..",
    "findings: moderate left pleural effusion with basilar atelectasis. "
    "impression: left pleural effusion..",
    "findings: cardiomegaly. impression: cardiomegaly..",
  ]
  want = [s["rouge-l"]["f"] for s in Rouge().get_scores(hyps, refs)]
  got = er.rouge_l([p for p, _ in PAIRS], [r for _, r in PAIRS])
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
  assert 0 < got[1] < got[0] < 1


def _df_file(tmp_path, df, n):
  path = tmp_path / "df.json"
  path.write_text(json.dumps({"num_documents": n, "document_frequency": df}))
  return str(path)


def test_plain_cider_by_hand(tmp_path):
  """pred "Finding: a Impression: b" vs ref "Findings: a Impression: c." with N = 10
  documents; the marker words and b are in every document (IDF 0), a and c in one, every
  bigram in none. Unigram cosine 1/sqrt(2), bigram 1/3 (one of three shared), none of the
  trigrams and no 4-grams: CIDEr = 10 * (1/sqrt(2) + 1/3) / 4."""
  n = 10
  df = {"finding": n, "findings": n, "impression": n, "b": n, "a": 1, "c": 1}
  df, docs = er.load_document_frequency(_df_file(tmp_path, df, n))
  got = er.cider_plain(["Findings: a Impression: b"], ["Findings: a Impression: c"], df, docs)
  np.testing.assert_allclose(got, [10 * (1 / math.sqrt(2) + 1 / 3) / 4], rtol=1e-12)
  # Same sections: only "finding" vs "findings" differ, which leaves the unigram cosine
  # at 1 (both have IDF 0) and shares 3 of 4 bigrams, 2 of 3 trigrams, 1 of 2 4-grams.
  same = er.cider_plain(["Findings: a c Impression: c"], ["Findings: a c Impression: c"], df, docs)
  np.testing.assert_allclose(same, [10 * (1 + 3 / 4 + 2 / 3 + 1 / 2) / 4], rtol=1e-12)
  with pytest.raises(UserError, match="num_documents=0 is not a positive int"):
    er.load_document_frequency(_df_file(tmp_path, {}, 0))


class _NoSynonyms:
  """A WordNet stand-in without synonyms (nltk's data cannot be downloaded here)."""

  def synsets(self, *args, **kwargs):
    return []


def test_meteor_is_nltk_on_echo_tokens():
  from nltk.translate.meteor_score import single_meteor_score

  preds, refs = [p for p, _ in PAIRS], [r for _, r in PAIRS]
  got = er.meteor_nltk(preds, refs, wordnet=_NoSynonyms())
  want = [
    single_meteor_score(
      er.echo_tokenize(er.format_reference(r)),
      er.echo_tokenize(er.format_prediction(p)),
      wordnet=_NoSynonyms(),
    )
    for p, r in PAIRS
  ]
  np.testing.assert_allclose(got, want)
  assert got[0] > got[2]
  try:
    nltk.data.find("corpora/wordnet")
  except LookupError:  # without WordNet data the metric is "not computed", never 0
    assert er.meteor_nltk(preds, refs) is None


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from echo_jax.data.tokenizer import train_bpe_tokenizer

  path = tmp_path_factory.mktemp("judge")
  texts = [p + " " + r for p, r in PAIRS] + [er.JUDGE_PREFIX] * 3
  tok = train_bpe_tokenizer(texts, 300, out_dir=str(path))
  config = transformers.Qwen2Config(
    vocab_size=tok.vocab_size,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
  )
  torch.manual_seed(0)
  transformers.Qwen2ForCausalLM(config).save_pretrained(path)
  return str(path)


def test_judge_perplexity_mean_of_per_report_values(judge_dir):
  import torch
  from transformers import AutoModelForCausalLM, AutoTokenizer

  judge = er.JudgePerplexity(judge_dir)
  preds = [p for p, _ in PAIRS]
  got = judge.score(preds)
  tok = AutoTokenizer.from_pretrained(judge_dir)
  model = AutoModelForCausalLM.from_pretrained(judge_dir).eval()
  n_prefix = len(tok(er.JUDGE_PREFIX)["input_ids"])
  for p, value in zip(preds, got, strict=True):
    ids = tok(er.JUDGE_PREFIX + er.format_prediction(p))["input_ids"]
    with torch.no_grad():
      logp = torch.log_softmax(model(torch.tensor([ids])).logits[0], -1)
    nll = [-float(logp[t - 1, ids[t]]) for t in range(n_prefix, len(ids))]
    assert value == pytest.approx(math.exp(sum(nll) / len(nll)), rel=1e-5)
  assert len(set(np.round(got, 6))) == len(preds)


def test_evaluate_cli_with_the_released_convention(tmp_path, judge_dir, capsys):
  preds = tmp_path / "p.jsonl"
  with open(preds, "w") as f:
    for n, (p, r) in enumerate(PAIRS):
      f.write(json.dumps({"id": str(n), "prediction": p, "reference": r}) + "\n")
  df = _df_file(tmp_path, {"findings": 2, "impression": 3}, 100)
  argv = ["--predictions", str(preds), "--out", str(tmp_path / "out"), "--no-meteor"]
  argv += ["--n-boot", "20", "--convention", "echo-release", "--cider-df", df]
  evaluate.main([*argv, "--judge-model", judge_dir])
  metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
  m = metrics["models"]["model"]["metrics"]
  refs = [r for _, r in PAIRS]
  assert m["echo-release/rouge_l"] == pytest.approx(er.rouge_l([p for p, _ in PAIRS], refs).mean())
  assert m["echo-release/cider"] > 0 and "echo-release/cider_corpus_idf" not in m
  assert m["echo-release/meteor"] is None and m["echo-release/judge_ppl"] > 1
  assert "100 documents" in metrics["echo_release"]["cider_idf"]
  assert "echo-release CIDEr IDF: document frequencies of" in capsys.readouterr().out
  rows = [json.loads(line) for line in (tmp_path / "out" / "per_study.jsonl").open()]
  assert all("echo-release/rouge_l" in row for row in rows)

  # Without a document-frequency file the number says it used the corpus IDF.
  evaluate.main([*argv[:-2], "--out", str(tmp_path / "out2")])
  m2 = json.loads((tmp_path / "out2" / "metrics.json").read_text())["models"]["model"]["metrics"]
  assert "echo-release/cider" not in m2 and m2["echo-release/cider_corpus_idf"] is not None


def test_judge_directory_must_hold_a_model(tmp_path):
  with pytest.raises(UserError, match="judge model directory without config.json"):
    er.JudgePerplexity(str(tmp_path))


def test_chinese_text_is_refused():
  result = {"models": {"model": {"metrics": {}, "ci": {}}}, "per_study": []}
  records = [{"id": "1", "prediction": "所见：两肺清晰。 结论：未见异常。", "reference": "x"}]
  with pytest.raises(UserError, match="translate the reports to English first"):
    er.add_to_result(result, records, meteor=False)
