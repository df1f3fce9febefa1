"""The Qwen2.5-VL-shaped diffusion VLM.

Shape suffixes used throughout the package (`x_BLD` is batch x length x width):
  B batch            L sequence length     D model width       V vocabulary
  H query heads      G key/value heads     K head dim          F MLP hidden width
  T new tokens (a block or a step)         S KV-cache slots    N patches / vision tokens
  P context (prompt) length                R response length   W windows
Positions of the decoder are 3-D (time, height, width): `positions_3BL`.
"""
