"""Model presets, from a CPU-trainable `tiny` to the paper's Lingshu-7B shapes.

`get_preset(name)` returns a `ModelConfig`; override fields with `.replace(...)`.
"""

from __future__ import annotations

from echo_jax.models.config import ModelConfig, TextConfig, TokenIds, VisionConfig

# The tiny tokenizer (trained on the synthetic reports by echo_jax.data.tokenizer) puts
# its special tokens (tokenizer.TINY_SPECIAL_TOKENS) first, so their ids are 0..7.
TINY_TOKEN_IDS = TokenIds(
  pad=0, im_start=1, eos=2, vision_start=3, vision_end=4, image_pad=5, video_pad=6, mask=7
)

_PRESETS: dict[str, ModelConfig] = {
  # About a million decoder parameters (enough for the
  # synthetic task): the whole ECHO pipeline trains on a 2-core CPU in minutes.
  "tiny": ModelConfig(
    vision=VisionConfig(
      depth=4,
      hidden_size=128,
      intermediate_size=256,
      num_heads=4,
      window_size=56,
      fullatt_block_indexes=(3,),
      out_hidden_size=128,
    ),
    text=TextConfig(
      vocab_size=1024,
      hidden_size=128,
      intermediate_size=512,
      num_hidden_layers=4,
      num_attention_heads=4,
      num_key_value_heads=2,
      rope_theta=10_000.0,
      mrope_section=(4, 6, 6),
      tie_word_embeddings=True,
    ),
    tokens=TINY_TOKEN_IDS,
  ),
  # About 0.5B parameters: a Qwen2.5-0.5B-shaped decoder with a 12-layer ViT.
  "small": ModelConfig(
    vision=VisionConfig(
      depth=12,
      hidden_size=768,
      intermediate_size=2048,
      num_heads=12,
      fullatt_block_indexes=(3, 7, 11),
      out_hidden_size=896,
    ),
    text=TextConfig(
      vocab_size=151936,
      hidden_size=896,
      intermediate_size=4864,
      num_hidden_layers=24,
      num_attention_heads=14,
      num_key_value_heads=2,
      mrope_section=(8, 12, 12),
      tie_word_embeddings=True,
    ),
  ),
  # Exactly the shapes of Qwen2.5-VL-7B / Lingshu-7B (about 8.3B parameters).
  "lingshu-7b": ModelConfig(),
}


def preset_names() -> tuple[str, ...]:
  return tuple(_PRESETS)


def get_preset(name: str) -> ModelConfig:
  """The named preset; raises ValueError listing the known names."""
  try:
    config = _PRESETS[name]
  except KeyError:
    raise ValueError(f"unknown model preset {name!r}; known: {', '.join(_PRESETS)}") from None
  config.validate()
  return config
