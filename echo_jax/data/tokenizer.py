"""Tokenizers and the one prompt layout every model uses.

- `load_tokenizer(path)`: a Hugging Face `tokenizer.json` (e.g. Qwen2.5-VL's or
  Lingshu-7B's) from a local directory; `<|MASK|>` is added as a special token when absent
  (for Qwen2.5 it lands at id 151665, the `TokenIds.mask` default).
- `train_bpe_tokenizer(texts, vocab_size, out_dir)`: the tiny models' byte-level BPE, with
  `TINY_SPECIAL_TOKENS` first so the special ids are `TINY_TOKEN_IDS` (0..7). It uses
  Qwen2's normalizer (NFC), split regex and byte-level alphabet, so any text encodes.
- `encode_prompt(tok, num_image_tokens)`: the Qwen2.5-VL chat template, exactly as
  transformers renders it for one user turn with images then text, with the default
  system prompt, and each image's `<|image_pad|>` expanded to its number of merged vision
  tokens:

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n
    <|im_start|>user\\n<|vision_start|><|image_pad|>*n1<|vision_end|>...{instruction}<|im_end|>\\n
    <|im_start|>assistant\\n

  The instruction is the released ECHO models' English one.
- `encode_report(tok, text)`: the response ids, report tokens followed by the EOS
  (`<|im_end|>`) appended here (`add_eos=False` to leave it out).
- `decode(tok, ids)`: text up to the first EOS, special tokens dropped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence

import numpy as np
import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, trainers

from echo_jax.models.config import TokenIds

# The tiny BPE's special tokens, first in its vocabulary in this order: ids 0..7, the
# tiny preset's TokenIds (pad, im_start, eos, vision_start, vision_end, image_pad,
# video_pad, mask).
TINY_SPECIAL_TOKENS = (
  "<|endoftext|>",
  "<|im_start|>",
  "<|im_end|>",
  "<|vision_start|>",
  "<|vision_end|>",
  "<|image_pad|>",
  "<|video_pad|>",
  "<|MASK|>",
)

ECHO_INSTRUCTION = (
  "Review this chest X-ray and write a report. Use this format: Findings: {}, Impression: {}."
)
DEFAULT_SYSTEM = "You are a helpful assistant."
MASK_TOKEN = "<|MASK|>"

# TokenIds field -> token string (the Qwen2.5-VL names).
TOKEN_NAMES = {
  "pad": "<|endoftext|>",
  "im_start": "<|im_start|>",
  "eos": "<|im_end|>",
  "vision_start": "<|vision_start|>",
  "vision_end": "<|vision_end|>",
  "image_pad": "<|image_pad|>",
  "video_pad": "<|video_pad|>",
  "mask": MASK_TOKEN,
}

# Qwen2's pre-tokenizer split (letters, single digits, punctuation runs, newlines, spaces).
_QWEN2_SPLIT = (
  r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
  r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# The Qwen2.5-VL chat template (tokenizer_config.json of the released models), written
# into trained tokenizers so transformers renders the same prompt.
QWEN2_5_VL_CHAT_TEMPLATE = (
  "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
  "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
  "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
  "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
  "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
  "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
  "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
  "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
  "{% elif content['type'] == 'video' or 'video' in content %}"
  "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
  "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
  "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
  "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class Tokenizer:
  """A `tokenizers.Tokenizer` plus the special ids as a `TokenIds`."""

  def __init__(self, backend: tokenizers.Tokenizer):
    self.backend = backend
    missing = [t for t in TOKEN_NAMES.values() if backend.token_to_id(t) is None]
    if missing:
      raise ValueError(
        f"the tokenizer lacks the special token(s) {missing}; it is not a Qwen2-style tokenizer"
      )
    self.ids = TokenIds(**{field: backend.token_to_id(tok) for field, tok in TOKEN_NAMES.items()})
    self._special = set(TOKEN_NAMES.values())

  @property
  def vocab_size(self) -> int:
    """Number of ids (base vocabulary plus added tokens); the model's vocab may be larger."""
    return self.backend.get_vocab_size(with_added_tokens=True)

  def check_ids(self, expected: TokenIds) -> None:
    """Raise ValueError when a model config's token ids disagree with this tokenizer."""
    if expected != self.ids:
      diff = {
        k: (v, getattr(self.ids, k)) for k, v in vars(expected).items() if getattr(self.ids, k) != v
      }
      raise ValueError(
        f"model config token ids differ from the tokenizer's (config, tokenizer): {diff}"
      )

  def encode(self, text: str) -> list[int]:
    """Ids of plain text; special-token strings inside it are NOT allowed (ValueError)."""
    found = [t for t in self._special if t in text]
    if found:
      raise ValueError(f"text contains the special token string(s) {found}: {text[:80]!r}")
    return self.backend.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
    return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def save(self, out_dir: str) -> None:
    """Write tokenizer.json and a tokenizer_config.json transformers can load."""
    os.makedirs(out_dir, exist_ok=True)
    self.backend.save(os.path.join(out_dir, "tokenizer.json"))
    config = {
      "tokenizer_class": "PreTrainedTokenizerFast",
      "bos_token": None,
      "eos_token": TOKEN_NAMES["eos"],
      "pad_token": TOKEN_NAMES["pad"],
      "mask_token": MASK_TOKEN,
      "model_max_length": 32768,
      "chat_template": QWEN2_5_VL_CHAT_TEMPLATE,
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
      json.dump(config, f, indent=2)


def load_tokenizer(path: str) -> Tokenizer:
  """Load a local HF tokenizer (a directory holding tokenizer.json, or the file itself)."""
  file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
  if not os.path.isfile(file):
    raise ValueError(
      f"no tokenizer.json at {path}: pass a local Hugging Face model/tokenizer directory"
    )
  backend = tokenizers.Tokenizer.from_file(file)
  if backend.token_to_id(MASK_TOKEN) is None:
    backend.add_special_tokens([AddedToken(MASK_TOKEN, special=True, normalized=False)])
  return Tokenizer(backend)


def train_bpe_tokenizer(
  texts: Iterable[str], vocab_size: int, out_dir: str | None = None
) -> Tokenizer:
  """Train a byte-level BPE (Qwen2-style pre-tokenization) with TINY_SPECIAL_TOKENS at 0..7.

  `vocab_size` counts the special tokens and the 256 byte symbols. Saved to `out_dir`
  (tokenizer.json + tokenizer_config.json) when given.
  """
  min_size = len(TINY_SPECIAL_TOKENS) + 256
  if vocab_size <= min_size:
    raise ValueError(f"vocab_size={vocab_size} must exceed {min_size} (special tokens + 256 bytes)")
  backend = tokenizers.Tokenizer(models.BPE())
  backend.normalizer = normalizers.NFC()
  backend.pre_tokenizer = pre_tokenizers.Sequence(
    [
      pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated"),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ]
  )
  backend.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=vocab_size,
    special_tokens=[AddedToken(t, special=True, normalized=False) for t in TINY_SPECIAL_TOKENS],
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
  )
  backend.train_from_iterator(texts, trainer=trainer)
  tok = Tokenizer(backend)
  if out_dir is not None:
    tok.save(out_dir)
  return tok


def prompt_text(
  num_images: int, instruction: str = ECHO_INSTRUCTION, system: str = DEFAULT_SYSTEM
) -> str:
  """The chat-template text with one unexpanded <|image_pad|> per image (for reference)."""
  image = TOKEN_NAMES["vision_start"] + TOKEN_NAMES["image_pad"] + TOKEN_NAMES["vision_end"]
  return (
    f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{image * num_images}{instruction}"
    "<|im_end|>\n<|im_start|>assistant\n"
  )


def encode_prompt(
  tokenizer: Tokenizer,
  num_image_tokens: Sequence[int],
  instruction: str = ECHO_INSTRUCTION,
  system: str = DEFAULT_SYSTEM,
) -> np.ndarray:
  """Context ids (int32): system turn, user turn with the images then the instruction, and
  the assistant header; image i contributes num_image_tokens[i] <|image_pad|> tokens."""
  if any(n <= 0 for n in num_image_tokens):
    raise ValueError(f"num_image_tokens={list(num_image_tokens)} must all be positive")
  ids = tokenizer.ids
  text = tokenizer.encode
  out: list[int] = [ids.im_start, *text(f"system\n{system}"), ids.eos, *text("\n")]
  out += [ids.im_start, *text("user\n")]
  for n in num_image_tokens:
    out += [ids.vision_start, *([ids.image_pad] * int(n)), ids.vision_end]
  out += [*text(instruction), ids.eos, *text("\n"), ids.im_start, *text("assistant\n")]
  return np.asarray(out, np.int32)


def encode_report(tokenizer: Tokenizer, text: str, add_eos: bool = True) -> np.ndarray:
  """Response ids (int32): the report's tokens, then EOS (<|im_end|>) unless add_eos=False."""
  if not text.strip():
    raise ValueError("empty report text")
  out = tokenizer.encode(text)
  if add_eos:
    out.append(tokenizer.ids.eos)
  return np.asarray(out, np.int32)


def decode(tokenizer: Tokenizer, ids: Iterable[int], stop_at_eos: bool = True) -> str:
  """Text of `ids`, cut at the first EOS when stop_at_eos, special tokens (pad, mask) dropped."""
  ids = [int(i) for i in ids]
  if stop_at_eos and tokenizer.ids.eos in ids:
    ids = ids[: ids.index(tokenizer.ids.eos)]
  return tokenizer.decode(ids, skip_special_tokens=True)
