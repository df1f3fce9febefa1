"""Training-step cost of RAD packing (P + 2R) against full duplication (2(P + R)).

    python -m echo_jax.bench.train --out /tmp/bench_train.json --preset tiny \
        --ratios 1 4 12 --response_len 32 --long 1536:128 --steps 5

For each setting (context length P, response length R) the same model, batch and
noise are packed both ways (`diffusion.rad.pack_rad` and `diffusion.bd3.pack_bd3`),
and one jitted training step each (packing + forward + backward + AdamW update, the
`train.step.make_train_step` of the real runs) is compiled and timed: the median of
`steps` calls after `warmup`, blocking on the new state and metrics, with the two
layouts' calls interleaved so that a drifting machine load hits both alike.

Vision is skipped: the P context tokens are text tokens standing in for the vision
tokens (the ViT runs once per example in both layouts, so it only adds the same
cost to both). The vision tower is frozen, as in the RAD stage.

Predicted FLOPs (matmuls only; one multiply-add = 2 FLOPs; per example):

    F(L, T) = n_layers * (2 L W + 4 L^2 H K) + 2 T D V,   training = 3 F
    W = D*H*K + 2*D*G*K + H*K*D + 3*D*F_mlp   (q, k, v, o and SwiGLU weights of one layer)

with L the packed length (P + 2R for RAD, 2(P + R) for full duplication), H query
heads, G key/value heads, K head dim, D width, V vocabulary and T the positions the
LM head scores: R for both layouts (logits only on the packed target slice) or L with
`--full_logits`. Linear layers scale with L, attention with L^2: the masked scores
are computed densely, whatever the mask's sparsity. The backward pass costs twice
the forward. The predicted ratio is F(2(P+R), T_dup) / F(P+2R, T_rad); softmax,
norms, rotary, masking and the optimizer update are not counted. The compiled
ratio comes from XLA's `cost_analysis()` (all ops it counts, elementwise included).

Peak memory: the device's `memory_stats()["peak_bytes_in_use"]` when the backend
has it (a process-wide high-water mark read after that layout's first step, so it
never decreases along the rows), else the compiled step's `memory_analysis()`
temp + argument bytes; each row says which. On a GPU, model FLOPs utilization is
the predicted training FLOPs per second over the device's bf16 dense peak from
echo_jax/train/mfu.py (`PEAK_BF16_FLOPS`, the table the training logs use) or
`--peak_tflops`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from echo_jax.data import examples
from echo_jax.diffusion import bd3, packed, rad
from echo_jax.models.config import ModelConfig, TextConfig
from echo_jax.models.presets import TINY_TOKEN_IDS, get_preset, preset_names
from echo_jax.models.vlm import EchoVLM
from echo_jax.train import mfu as mfu_lib
from echo_jax.train import optimizer as optimizer_lib
from echo_jax.train import state as state_lib
from echo_jax.train import step as step_lib

LAYOUTS = ("rad", "dup")  # RAD [context | noisy | clean]; full duplication [noisy | clean]

# Dense bf16 tensor-core peaks (TFLOP/s), matched against the device kind.


@dataclasses.dataclass(frozen=True)
class Setting:
  """One context/response shape of the benchmark."""

  name: str
  context_len: int  # P (a multiple of the block length)
  response_len: int  # R (a multiple of the block length)


def packed_length(layout: str, context_len: int, response_len: int) -> int:
  """Sequence length of one packed example: P + 2R (rad) or 2(P + R) (dup)."""
  if layout == "rad":
    return context_len + 2 * response_len
  if layout == "dup":
    return 2 * (context_len + response_len)
  raise ValueError(f"layout={layout!r}: use one of {LAYOUTS}")


def layer_weights(text: TextConfig) -> int:
  """W: multiply-adds per token of one decoder layer's linear maps (biases ignored)."""
  d, f, k = text.hidden_size, text.intermediate_size, text.head_dim
  q, kv = text.num_attention_heads * k, text.num_key_value_heads * k
  return d * q + 2 * d * kv + q * d + 3 * d * f


def forward_flops(text: TextConfig, length: int, logit_positions: int) -> dict[str, int]:
  """Matmul FLOPs of one example's forward pass, by part (see the module docstring)."""
  heads_dim = text.num_attention_heads * text.head_dim
  linear = text.num_hidden_layers * 2 * length * layer_weights(text)
  attention = text.num_hidden_layers * 4 * length**2 * heads_dim
  head = 2 * logit_positions * text.hidden_size * text.vocab_size
  return dict(linear=linear, attention=attention, head=head, total=linear + attention + head)


def train_flops(
  text: TextConfig, layout: str, context_len: int, response_len: int, full_logits: bool
) -> dict[str, int]:
  """Matmul FLOPs of one example's training step (3 x forward) in `layout`."""
  length = packed_length(layout, context_len, response_len)
  logit_positions = length if full_logits else response_len
  return {k: 3 * v for k, v in forward_flops(text, length, logit_positions).items()}


def predicted_flop_ratio(
  text: TextConfig, context_len: int, response_len: int, full_logits: bool = False
) -> float:
  """F(2(P+R), T_dup) / F(P+2R, T_rad): how many times more matmul FLOPs duplication costs."""
  dup = train_flops(text, "dup", context_len, response_len, full_logits)["total"]
  return dup / train_flops(text, "rad", context_len, response_len, full_logits)["total"]


def bench_model_config(
  preset: str,
  *,
  num_layers: int | None = None,
  vocab_size: int | None = None,
  dtype: str | None = None,
) -> ModelConfig:
  """The preset, optionally with fewer layers / a smaller vocabulary / another compute dtype.

  A vocabulary too small for the preset's special-token ids takes the tiny preset's ids.
  """
  config = get_preset(preset)
  text = config.text
  if num_layers is not None:
    text = dataclasses.replace(text, num_hidden_layers=num_layers)
  if vocab_size is not None:
    text = dataclasses.replace(text, vocab_size=vocab_size)
  config = config.replace(text=text, dtype=dtype or config.dtype)
  if max(dataclasses.asdict(config.tokens).values()) >= text.vocab_size:
    config = config.replace(tokens=TINY_TOKEN_IDS)
  config.validate()
  return config


def synthetic_batch(
  config: ModelConfig, batch: int, setting: Setting, block_len: int, seed: int = 0
) -> dict[str, np.ndarray]:
  """Text-only context (standing in for vision tokens) and a response closed by an EOS."""
  p, r = setting.context_len, setting.response_len
  ids = config.tokens
  rng = np.random.default_rng(seed)
  first = max(dataclasses.asdict(ids).values()) + 1  # ordinary (non-special) tokens only
  vocab = config.text.vocab_size
  if first >= vocab:
    raise ValueError(f"vocab_size={vocab} leaves no ordinary token after the special ids")
  context = rng.integers(first, vocab, (batch, p), dtype=np.int32)
  response = rng.integers(first, vocab, (batch, r), dtype=np.int32)
  eos_at = r - block_len // 2 - 1  # EOS inside the last block: its pads are trained too
  response[:, eos_at] = ids.eos
  response[:, eos_at + 1 :] = ids.pad
  positions = np.broadcast_to(np.arange(p, dtype=np.int32), (batch, 3, p)).copy()  # (B, 3, P)
  return dict(
    context_tokens=context,
    context_positions=positions,
    context_valid=np.ones((batch, p), bool),
    response_tokens=response,
    response_valid=np.asarray(rad.response_valid_mask(jnp.asarray(response), ids.eos, block_len)),
    next_position=np.full((batch,), p, np.int32),
  )


def make_loss_fn(layout: str, config: ModelConfig, block_len: int, full_logits: bool):
  """`loss_fn(model, batch, key)` packing `batch` as `layout` and scoring its forward."""
  pack = {"rad": rad.pack_rad, "dup": bd3.pack_bd3}[layout]

  def loss_fn(model: EchoVLM, batch: dict[str, jax.Array], key: jax.Array):
    b = pack(
      batch["context_tokens"],
      examples.context_positions_3BP(batch),
      batch["context_valid"],
      batch["response_tokens"],
      batch["response_valid"],
      batch["next_position"],
      key,
      block_len=block_len,
      mask_id=config.tokens.mask,
    )
    if full_logits:
      logits_BLV = model(b.tokens_BL, b.positions_3BL, b.mask_BLL)
    else:
      # Only the noisy response carries loss weight: score just that slice.
      hidden_BLD, _, _ = model.text(model.embed(b.tokens_BL), b.positions_3BL, b.mask_BLL)
      logits_BLV = model.text.logits(hidden_BLD[:, b.target_start : b.target_stop])
    metrics = packed.packed_loss(logits_BLV, b)
    return metrics["loss"], metrics

  return loss_fn


def _optimizer():
  c = ml_collections.ConfigDict()
  c.total_steps = 1000
  c.optimizer = dict(
    learning_rate=1e-3, warmup_steps=10, end_lr_ratio=0.1, b1=0.9, b2=0.95, eps=1e-8,
    weight_decay=0.1, grad_clip=1.0,
  )  # fmt: skip
  return optimizer_lib.make_optimizer(c)


def _cost_flops(compiled) -> float | None:
  try:
    cost = compiled.cost_analysis()
  except Exception:  # not every backend implements it
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  return float(flops) if flops is not None and flops > 0 else None


def _compiled_bytes(compiled) -> int | None:
  try:
    m = compiled.memory_analysis()
  except Exception:
    return None
  return None if m is None else int(m.temp_size_in_bytes + m.argument_size_in_bytes)


def _device_peak() -> int | None:
  stats = jax.devices()[0].memory_stats()
  return None if not stats or "peak_bytes_in_use" not in stats else int(stats["peak_bytes_in_use"])


def machine_info() -> dict[str, Any]:
  device = jax.devices()[0]
  return dict(
    jax_version=jax.__version__,
    backend=jax.default_backend(),
    device_kind=device.device_kind,
    num_devices=jax.device_count(),
    cpu_count=os.cpu_count(),
    cpu_affinity=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    python=platform.python_version(),
    platform=platform.platform(),
    loadavg=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
  )


def peak_tflops_for(device_kind: str, override: float | None) -> float | None:
  """`override`, else the device's entry in the training logs' peak table, else None."""
  if override is not None:
    return override
  peak = mfu_lib.peak_flops(device_kind)
  return None if peak is None else peak / 1e12


def run_setting(
  config: ModelConfig,
  setting: Setting,
  *,
  batch: int,
  block_len: int,
  steps: int,
  warmup: int,
  full_logits: bool,
  peak_tflops: float | None,
) -> dict[str, Any]:
  """Compile and time both layouts on one setting; one result row."""
  data = {k: jnp.asarray(v) for k, v in synthetic_batch(config, batch, setting, block_len).items()}
  tx = _optimizer()
  graphdef, params, frozen = state_lib.split_model(EchoVLM(config, rngs=nnx.Rngs(0)), ("vision",))
  p, r = setting.context_len, setting.response_len
  runs: dict[str, dict[str, Any]] = {}
  for layout in LAYOUTS:
    step = step_lib.make_train_step(
      graphdef, make_loss_fn(layout, config, block_len, full_logits), tx
    )
    state = state_lib.TrainState(
      step=jnp.zeros((), jnp.int32),
      # The step donates its whole input state: each layout gets its own buffers.
      params=jax.tree.map(jnp.copy, params),
      frozen=jax.tree.map(jnp.copy, frozen),
      opt_state=tx.init(params),
    )
    start = time.perf_counter()
    compiled = step.lower(state, data).compile()
    compile_s = time.perf_counter() - start
    for _ in range(warmup):
      state, metrics = jax.block_until_ready(compiled(state, data))
    runs[layout] = dict(compiled=compiled, state=state, compile_s=compile_s, peak=_device_peak())
    runs[layout]["loss"] = float(metrics["loss"]) if warmup else None

  times: dict[str, list[float]] = {layout: [] for layout in LAYOUTS}
  for _ in range(steps):
    for layout in LAYOUTS:
      run = runs[layout]
      start = time.perf_counter()
      run["state"], _ = jax.block_until_ready(run["compiled"](run["state"], data))
      times[layout].append(time.perf_counter() - start)

  row: dict[str, Any] = dict(
    setting=setting.name, context_len=p, response_len=r, ratio=p / r, batch=batch
  )
  for layout in LAYOUTS:
    run = runs[layout]
    median = statistics.median(times[layout])
    flops = train_flops(config.text, layout, p, r, full_logits)
    peak_bytes, source = run["peak"], "device memory_stats peak_bytes_in_use"
    if peak_bytes is None:
      peak_bytes, source = (
        _compiled_bytes(run["compiled"]),
        "compiled memory_analysis temp+argument",
      )
    model_flops_per_s = batch * flops["total"] / median
    row[layout] = dict(
      length=packed_length(layout, p, r),
      step_time_s=median,
      step_times_s=times[layout],
      compile_s=run["compile_s"],
      tokens_per_s=batch * r / median,
      peak_memory_bytes=peak_bytes,
      peak_memory_source=source,
      predicted_train_flops=batch * flops["total"],
      attention_flop_share=flops["attention"] / flops["total"],
      compiled_flops=_cost_flops(run["compiled"]),
      model_tflops_per_s=model_flops_per_s / 1e12,
      mfu=model_flops_per_s / (peak_tflops * 1e12) if peak_tflops else None,
      loss=run["loss"],
    )
  row["predicted_flop_ratio"] = predicted_flop_ratio(config.text, p, r, full_logits)
  c_rad, c_dup = row["rad"]["compiled_flops"], row["dup"]["compiled_flops"]
  row["compiled_flop_ratio"] = c_dup / c_rad if c_rad and c_dup else None
  row["measured_speed_ratio"] = row["dup"]["step_time_s"] / row["rad"]["step_time_s"]
  row["measured_over_predicted"] = row["measured_speed_ratio"] / row["predicted_flop_ratio"]
  row["within_10pct"] = abs(row["measured_over_predicted"] - 1.0) <= 0.10
  return row


def make_settings(
  ratios: Sequence[float], response_len: int, long: Sequence[tuple[int, int]], block_len: int
) -> list[Setting]:
  """P = ratio * R for each ratio (R fixed), then the explicit (P, R) long settings."""
  settings = [Setting(f"P/R={g:g}", int(round(g * response_len)), response_len) for g in ratios]
  settings += [Setting(f"long {p}:{r}", p, r) for p, r in long]
  for s in settings:
    if s.context_len < 1 or s.response_len < block_len:
      raise ValueError(
        f"setting {s.name}: P={s.context_len}, R={s.response_len} must be >= 1 and >= block_len"
      )
    if s.context_len % block_len or s.response_len % block_len:
      raise ValueError(
        f"setting {s.name}: P={s.context_len} and R={s.response_len} must be multiples of "
        f"block_len={block_len} (the context is padded to whole blocks)"
      )
  return settings


def run_benchmark(
  *,
  preset: str = "tiny",
  ratios: Sequence[float] = (1, 4, 12),
  response_len: int = 32,
  long: Sequence[tuple[int, int]] = ((1536, 128),),
  batch: int = 1,
  block_len: int = 8,
  steps: int = 5,
  warmup: int = 1,
  num_layers: int | None = None,
  vocab_size: int | None = None,
  dtype: str | None = None,
  full_logits: bool = False,
  peak_tflops: float | None = None,
) -> dict[str, Any]:
  """Run every setting; returns {"machine", "config", "rows"} (the JSON written by main)."""
  if steps < 1 or warmup < 0 or batch < 1:
    raise ValueError(f"need steps >= 1, warmup >= 0, batch >= 1; got {steps}, {warmup}, {batch}")
  if dtype is None and jax.default_backend() == "gpu":
    dtype = "bfloat16"  # the tensor-core peak of the table is a bf16 figure
  config = bench_model_config(preset, num_layers=num_layers, vocab_size=vocab_size, dtype=dtype)
  settings = make_settings(ratios, response_len, long, block_len)
  machine = machine_info()
  peak = peak_tflops_for(machine["device_kind"], peak_tflops)
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*donated buffers.*")
    rows = [
      run_setting(
        config,
        s,
        batch=batch,
        block_len=block_len,
        steps=steps,
        warmup=warmup,
        full_logits=full_logits,
        peak_tflops=peak,
      )  # fmt: skip
      for s in settings
    ]
  machine["loadavg_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
  t = config.text
  return dict(
    machine=machine,
    config=dict(
      preset=preset,
      num_layers=t.num_hidden_layers,
      hidden_size=t.hidden_size,
      intermediate_size=t.intermediate_size,
      num_heads=t.num_attention_heads,
      num_kv_heads=t.num_key_value_heads,
      head_dim=t.head_dim,
      vocab_size=t.vocab_size,
      dtype=config.dtype,
      batch=batch,
      block_len=block_len,
      steps=steps,
      warmup=warmup,
      full_logits=full_logits,
      peak_tflops=peak,
      vision="skipped: text context tokens stand in",
    ),  # fmt: skip
    rows=rows,
  )


def markdown_table(result: dict[str, Any]) -> str:
  """The rows as a markdown table."""
  head = (
    "| setting | P | R | L rad | L dup | step rad ms | step dup ms | resp tok/s rad | "
    "resp tok/s dup | mem rad MiB | mem dup MiB | FLOP ratio pred | FLOP ratio XLA | "
    "speed ratio | measured/pred |"
  )
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for row in result["rows"]:
    a, b = row["rad"], row["dup"]
    mib = lambda x: "n/a" if x is None else f"{x / 2**20:.1f}"
    xla = "n/a" if row["compiled_flop_ratio"] is None else f"{row['compiled_flop_ratio']:.2f}"
    lines.append(
      f"| {row['setting']} | {row['context_len']} | {row['response_len']} | {a['length']} | "
      f"{b['length']} | {a['step_time_s'] * 1e3:.1f} | {b['step_time_s'] * 1e3:.1f} | "
      f"{a['tokens_per_s']:.0f} | {b['tokens_per_s']:.0f} | {mib(a['peak_memory_bytes'])} | "
      f"{mib(b['peak_memory_bytes'])} | {row['predicted_flop_ratio']:.2f} | {xla} | "
      f"{row['measured_speed_ratio']:.2f} | {row['measured_over_predicted']:.2f} |"
    )
  return "\n".join(lines)


def _long_arg(text: str) -> tuple[int, int]:
  try:
    p, r = (int(x) for x in text.split(":"))
  except ValueError:
    raise argparse.ArgumentTypeError(f"--long {text!r}: expected P:R, e.g. 1536:128") from None
  return p, r


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--out", required=True, help="JSON file to write")
  parser.add_argument("--preset", default="tiny", choices=preset_names())
  parser.add_argument(
    "--ratios", type=float, nargs="*", default=[1, 4, 12], help="P/R values (R fixed)"
  )
  parser.add_argument("--response_len", type=int, default=32, help="R of the --ratios settings")
  parser.add_argument(
    "--long", type=_long_arg, nargs="*", default=[(1536, 128)], help="extra P:R settings"
  )
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--block_len", type=int, default=8)
  parser.add_argument(
    "--steps", type=int, default=5, help="timed steps per layout (median reported)"
  )
  parser.add_argument("--warmup", type=int, default=1, help="untimed steps after compilation")
  parser.add_argument(
    "--num_layers", type=int, default=None, help="override the preset's decoder depth"
  )
  parser.add_argument(
    "--vocab_size", type=int, default=None, help="override the preset's vocabulary"
  )
  parser.add_argument(
    "--dtype", choices=("float32", "bfloat16"), default=None, help="compute dtype"
  )
  parser.add_argument(
    "--full_logits", action="store_true", help="LM head over the whole packed length"
  )
  parser.add_argument("--peak_tflops", type=float, default=None, help="device peak for MFU")
  args = parser.parse_args(argv)
  result = run_benchmark(
    preset=args.preset, ratios=args.ratios, response_len=args.response_len, long=args.long,
    batch=args.batch, block_len=args.block_len, steps=args.steps, warmup=args.warmup,
    num_layers=args.num_layers, vocab_size=args.vocab_size, dtype=args.dtype,
    full_logits=args.full_logits, peak_tflops=args.peak_tflops,
  )  # fmt: skip
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  print(markdown_table(result))
  return result


if __name__ == "__main__":
  main()
