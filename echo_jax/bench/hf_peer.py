"""The benchmarks' peer: transformers' greedy `generate` of the same model and prompts.

The weights are ours, exported with `echo_jax.models.hf_import.save_pretrained` and
reopened with `Qwen2_5_VLForConditionalGeneration.from_pretrained`; each prompt is the
same chat prompt and image patches our samplers decode, in the model config's dtype.
Used by echo_jax/bench/sampling.py and echo_jax/bench/gpu.py (on CUDA where it has one).
torch and transformers are benchmark dependencies, imported only when a peer is built.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from echo_jax.data import images
from echo_jax.data import tokenizer as tokenizer_lib
from echo_jax.models.hf_import import save_pretrained


class Peer:
  """`Peer(setup, work, device)`: the exported model on `device`, the studies' prompts
  (`batches` makes `generate`'s inputs of them), and `generate(batch, n)` of exactly n
  new tokens per prompt.

  `setup` is echo_jax/bench/sampling.py's `build` output (model, config, tokenizer,
  studies, image_config); `work` a directory for the export."""

  def __init__(self, setup: dict[str, Any], work: str, device: str = "cpu") -> None:
    import torch
    import transformers

    self.config, self.tokenizer = setup["config"], setup["tokenizer"]
    self.device = device
    self.dtype = torch.bfloat16 if self.config.param_dtype == "bfloat16" else torch.float32
    path = os.path.join(work, "hf")
    save_pretrained(setup["model"], self.config, path)
    hf = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=self.dtype)
    self.model = hf.to(device).eval()
    merge = self.config.vision.spatial_merge_size
    self.prompts = []
    for study in setup["studies"]:
      patches, grid = images.load_study_images(study.image_paths, setup["image_config"])
      counts = [images.num_image_tokens(g, merge) for g in grid]
      self.prompts.append((tokenizer_lib.encode_prompt(self.tokenizer, counts), patches, grid))

  def batches(self, batch_size: int, count: int | None = None) -> list[dict[str, Any]]:
    """`generate`'s inputs for the first `count` prompts (default all), `batch_size` at a
    time (the last batch may be smaller)."""
    prompts = self.prompts[:count]
    return [self.inputs(prompts[i : i + batch_size]) for i in range(0, len(prompts), batch_size)]

  def inputs(self, prompts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict:
    import torch

    lengths = {len(ids) for ids, _, _ in prompts}
    if len(lengths) != 1:
      # Left padding would change the peer's positions and work; the benchmarks' studies
      # all have one image of the same size, so their prompts never need it.
      raise ValueError(f"the peer batches prompts of one length, got lengths {sorted(lengths)}")
    ids = torch.tensor(np.stack([ids for ids, _, _ in prompts]), dtype=torch.long)
    return dict(
      input_ids=ids.to(self.device),
      attention_mask=torch.ones_like(ids).to(self.device),
      pixel_values=torch.tensor(np.concatenate([p for _, p, _ in prompts])).to(
        self.device, self.dtype
      ),
      image_grid_thw=torch.tensor(np.concatenate([g for _, _, g in prompts])).to(self.device),
      # 1 marks the image tokens, as the processor's output does: without it transformers
      # gives them 1-D positions instead of the 3-D ones echo_jax (and training) uses,
      # which on trained weights changes the greedy reports.
      mm_token_type_ids=(ids == self.config.tokens.image_pad).long().to(self.device),
    )

  def generate(self, batch: dict[str, Any], new_tokens: int) -> np.ndarray:
    """Greedy `generate` of exactly `new_tokens` tokens per prompt: [batch, new_tokens]."""
    import torch

    with torch.inference_mode():
      out = self.model.generate(
        **batch,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=self.config.tokens.eos,
        pad_token_id=self.config.tokens.pad,
      )
    new = out[:, batch["input_ids"].shape[1] :].cpu().numpy()
    if new.shape[1] != new_tokens:
      raise RuntimeError(f"generate returned {new.shape[1]} new tokens, expected {new_tokens}")
    return new

  def text(self, tokens: np.ndarray) -> str:
    return tokenizer_lib.decode(self.tokenizer, np.asarray(tokens), stop_at_eos=False)
