"""Model configuration: frozen, hashable dataclasses (safe as `jax.jit` static args).

Field names follow the Hugging Face Qwen2.5-VL `config.json` so that import and
export are a rename-free mapping; see `hf_import.py`.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """The Qwen2.5-VL ViT and its 2x2 patch merger."""

  depth: int = 32  # transformer blocks
  hidden_size: int = 1280  # ViT width
  intermediate_size: int = 3420  # SwiGLU hidden width
  num_heads: int = 16
  in_channels: int = 3
  patch_size: int = 14  # pixels per patch side
  temporal_patch_size: int = 2  # a still image is repeated over 2 frames
  spatial_merge_size: int = 2  # 2x2 patches -> one LLM token
  window_size: int = 112  # window attention side, in pixels
  fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)  # blocks with full attention
  out_hidden_size: int = 3584  # merger output width = LLM width
  rope_theta: float = 10000.0  # 2-D rotary base of the ViT
  rms_norm_eps: float = 1e-6

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def patch_dim(self) -> int:
    """Length of one flattened patch: C * T * P * P."""
    return self.in_channels * self.temporal_patch_size * self.patch_size**2


@dataclasses.dataclass(frozen=True)
class TextConfig:
  """The Qwen2 decoder."""

  vocab_size: int = 152064
  hidden_size: int = 3584
  intermediate_size: int = 18944
  num_hidden_layers: int = 28
  num_attention_heads: int = 28
  num_key_value_heads: int = 4  # GQA groups
  rope_theta: float = 1_000_000.0
  mrope_section: tuple[int, int, int] = (16, 24, 24)  # rotary pairs for (time, height, width)
  rms_norm_eps: float = 1e-6
  tie_word_embeddings: bool = False

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads


@dataclasses.dataclass(frozen=True)
class TokenIds:
  """Special token ids. They must agree with the tokenizer the data pipeline uses."""

  pad: int = 151643  # <|endoftext|>
  im_start: int = 151644  # <|im_start|>
  eos: int = 151645  # <|im_end|>: ends the assistant turn, i.e. the report
  vision_start: int = 151652  # <|vision_start|>
  vision_end: int = 151653  # <|vision_end|>
  image_pad: int = 151655  # <|image_pad|>: one per merged vision token
  video_pad: int = 151656  # <|video_pad|>
  mask: int = 151665  # <|MASK|>: the diffusion mask (first id after Qwen2.5's 151665 tokens)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything needed to build the VLM. `dtype` is the compute dtype."""

  vision: VisionConfig = VisionConfig()
  text: TextConfig = TextConfig()
  tokens: TokenIds = TokenIds()
  tokens_per_second: int = 2  # temporal position scale of Qwen2.5-VL (videos only)
  dtype: str = "float32"  # compute dtype: float32 | bfloat16
  param_dtype: str = "float32"  # storage dtype of parameters
  remat: bool = False  # rematerialize each decoder / ViT block in the backward pass

  def replace(self, **kwargs) -> ModelConfig:
    return dataclasses.replace(self, **kwargs)

  def validate(self) -> None:
    """Raise ValueError naming the first inconsistent field."""
    t, v = self.text, self.vision
    if t.hidden_size % t.num_attention_heads:
      raise ValueError(
        f"text.hidden_size={t.hidden_size} is not divisible by num_attention_heads={t.num_attention_heads}"
      )
    if t.num_attention_heads % t.num_key_value_heads:
      raise ValueError(
        f"text.num_attention_heads={t.num_attention_heads} is not divisible by num_key_value_heads={t.num_key_value_heads}"
      )
    if 2 * sum(t.mrope_section) != t.head_dim:
      raise ValueError(
        f"2 * sum(text.mrope_section)={2 * sum(t.mrope_section)} must equal the text head_dim={t.head_dim}"
      )
    if v.hidden_size % v.num_heads:
      raise ValueError(
        f"vision.hidden_size={v.hidden_size} is not divisible by num_heads={v.num_heads}"
      )
    if v.head_dim % 4:
      raise ValueError(
        f"vision head_dim={v.head_dim} must be a multiple of 4 (2-D rotary over height and width)"
      )
    if v.window_size % (v.patch_size * v.spatial_merge_size):
      raise ValueError(
        f"vision.window_size={v.window_size} must be a multiple of patch_size*spatial_merge_size={v.patch_size * v.spatial_merge_size}"
      )
    if v.out_hidden_size != t.hidden_size:
      raise ValueError(
        f"vision.out_hidden_size={v.out_hidden_size} must equal text.hidden_size={t.hidden_size}"
      )
    bad = [i for i in v.fullatt_block_indexes if not 0 <= i < v.depth]
    if bad:
      raise ValueError(f"vision.fullatt_block_indexes has {bad} outside [0, depth={v.depth})")
    ids = dataclasses.asdict(self.tokens)
    bad_ids = {k: i for k, i in ids.items() if not 0 <= i < t.vocab_size}
    if bad_ids:
      raise ValueError(f"token ids {bad_ids} are outside the vocabulary of size {t.vocab_size}")
    if self.dtype not in ("float32", "bfloat16") or self.param_dtype not in ("float32", "bfloat16"):
      raise ValueError(
        f"dtype={self.dtype!r} / param_dtype={self.param_dtype!r}: use 'float32' or 'bfloat16'"
      )
