"""The paper's speed columns on one GPU: 7B shapes, random bf16 weights, one command.

    python -m echo_jax.bench.gpu --out gpu.json             # 7B shapes (one GPU, ~40 GB)
    python -m echo_jax.bench.gpu --dry_run --out dry.json   # small shapes: a CPU check

The dry run is the same code at a one-layer tiny model, batch sizes 1 and 2 and
8 new tokens: it checks that every column is written, its numbers say nothing of speed.

Writes `--out` (JSON) and the same path with `.md` (markdown tables). Decoding rows, at
each batch size of `--batch_sizes` (default 1 and 8): our autoregressive sampler,
multi-step block diffusion B = 8 (steps = B, tau = 0.85), one-step B = 4 and B = 8, and
transformers' greedy `generate` (the peer: `--no_peer` skips it) on the same weights
(exported with echo_jax/models/hf_import.py `save_pretrained`) and the same prompts.
Columns of every decoding row:

  prefill_ms            one prefill of a batch of prompts (fastest of --repeats); for
                        the peer, `generate` of one new token (its prefill yields it)
  e2e_tokens_per_s      new tokens / wall time of the whole call (prefill + decoding)
  decode_tokens_per_s   new tokens / (wall time - the prefills of its batches); None
                        where the prefill timed alone is no faster than the whole call
                        (tiny models, where dispatch dominates)
  ms_per_report, tpf    wall time per report; new tokens per decode forward
  peak_memory_bytes     ours: the device's `memory_stats()` peak_bytes_in_use after the
                        row (a process-wide high-water mark, so it never decreases along
                        the rows); peer: torch.cuda.max_memory_allocated of the row; None
                        where the backend has no such counter (CPU)

Every report has exactly --new_tokens tokens (EOS is made unreachable, as in
echo_jax/bench/sampling.py, whose setup, warm-up and timing this reuses); the prompt is
one synthetic chest X-ray resized to --pixels plus the chat prompt.

Training row: one RAD step (packing + forward + backward + AdamW, the real train step)
at the 7B widths with --train_layers decoder layers (a full 7B with float32 Adam state
does not fit one GPU), a text context of --train_context tokens standing in for the
vision tokens and --train_response response tokens, timed as in echo_jax/bench/train.py.
`mfu` = XLA's FLOPs of the step / (step time x device peak) (echo_jax/train/mfu.py;
`--peak_flops` overrides the table; None on a CPU without it); `model_mfu` uses the
matmul-only count of echo_jax/bench/train.py instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from echo_jax import inference
from echo_jax.bench import hf_peer
from echo_jax.bench import sampling as bench_sampling
from echo_jax.bench import train as bench_train
from echo_jax.models.config import ModelConfig
from echo_jax.models.presets import get_preset
from echo_jax.models.vlm import EchoVLM
from echo_jax.train import mfu as mfu_lib
from echo_jax.train import state as state_lib
from echo_jax.train import step as step_lib

# (name, sampler kind, block length) of the decoding rows.
DECODERS = (
  ("AR", "ar", 1),
  ("multi-step B=8", "multi_step", 8),
  ("one-step B=4", "one_step", 4),
  ("one-step B=8", "one_step", 8),
)
ROW_COLUMNS = (
  "decoder", "sampler", "block_len", "batch_size", "prefill_ms", "decode_tokens_per_s",
  "e2e_tokens_per_s", "ms_per_report", "tpf", "tokens", "seconds", "peak_memory_bytes",
)  # fmt: skip
TRAIN_COLUMNS = (
  "layers", "context_len", "response_len", "batch", "step_ms", "tokens_per_s", "flops",
  "model_flops", "peak_flops", "mfu", "model_mfu", "peak_memory_bytes",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Preset:
  """Shapes of one benchmark run (defaults of the flags)."""

  model: ModelConfig
  new_tokens: int
  pixels: int
  repeats: int
  train_layers: int
  train_context: int
  train_response: int
  train_steps: int
  batch_sizes: tuple[int, ...]


def presets() -> dict[str, Preset]:
  seven_b = get_preset("lingshu-7b").replace(dtype="bfloat16", param_dtype="bfloat16")
  tiny = get_preset("tiny")
  # One decoder layer and one ViT block: the dry run checks the code path, not speed.
  dry = tiny.replace(
    text=dataclasses.replace(tiny.text, num_hidden_layers=1),
    vision=dataclasses.replace(tiny.vision, depth=1, fullatt_block_indexes=(0,)),
  )
  return {
    # 256 * 28 * 28 pixels: the smallest image of the released models (256 vision tokens).
    "7b": Preset(seven_b, 256, 256 * 28 * 28, 3, 4, 2048, 256, 5, (1, 8)),
    "dry_run": Preset(dry, 8, 56 * 56, 1, 1, 32, 16, 2, (1, 2)),
  }


def device_peak_bytes() -> int | None:
  stats = jax.devices()[0].memory_stats()
  return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def _fastest(fn, repeats: int) -> float:
  """Seconds of the fastest of `repeats` calls of `fn` (after one untimed warm-up)."""
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


def prefill_seconds(generator: inference.ReportGenerator, studies, repeats: int) -> float:
  """Wall seconds of one jitted prefill of a batch of `studies` (fastest of `repeats`)."""
  model, params = generator.decode_model, generator.params
  _, _, context = next(iter(generator.batches(studies[: generator.batch_size])))
  block = max(b for _, _, b in DECODERS)
  cache_length = model.context_slots(context, block_len=block) + 2 * block
  prefill = jax.jit(lambda p, c: model.prefill(p, c, cache_length=cache_length, block_len=block))
  return _fastest(lambda: jax.block_until_ready(prefill(params, context)), repeats)


def our_rows(setup, batch_size: int, new_tokens: int, repeats: int) -> list[dict[str, Any]]:
  """The decoding rows of our samplers at one batch size."""
  config, studies = setup["config"], setup["studies"]
  generator = inference.ReportGenerator(
    setup["model"], setup["tokenizer"], setup["example_fn"], batch_size=batch_size
  )
  prefill = prefill_seconds(generator, studies, repeats)
  batches = math.ceil(len(studies) / batch_size)
  rows = []
  for name, kind, block in DECODERS:
    sampler = inference.make_sampler(
      kind, config.tokens, block_len=block, max_new_tokens=new_tokens
    )
    sampler = dataclasses.replace(sampler, eos_id=config.text.vocab_size)  # never emitted
    # ReportGenerator warms up (compiles) before timing; the fastest pass counts.
    passes = [generator.generate(studies, sampler) for _ in range(repeats)]
    summary = min((inference.speed_summary(p) for p in passes), key=lambda s: s["seconds"])
    if summary["tokens"] != new_tokens * len(studies):
      raise RuntimeError(f"{name}: reports did not all reach {new_tokens} tokens")
    rows.append(_row(name, kind, block, batch_size, prefill, batches, summary, device_peak_bytes()))
  return rows


def _row(name, kind, block, batch_size, prefill_s, batches, summary, peak) -> dict[str, Any]:
  seconds, tokens = summary["seconds"], summary["tokens"]
  decode_s = seconds - batches * prefill_s
  return dict(
    decoder=name,
    sampler=kind,
    block_len=block,
    batch_size=batch_size,
    prefill_ms=1000 * prefill_s,
    decode_tokens_per_s=tokens / decode_s if decode_s > 0 else None,
    e2e_tokens_per_s=tokens / seconds,
    ms_per_report=1000 * seconds / summary["reports"],
    tpf=summary["tpf"],
    tokens=tokens,
    seconds=seconds,
    peak_memory_bytes=peak,
  )


def peer_rows(setup, batch_sizes: Sequence[int], new_tokens: int, repeats: int, work: str):
  """transformers' greedy generate on the same weights and prompts, at each batch size."""
  import torch

  cuda = torch.cuda.is_available()
  peer = hf_peer.Peer(setup, work, device="cuda" if cuda else "cpu")

  def sync():
    if cuda:
      torch.cuda.synchronize()

  rows = []
  for b in batch_sizes:
    if cuda:
      torch.cuda.reset_peak_memory_stats()
    chunks = peer.batches(b)
    # generate's own prefill: the prompt's forward, which also yields the first token.
    prefill = _fastest(lambda x=chunks[0]: (peer.generate(x, 1), sync()), repeats)
    seconds = 0.0
    for x in chunks:
      peer.generate(x, new_tokens)  # the warm-up of the timed calls; checks the length
      seconds += _fastest(lambda x=x: (peer.generate(x, new_tokens), sync()), repeats)
    reports = len(peer.prompts)
    summary = dict(reports=reports, tokens=reports * new_tokens, seconds=seconds, tpf=1.0)
    peak = int(torch.cuda.max_memory_allocated()) if cuda else None
    rows.append(_row("transformers generate", "hf_generate", 1, b, prefill, len(chunks),
                     summary, peak))  # fmt: skip
  return rows


def train_row(preset: Preset, args: argparse.Namespace) -> dict[str, Any]:
  """One RAD training step at the 7B widths with `--train_layers` layers (module doc)."""
  config = bench_train.bench_model_config("lingshu-7b", num_layers=args.train_layers)
  if args.dry_run:
    config = preset.model
  # bf16 compute with float32 master weights and Adam moments, as configs/common.py's 7B runs.
  config = config.replace(dtype=preset.model.dtype, param_dtype="float32")
  block = 8
  setting = bench_train.Setting("rad", args.train_context, args.train_response)
  batch = {
    k: jnp.asarray(v) for k, v in bench_train.synthetic_batch(config, 1, setting, block).items()
  }
  tx = bench_train._optimizer()
  graphdef, params, frozen = state_lib.split_model(EchoVLM(config, rngs=nnx.Rngs(0)), ("vision",))
  step = step_lib.make_train_step(
    graphdef, bench_train.make_loss_fn("rad", config, block, False), tx
  )
  state = state_lib.TrainState(
    step=jnp.zeros((), jnp.int32), params=params, frozen=frozen, opt_state=tx.init(params)
  )
  flops = mfu_lib.lowered_flops(step, state, batch)
  state, _ = jax.block_until_ready(step(state, batch))  # compile + warm-up
  times = []
  for _ in range(args.train_steps):
    start = time.perf_counter()
    state, _ = jax.block_until_ready(step(state, batch))
    times.append(time.perf_counter() - start)
  seconds = statistics.median(times)
  p, r = setting.context_len, setting.response_len
  model_flops = bench_train.train_flops(config.text, "rad", p, r, False)["total"]
  peak = mfu_lib.peak_flops(jax.devices()[0].device_kind, args.peak_flops)
  return dict(
    layers=config.text.num_hidden_layers,
    context_len=p,
    response_len=r,
    batch=1,
    step_ms=1000 * seconds,
    tokens_per_s=(p + 2 * r) / seconds,  # the packed sequence P + 2R through the model
    flops=flops,
    model_flops=float(model_flops),
    peak_flops=peak,
    mfu=mfu_lib.utilization(flops, seconds, peak, 1),
    model_mfu=mfu_lib.utilization(model_flops, seconds, peak, 1),
    peak_memory_bytes=device_peak_bytes(),
  )


def _cell(value: Any, digits: int = 1) -> str:
  if value is None:
    return "n/a"
  if isinstance(value, float):
    return f"{value:.{digits}f}"
  return str(value)


def markdown(result: dict[str, Any]) -> str:
  gib = lambda b: None if b is None else b / 2**30  # noqa: E731
  lines = [
    "| decoder | batch | prefill ms | decode tok/s | end-to-end tok/s | ms/report | TPF | "
    "peak GiB |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for r in result["rows"]:
    lines.append(
      f"| {r['decoder']} | {r['batch_size']} | {_cell(r['prefill_ms'])} | "
      f"{_cell(r['decode_tokens_per_s'])} | {_cell(r['e2e_tokens_per_s'])} | "
      f"{_cell(r['ms_per_report'])} | {_cell(r['tpf'], 2)} | "
      f"{_cell(gib(r['peak_memory_bytes']), 2)} |"
    )
  t = result["train"]
  lines += [
    "",
    "| RAD step | P | R | step ms | tokens/s | TFLOP (XLA) | MFU | model MFU | peak GiB |",
    "|---|---|---|---|---|---|---|---|---|",
    f"| {t['layers']} layers | {t['context_len']} | {t['response_len']} | "
    f"{_cell(t['step_ms'])} | {_cell(t['tokens_per_s'], 0)} | "
    f"{_cell(None if t['flops'] is None else t['flops'] / 1e12, 3)} | {_cell(t['mfu'], 3)} | "
    f"{_cell(t['model_mfu'], 3)} | {_cell(gib(t['peak_memory_bytes']), 2)} |",
  ]
  return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="python -m echo_jax.bench.gpu",
    description=__doc__.split("\n\n")[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
    epilog=__doc__.split("\n", 1)[1],
  )
  p.add_argument("--out", required=True, help="JSON file of the results (tables: <out>.md)")
  p.add_argument("--dry_run", action="store_true", help="small shapes (a CPU check of the code)")
  p.add_argument("--batch_sizes", type=int, nargs="+", default=None, help="default 1 8")
  p.add_argument("--new_tokens", type=int, default=None, help="tokens per report (default 256)")
  p.add_argument("--pixels", type=int, default=None, help="image area after resizing")
  p.add_argument("--repeats", type=int, default=None, help="timed passes; the fastest counts")
  p.add_argument("--no_peer", action="store_true", help="skip transformers' generate")
  p.add_argument("--seed", type=int, default=0, help="random weights and synthetic studies")
  p.add_argument("--train_layers", type=int, default=None, help="decoder layers of the RAD step")
  p.add_argument("--train_context", type=int, default=None, help="P of the RAD step")
  p.add_argument("--train_response", type=int, default=None, help="R of the RAD step")
  p.add_argument("--train_steps", type=int, default=None, help="timed RAD steps (median)")
  p.add_argument("--peak_flops", type=float, default=0.0, help="device peak FLOP/s for MFU")
  return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = _parser().parse_args(argv)
  preset_name = "dry_run" if args.dry_run else "7b"
  preset = presets()[preset_name]
  for key in ("new_tokens", "pixels", "repeats", "train_layers", "train_context",
              "train_response", "train_steps", "batch_sizes"):  # fmt: skip
    if getattr(args, key) is None:
      setattr(args, key, getattr(preset, key))
  if args.new_tokens < 8 or args.new_tokens % 8:
    raise SystemExit(f"--new_tokens={args.new_tokens} must be a positive multiple of 8")
  if min(args.batch_sizes) < 1 or args.repeats < 1 or args.train_steps < 1:
    raise SystemExit("--batch_sizes, --repeats and --train_steps must be >= 1")
  if args.train_context % 8 or args.train_response % 8 or args.train_response < 8:
    raise SystemExit("--train_context and --train_response must be multiples of 8 (and R >= 8)")
  rows: list[dict[str, Any]] = []
  with tempfile.TemporaryDirectory() as work:
    setup_args = argparse.Namespace(
      preset="lingshu-7b", checkpoint="", seed=args.seed, num_prompts=max(args.batch_sizes),
      pixels=args.pixels, batch_size=1, batch_sizes=None,
    )  # fmt: skip
    setup = bench_sampling.build(setup_args, os.path.join(work, "data"), config=preset.model)
    for b in args.batch_sizes:
      rows += our_rows(setup, b, args.new_tokens, args.repeats)
    if not args.no_peer:
      rows += peer_rows(setup, args.batch_sizes, args.new_tokens, args.repeats, work)
    prompt_tokens = setup["prompt_tokens"]
    del setup  # free the decoding model before the training step
  train = train_row(preset, args)
  text = preset.model.text
  result = dict(
    command="python -m echo_jax.bench.gpu " + " ".join(sys.argv[1:] if argv is None else argv),
    preset=preset_name,
    weights=f"random (seed {args.seed}), {preset.model.param_dtype}",
    model=dict(
      layers=text.num_hidden_layers,
      hidden_size=text.hidden_size,
      vocab_size=text.vocab_size,
      vision_depth=preset.model.vision.depth,
      dtype=preset.model.dtype,
    ),  # fmt: skip
    prompt_tokens=prompt_tokens,
    new_tokens=args.new_tokens,
    num_prompts=max(args.batch_sizes),
    environment=bench_sampling.environment(),
    rows=rows,
    train=train,
  )
  result["markdown"] = markdown(result)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
    f.write(result["markdown"] + "\n")
  print(result["markdown"])
  return result


if __name__ == "__main__":
  main()
