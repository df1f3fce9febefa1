"""Per-device training memory for a model preset on a mesh, computed, not measured.

    python -m echo_jax.bench.memory --preset lingshu-7b --data 1 --fsdp 8 --tensor 1 \
        --batch_per_device 1 --context 3000 --response 256 --stage rad

Counts the parameters of the preset from its shapes (the same shapes the
model builds; a test checks the two agree) and adds, per device:
  weights (param_dtype), gradients (param_dtype), AdamW moments (2 x float32),
  and activations under per-layer remat: the residual stream saved at every
  layer boundary plus one layer's working set (attention scores included)
  for the recomputed layer. FSDP shards weights, gradients and moments over
  data-parallel replicas (fsdp axis); tensor parallelism shards the large
  matrices over the tensor axis. Frozen parameters (the ViT and merger in RAD
  and DCD) carry no gradients or moments.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from echo_jax.models.config import ModelConfig
from echo_jax.models.presets import get_preset, preset_names

GiB = 1024**3
_BYTES = {"float32": 4, "bfloat16": 2}


def vision_param_count(config: ModelConfig) -> int:
  v = config.vision
  d, f = v.hidden_size, v.intermediate_size
  block = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (2 * d * f + 2 * f) + (f * d + d)
  merged = d * v.spatial_merge_size**2
  merger = d + (merged * merged + merged) + (merged * v.out_hidden_size + v.out_hidden_size)
  return v.patch_dim * d + v.depth * block + merger


def text_param_count(config: ModelConfig) -> int:
  t = config.text
  d, f, k = t.hidden_size, t.intermediate_size, t.head_dim
  q, kv = t.num_attention_heads * k, t.num_key_value_heads * k
  attn = d * q + q + 2 * (d * kv + kv) + q * d
  layer = attn + 3 * d * f + 2 * d
  head = 0 if t.tie_word_embeddings else d * t.vocab_size
  return t.vocab_size * d + t.num_hidden_layers * layer + d + head


@dataclasses.dataclass
class MemoryEstimate:
  params_total: int
  params_trained: int
  weights_gib: float
  grads_gib: float
  optimizer_gib: float
  activations_gib: float

  @property
  def total_gib(self) -> float:
    return self.weights_gib + self.grads_gib + self.optimizer_gib + self.activations_gib


def estimate(
  config: ModelConfig,
  *,
  data: int,
  fsdp: int,
  tensor: int,
  batch_per_device: int,
  context: int,
  response: int,
  stage: str,
) -> MemoryEstimate:
  """Per-device bytes of one training step (see the module docstring for the model)."""
  if stage not in ("ar", "rad", "dcd", "bd3"):
    raise ValueError(f"stage={stage!r}: use ar, rad, dcd or bd3")
  vision, text = vision_param_count(config), text_param_count(config)
  trained = text if stage in ("rad", "dcd") else text + vision
  shards = fsdp * tensor
  pbytes = _BYTES[config.param_dtype]
  weights = (vision + text) * pbytes / shards
  grads = trained * pbytes / shards
  optimizer = trained * 2 * 4 / shards  # AdamW first and second moments, float32

  # Sequence the decoder sees: RAD packs P + 2R, full duplication 2(P + R), AR and DCD's student P + 2R.
  length = {
    "ar": context + response,
    "rad": context + 2 * response,
    "dcd": context + 2 * response,
  }.get(stage, 2 * (context + response))
  t = config.text
  abytes = _BYTES[config.dtype]
  b = batch_per_device  # examples per data-parallel rank; tensor ranks share them
  residuals = t.num_hidden_layers * b * length * t.hidden_size * abytes
  heads = t.num_attention_heads / tensor
  working = (
    b
    * length
    * ((4 * t.hidden_size + 3 * t.intermediate_size / tensor) * abytes + heads * length * 4)
  )
  logits = b * length * t.vocab_size / tensor * 4
  activations = residuals + working + logits
  return MemoryEstimate(
    params_total=vision + text,
    params_trained=trained,
    weights_gib=weights / GiB,
    grads_gib=grads / GiB,
    optimizer_gib=optimizer / GiB,
    activations_gib=activations / GiB,
  )


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--preset", default="lingshu-7b", choices=preset_names())
  parser.add_argument("--data", type=int, default=1)
  parser.add_argument("--fsdp", type=int, default=8)
  parser.add_argument("--tensor", type=int, default=1)
  parser.add_argument(
    "--batch_per_device", type=int, default=1, help="examples per data-parallel rank"
  )
  parser.add_argument("--context", type=int, default=3000, help="context tokens (vision + prompt)")
  parser.add_argument("--response", type=int, default=256, help="response tokens")
  parser.add_argument("--stage", default="rad", choices=("ar", "rad", "dcd", "bd3"))
  parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
  parser.add_argument(
    "--param_dtype",
    default=None,
    choices=("float32", "bfloat16"),
    help="storage dtype of weights and gradients (default: --dtype; the 7b configs use float32)",
  )
  parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
  args = parser.parse_args(argv)
  param_dtype = args.param_dtype or args.dtype
  config = get_preset(args.preset).replace(dtype=args.dtype, param_dtype=param_dtype)
  est = estimate(
    config,
    data=args.data,
    fsdp=args.fsdp,
    tensor=args.tensor,
    batch_per_device=args.batch_per_device,
    context=args.context,
    response=args.response,
    stage=args.stage,
  )
  row = dataclasses.asdict(est) | {"total_gib": est.total_gib, **vars(args)}
  if args.json:
    print(json.dumps(row, indent=2))
    return
  print(
    f"{args.preset}: {est.params_total / 1e9:.3f}B parameters ({est.params_trained / 1e9:.3f}B trained)"
  )
  print(
    f"mesh data={args.data} fsdp={args.fsdp} tensor={args.tensor}, stage {args.stage}, "
    f"compute {args.dtype}, parameters {param_dtype}"
  )
  for name in ("weights", "grads", "optimizer", "activations"):
    print(f"  {name:<12} {getattr(est, name + '_gib'):8.2f} GiB per device")
  print(f"  {'total':<12} {est.total_gib:8.2f} GiB per device")


if __name__ == "__main__":
  main()
