"""Tokenizer training/loading, the prompt layout against transformers' chat template."""

import json

import numpy as np
import pytest
import tokenizers
from tokenizers import models, pre_tokenizers

from echo_jax.data.tokenizer import (
  ECHO_INSTRUCTION,
  TOKEN_NAMES,
  decode,
  encode_prompt,
  encode_report,
  load_tokenizer,
  prompt_text,
  train_bpe_tokenizer,
)
from echo_jax.models.config import TokenIds
from echo_jax.models.presets import TINY_TOKEN_IDS

REPORTS = [
  "Findings: The lungs are clear. No pleural effusion or pneumothorax. The heart size is normal. "
  "Impression: No acute cardiopulmonary process.",
  "Findings: Small left pleural effusion. Mild cardiomegaly. Endotracheal tube 4 cm above the carina. "
  "Impression: Small left effusion.",
  "Findings: Right lower lobe opacity, consistent with pneumonia. Impression: Pneumonia.",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  out = tmp_path_factory.mktemp("tok")
  tok = train_bpe_tokenizer(REPORTS * 20 + [ECHO_INSTRUCTION], vocab_size=1024, out_dir=str(out))
  return tok, str(out)


def test_trained_special_ids_and_roundtrip(tiny):
  tok, out = tiny
  assert tok.ids == TINY_TOKEN_IDS
  tok.check_ids(TINY_TOKEN_IDS)
  with pytest.raises(ValueError, match="differ"):
    tok.check_ids(TokenIds())
  assert 8 + 256 < tok.vocab_size <= 1024
  # Reloading the saved directory gives the same tokenizer.
  again = load_tokenizer(out)
  assert again.ids == TINY_TOKEN_IDS and again.vocab_size == tok.vocab_size
  for text in REPORTS + ["Unseen wörds: 42 mm, ‘quotes’ and 胸部."]:
    ids = again.encode(text)
    assert all(i >= 8 for i in ids)  # plain text never produces special ids
    assert again.decode(ids) == text
  # Frequent words were merged: far fewer tokens than bytes.
  assert len(tok.encode(REPORTS[0])) < len(REPORTS[0].encode()) / 3


def test_prompt_matches_transformers_chat_template(tiny):
  from transformers import AutoTokenizer

  tok, out = tiny
  hf = AutoTokenizer.from_pretrained(out)
  messages = [
    {
      "role": "user",
      "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": ECHO_INSTRUCTION}],
    }
  ]
  text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
  assert text == prompt_text(2)
  # The processor expands each <|image_pad|> to the image's merged token count.
  counts = [6, 3]
  parts = text.split("<|image_pad|>")
  expanded = (
    parts[0] + "<|image_pad|>" * counts[0] + parts[1] + "<|image_pad|>" * counts[1] + parts[2]
  )
  ref = hf(expanded, add_special_tokens=False)["input_ids"]
  ids = encode_prompt(tok, counts)
  assert ids.dtype == np.int32
  np.testing.assert_array_equal(ids, ref)
  assert int((ids == tok.ids.image_pad).sum()) == 9
  vs, ve = np.flatnonzero(ids == tok.ids.vision_start), np.flatnonzero(ids == tok.ids.vision_end)
  np.testing.assert_array_equal(ve - vs - 1, counts)
  last = int(np.flatnonzero(ids == tok.ids.im_start)[-1])
  assert (
    ids[0] == tok.ids.im_start
    and tok.decode(ids[last:], skip_special_tokens=False) == "<|im_start|>assistant\n"
  )
  with pytest.raises(ValueError, match="positive"):
    encode_prompt(tok, [0])


def test_report_eos_and_decode(tiny):
  tok, _ = tiny
  ids = encode_report(tok, REPORTS[1])
  assert ids[-1] == tok.ids.eos and tok.ids.eos not in ids[:-1]
  assert encode_report(tok, REPORTS[1], add_eos=False).tolist() == ids[:-1].tolist()
  # Decoding stops at the first EOS and drops pad / mask tokens.
  noisy = list(ids) + [tok.ids.pad, tok.ids.mask] + tok.encode(" garbage")
  assert decode(tok, noisy) == REPORTS[1]
  assert decode(tok, [tok.ids.mask, *ids[:3], tok.ids.pad]) == tok.decode(ids[:3])
  assert "garbage" in decode(tok, noisy, stop_at_eos=False)
  with pytest.raises(ValueError, match="special token"):
    encode_report(tok, "Impression: fine.<|im_end|>")
  with pytest.raises(ValueError, match="empty"):
    encode_report(tok, "  ")


def test_load_adds_mask_after_existing_tokens(tmp_path):
  """A Qwen-style tokenizer without <|MASK|> gets it as the next id (151665 for Qwen2.5)."""
  backend = tokenizers.Tokenizer(models.BPE())
  backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  backend.add_tokens([chr(c) for c in range(97, 123)])
  names = [t for k, t in TOKEN_NAMES.items() if k != "mask"]
  backend.add_special_tokens(names)
  before = backend.get_vocab_size(with_added_tokens=True)
  backend.save(str(tmp_path / "tokenizer.json"))
  tok = load_tokenizer(str(tmp_path))
  assert tok.ids.mask == before and tok.vocab_size == before + 1
  assert tok.ids.pad == 26 and tok.ids.eos == 28
  # Already present: loading keeps its id.
  tok.backend.save(str(tmp_path / "with_mask.json"))
  assert load_tokenizer(str(tmp_path / "with_mask.json")).ids.mask == before
  with pytest.raises(ValueError, match="no tokenizer.json"):
    load_tokenizer(str(tmp_path / "nowhere"))
  # A tokenizer without the Qwen special tokens is refused with a clear message.
  plain = tokenizers.Tokenizer(models.BPE())
  plain.save(str(tmp_path / "plain.json"))
  with pytest.raises(ValueError, match="lacks the special token"):
    load_tokenizer(str(tmp_path / "plain.json"))
  json.loads((tmp_path / "tokenizer.json").read_text())  # untouched on disk


def test_vocab_size_validation():
  with pytest.raises(ValueError, match="must exceed"):
    train_bpe_tokenizer(REPORTS, vocab_size=200)
