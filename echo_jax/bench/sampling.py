"""Decoding speed of the samplers against transformers' greedy `generate`, same model and prompts.

    python -m echo_jax.bench.sampling --out sampling.json                 # tiny preset
    python -m echo_jax.bench.sampling --preset small --num_prompts 4 --out small.json
    python -m echo_jax.bench.sampling --preset small --forward_costs_only --loop 5 --out c.json

Rows: our autoregressive sampler, multi-step block diffusion (B = 4, 8; steps = B,
tau = 0.85) and one-step block diffusion (B = 4, 8), then the peer: transformers'
PyTorch `Qwen2_5_VLForConditionalGeneration.generate` (greedy, KV cache) on the same
weights, exported with `echo_jax.models.hf_import.save_pretrained` and reopened with
`from_pretrained`, on the same prompts (same chat prompt, same image patches).

Fairness: every report has exactly --new_tokens new tokens. Our samplers get an EOS id
outside the vocabulary (the model can never emit it), so every report runs to the
budget; transformers gets min_new_tokens = max_new_tokens = --new_tokens. The weights
are random (seed --seed) unless --checkpoint names an echo_jax workdir of the preset;
with random weights the multi-step sampler rarely reaches the confidence threshold, so
its TPF is that of an untrained model, near 1 (a trained ECHO_Base reaches about 1.9).

Timing: wall time of each batch from the call to the finished output, after one
untimed warm-up call (compilation for JAX, first-call overheads for PyTorch); image
loading and tokenization are not timed on either side. Each row is timed --repeats
times and the fastest pass counts (for us the fastest pass over all prompts, for
`generate` the fastest call per batch of prompts). tokens/s = all new tokens /
all timed seconds; ms/report = timed seconds / reports; TPF = new tokens / decode
forwards (the prefill not counted; for `generate` the forward that consumes the
prompt also yields the first token, so its TPF is 1 by construction).

Where the time goes (`forward_costs` in the JSON): milliseconds of one prefill of the
first prompt (the median of --loop single calls: a sampler call runs one), and of one
`extend` forward of n new tokens against that prompt's cache, sized as the samplers'
for --new_tokens (n = 1: an AR step; B: a multi-step denoising step; 2B: a fused
one-step block), timed as the mean of a jitted loop of --loop forwards (no dispatch in
between, as inside a sampler). Each row's predicted_ms adds these up for its forwards.

The bound of each row (forwards_ms): a jitted program doing only the row's prefill and
forwards per batch, each writing the cache as the sampler does (`forwards_only_program`),
timed in alternation with the sampler itself, batch by batch (`paired_ms`: each side's
fastest of --repeats calls per batch). paired_ms is the sampler's side of that timing,
overhead_ms = paired_ms - forwards_ms what it spends beyond its forwards, and
share_of_bound = forwards_ms / paired_ms how close it runs to them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from echo_jax import inference, runs
from echo_jax.bench import hf_peer
from echo_jax.data import images, readers, synthetic
from echo_jax.data import tokenizer as tokenizer_lib
from echo_jax.data.examples import StudyExamples
from echo_jax.models.presets import TINY_TOKEN_IDS, get_preset
from echo_jax.models.vlm import EchoVLM

BLOCK_LENS = (4, 8)


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="python -m echo_jax.bench.sampling",
    description=__doc__.split("\n\n")[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
    epilog=__doc__.split("\n", 1)[1],
  )
  p.add_argument("--out", required=True, help="JSON file of the results")
  p.add_argument("--preset", default="tiny", help="model preset (tiny | small | lingshu-7b)")
  p.add_argument(
    "--checkpoint", default="", help="echo_jax workdir of the preset (default: random)"
  )
  p.add_argument("--seed", type=int, default=0, help="random weights and synthetic studies")
  p.add_argument("--data", default="", help="synthetic benchmark dir (default: a temporary one)")
  p.add_argument("--num_prompts", type=int, default=8, help="studies decoded per row")
  p.add_argument("--batch_size", type=int, default=1, help="studies per sampler call (ours)")
  p.add_argument(
    "--batch_sizes",
    type=int,
    nargs="+",
    default=None,
    help="a batch sweep: every row at each batch size (e.g. 1 8 32 64), with a plot",
  )
  p.add_argument("--plot", default="", help="PNG of the sweep (default: --out with .png)")
  p.add_argument("--new_tokens", type=int, default=64, help="new tokens per report (mult. of 8)")
  p.add_argument("--pixels", type=int, default=112 * 112, help="image area after resizing")
  p.add_argument("--repeats", type=int, default=5, help="timed passes per row; the fastest counts")
  p.add_argument("--loop", type=int, default=100, help="forwards per forward-cost timing")
  p.add_argument("--no_peer", action="store_true", help="skip transformers' generate")
  p.add_argument(
    "--forward_costs_only", action="store_true", help="only time the forwards (no rows)"
  )
  p.add_argument("--torch_threads", type=int, default=0, help="0 = all CPUs")
  return p


# ------------------------------------------------------------------ setup
def build(args: argparse.Namespace, data_dir: str, config: Any = None) -> dict[str, Any]:
  """Model, tokenizer, studies and the StudyExamples transform of the benchmark.

  `config`: a ModelConfig to build instead of the preset (its token ids are the small BPE's).
  """
  num = max(args.num_prompts, *(args.batch_sizes or [args.batch_size]))
  synthetic.write_benchmark(data_dir, num, args.seed, workers=1, gallery=False, progress=False)
  studies = readers.read_dataset("r2gen", data_dir)[:num]
  if args.checkpoint:
    # A trained run: its own model, preset and tokenizer (runs.load_run).
    run = runs.load_run(args.checkpoint, data_path=data_dir)
    model, config, tokenizer = run.model, run.config, run.tokenizer
  else:
    tok_dir = os.path.join(data_dir, "tokenizer")
    if os.path.isfile(os.path.join(tok_dir, "tokenizer.json")):
      tokenizer = tokenizer_lib.load_tokenizer(tok_dir)
    else:
      tokenizer = tokenizer_lib.train_bpe_tokenizer([s.report for s in studies], 1024, tok_dir)
    # The small BPE's special ids are 0..7 whatever the preset; the vocabulary holds them.
    config = (config or get_preset(args.preset)).replace(tokens=TINY_TOKEN_IDS)
    model = EchoVLM(config, rngs=nnx.Rngs(args.seed))
  image_config = images.ImageConfig.from_vision_config(
    config.vision, min_pixels=args.pixels, max_pixels=args.pixels
  )
  patches, grid = images.load_study_images(studies[0].image_paths, image_config)
  tokens = images.num_image_tokens(grid[0], config.vision.spatial_merge_size)
  prompt = len(tokenizer_lib.encode_prompt(tokenizer, [tokens]))
  example_fn = StudyExamples(
    tokenizer=tokenizer,
    model_config=config,
    image_config=image_config,
    context_len=-(-prompt // 8) * 8,
    response_len=8,  # unused by decoding
    max_patches=len(patches),
  )
  return dict(
    model=model,
    config=config,
    tokenizer=tokenizer,
    studies=studies,
    example_fn=example_fn,
    image_config=image_config,
    prompt_tokens=prompt,
  )


def budget_sampler(config: Any, kind: str, block: int, new_tokens: int) -> Any:
  """The sampler of a row, with an EOS id outside the vocabulary: the model can never emit
  it, so every report runs to `new_tokens`."""
  sampler = inference.make_sampler(kind, config.tokens, block_len=block, max_new_tokens=new_tokens)
  return dataclasses.replace(sampler, eos_id=config.text.vocab_size)


def our_rows(setup: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:

  config = setup["config"]
  generator = inference.ReportGenerator(
    setup["model"], setup["tokenizer"], setup["example_fn"], batch_size=args.batch_size
  )
  plans = [("AR (echo_jax)", "ar", 1)]
  plans += [(f"multi-step B={b} (steps={b}, tau=0.85)", "multi_step", b) for b in BLOCK_LENS]
  plans += [(f"one-step B={b}", "one_step", b) for b in BLOCK_LENS]
  rows = []
  for name, kind, block in plans:
    sampler = budget_sampler(config, kind, block, args.new_tokens)
    # The fastest of --repeats passes: millisecond timings on a shared CPU are noisy.
    passes = [
      generator.generate(setup["studies"], sampler, progress=name if i == 0 else False)
      for i in range(args.repeats)
    ]
    generated = min(passes, key=lambda rows: inference.speed_summary(rows)["seconds"])
    summary = inference.speed_summary(generated)
    if summary["tokens"] != args.new_tokens * len(generated):
      raise RuntimeError(f"{name}: reports did not all reach {args.new_tokens} tokens")
    rows.append(
      dict(name=name, sampler=kind, block_len=block, batch_size=args.batch_size, **summary)
    )
    rows[-1]["predictions"] = [g["prediction"] for g in generated]
  return rows


def forward_costs(setup: dict[str, Any], args: argparse.Namespace) -> dict[str, float]:
  """Milliseconds of a prefill and of one extend forward of n new tokens (see module doc)."""

  generator = inference.ReportGenerator(
    setup["model"], setup["tokenizer"], setup["example_fn"], batch_size=args.batch_size
  )
  model, params = generator.decode_model, generator.params
  _, _, context = next(iter(generator.batches(setup["studies"][: args.batch_size])))
  block = max(BLOCK_LENS)
  slots = model.context_slots(context, block_len=block)
  # The samplers' cache: every forward attends all of its slots (masked), so the
  # forwards are timed against a cache of the same length.
  cache_length = slots + args.new_tokens
  prefill = jax.jit(
    lambda p, ctx: model.prefill(p, ctx, cache_length=cache_length, block_len=block)
  )

  def timed(fn, *xs) -> float:
    jax.block_until_ready(fn(*xs))  # compile
    start = time.perf_counter()
    jax.block_until_ready(fn(*xs))
    return 1000 * (time.perf_counter() - start) / args.loop

  def one_call(fn, *xs) -> float:
    jax.block_until_ready(fn(*xs))  # compile
    times = []
    for _ in range(args.loop):
      start = time.perf_counter()
      jax.block_until_ready(fn(*xs))
      times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))

  # A sampler call runs one prefill: its cost is that of one call (dispatch included),
  # the median of --loop calls; in a loop of prefills it would be about 1 ms less here.
  costs = {"prefill": one_call(prefill, params, context)}
  cache, next_pos = prefill(params, context)
  for n in sorted({1, *BLOCK_LENS, *(2 * b for b in BLOCK_LENS)}):

    def extends(p, c, n=n):
      positions = next_pos[:, None] + jnp.arange(n)[None, :]

      def body(_, acc):
        # Feed the previous result back so the forwards cannot be hoisted or merged.
        tokens = jnp.zeros((positions.shape[0], n), jnp.int32) + acc
        logits, _ = model.extend(p, c, tokens, positions, block_len=block, num_append=0)
        return jnp.argmax(jnp.sum(logits, axis=1), axis=-1)[:, None].astype(jnp.int32) % 2

      return jax.lax.fori_loop(0, args.loop, body, jnp.zeros((positions.shape[0], 1), jnp.int32))

    costs[f"extend_{n}_tokens"] = timed(jax.jit(extends), params, cache)
  return costs


def peer_row(peer: hf_peer.Peer, args: argparse.Namespace, reports: int) -> dict[str, Any]:
  """transformers' greedy generate (echo_jax/bench/hf_peer.py) of the first `reports`
  prompts, --batch_size per call, timed as our rows are."""
  import torch  # the peer only: torch is a test/benchmark dependency, not a runtime one

  if args.torch_threads:
    torch.set_num_threads(args.torch_threads)
  batches = peer.batches(args.batch_size, reports)
  n = args.new_tokens
  peer.generate(batches[0], n)  # warm-up
  seconds, texts = 0.0, []
  for batch in batches:
    times = []
    for _ in range(args.repeats):  # the fastest call, as for our rows
      start = time.perf_counter()
      new = peer.generate(batch, n)
      times.append(time.perf_counter() - start)
    seconds += min(times)
    texts += [peer.text(row) for row in new]
  tokens = n * reports
  return dict(
    name="transformers generate (PyTorch, greedy)",
    sampler="hf_generate",
    block_len=1,
    batch_size=args.batch_size,
    reports=reports,
    tokens=tokens,
    forwards=tokens,  # one per new token of each report, as our rows count them
    seconds=seconds,
    tpf=1.0,
    tokens_per_second=tokens / seconds,
    ms_per_report=1000 * seconds / reports,
    torch_threads=torch.get_num_threads(),
    weights="echo_jax weights exported with hf_import.save_pretrained",
    predictions=texts,
  )


def markdown(rows: Sequence[dict[str, Any]]) -> str:
  ar = next((r for r in rows if r["sampler"] == "ar"), rows[0])
  lines = [
    "| decoder | batch | TPF | tokens/s | ms/report | paired: sampler / forwards only (ms) "
    "| speed-up vs AR |",
    "|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    if "forwards_ms" in r:
      paired = f"{r['paired_ms']:.1f} / {r['forwards_ms']:.1f} ({r['share_of_bound']:.0%})"
    else:
      paired = "n/a"
    lines.append(
      f"| {r['name']} | {r['batch_size']} | {r['tpf']:.2f} | {r['tokens_per_second']:.1f} | "
      f"{r['ms_per_report']:.1f} | {paired} | "
      f"{r['tokens_per_second'] / ar['tokens_per_second']:.2f}x |"
    )
  return "\n".join(lines)


def environment() -> dict[str, Any]:

  return dict(
    jax=jax.__version__,
    backend=jax.default_backend(),
    devices=f"{jax.device_count()} x {jax.devices()[0].device_kind}",
    cpus=os.cpu_count(),
    load_average_1min=os.getloadavg()[0],  # other work on the machine skews CPU timings
    python=platform.python_version(),
    machine=platform.machine(),
  )


def predicted_ms(row: dict[str, Any], costs: dict[str, float]) -> float:
  """Milliseconds a report of `row` would take if the sampler did nothing but its forwards:
  the prefill and, per forward, the measured extend of as many tokens as it feeds (AR 1;
  a block sampler B, or 2 B when the finished block is appended in the same forward:
  every one-step forward after the first, and the first step of every later
  multi-step block), divided over the batch."""
  reports, batch = row["reports"], row["batch_size"]
  forwards = row["forwards"] / reports  # per report = per batch call (lockstep)
  b = row["block_len"]
  if row["sampler"] == "ar":
    ms = forwards * costs["extend_1_tokens"]
  else:
    blocks = row["tokens"] / reports / b
    fused = max(blocks - 1, 0)  # the first block has nothing to append
    ms = fused * costs[f"extend_{2 * b}_tokens"] + (forwards - fused) * costs[f"extend_{b}_tokens"]
  return (costs["prefill"] + ms) / batch


def forwards_only_program(model: Any, row: dict[str, Any], new_tokens: int) -> Any:
  """A jitted `(params, context) -> tokens` doing only what a call of `row`'s sampler
  must: the prefill and the row's forwards per batch, each writing the cache as the
  sampler's does, and an argmax fed back so no forward can be hoisted or merged.

  AR: the prompt's last token then one token per forward (num_append=1). A block
  sampler: `fused` forwards of 2B tokens appending the previous block (num_append=B),
  every block after the first, and the rest plain B-token denoising forwards
  (num_append=0). Its time is the bound a sampler reaches when it does nothing else."""
  b = row["block_len"]
  forwards = round(row["forwards"] / row["reports"])  # lockstep: per report = per call
  blocks = row["tokens"] // row["reports"] // b
  fused = max(blocks - 1, 0) if row["sampler"] != "ar" else 0

  def tokens_of(logits, n):
    token = jnp.argmax(jnp.sum(logits, axis=1), axis=-1).astype(jnp.int32) % 2
    return jnp.broadcast_to(token[:, None], (token.shape[0], n))

  def ar(params, context):
    batch = jax.tree.leaves(context)[0].shape[0]
    head, last_BT = model.split_context(context, jnp.ones((batch,), jnp.int32), max_tail=1)
    slots = model.context_slots(head, block_len=1)
    cache, pos0_B = model.prefill(params, head, cache_length=slots + new_tokens, block_len=1)

    def body(t, carry):
      token_B1, cache = carry
      pos = (pos0_B + t)[:, None]
      logits, cache = model.extend(params, cache, token_B1, pos, block_len=1, num_append=1)
      return tokens_of(logits, 1), cache

    return jax.lax.fori_loop(0, forwards, body, (jnp.asarray(last_BT, jnp.int32), cache))[0]

  def blockwise(params, context):
    batch = jax.tree.leaves(context)[0].shape[0]
    slots = model.context_slots(context, block_len=b)
    cache, pos0_B = model.prefill(params, context, cache_length=slots + blocks * b, block_len=b)
    block_T = jnp.arange(b)[None, :]

    def plain(_, x_BT):
      logits, _ = model.extend(params, cache, x_BT, pos0_B[:, None] + block_T, block_len=b,
                               num_append=0)  # fmt: skip
      return tokens_of(logits, b)

    x_BT = jax.lax.fori_loop(0, forwards - fused, plain, jnp.zeros((batch, b), jnp.int32))

    def fuse(k, carry):
      x_BT, cache = carry
      pos = pos0_B[:, None] + jnp.concatenate([block_T + k * b, block_T + (k + 1) * b], axis=1)
      toks = jnp.concatenate([x_BT, x_BT], axis=1)
      logits, cache = model.extend(params, cache, toks, pos, block_len=b, num_append=b)
      return tokens_of(logits[:, b:], b), cache

    return jax.lax.fori_loop(0, fused, fuse, (x_BT, cache))[0]

  return jax.jit(ar if row["sampler"] == "ar" else blockwise)


def paired_ms(
  generator: inference.ReportGenerator, sampler: Any, program: Any,
  contexts: Sequence[Any], reports: int, repeats: int,
) -> tuple[float, float]:  # fmt: skip
  """Milliseconds per report of `sampler` and of its `forwards_only_program`, timed in
  alternation: each batch's sampler call is followed by the program's call on the same
  batch, `repeats` times after a warm-up, and each batch's fastest call of each counts.

  Load that comes and goes on a shared machine then hits both alike; timed minutes
  apart (the row's passes, then the bound's), their ratio moved by ±30% run to run."""
  params = generator.params
  jax.block_until_ready(program(params, contexts[0]))  # compile
  sampler_s = np.full(len(contexts), np.inf)
  bound_s = np.full(len(contexts), np.inf)
  for _ in range(repeats):
    for i, context in enumerate(contexts):
      _, seconds = generator.decode(sampler, context)  # compiles on its first call, untimed
      sampler_s[i] = min(sampler_s[i], seconds)
      start = time.perf_counter()
      jax.block_until_ready(program(params, context))
      bound_s[i] = min(bound_s[i], time.perf_counter() - start)
  return 1000 * float(sampler_s.sum()) / reports, 1000 * float(bound_s.sum()) / reports


def with_overhead(
  rows: list[dict[str, Any]], costs: dict[str, float], setup: dict[str, Any],
  args: argparse.Namespace,
) -> None:  # fmt: skip
  """Add to every row of ours predicted_ms (prefill + forwards from the per-forward costs,
  see `predicted_ms`) and, from one `paired_ms` timing of the row's sampler against the
  same work done as one program (`forwards_only_program`): paired_ms (the sampler),
  forwards_ms (the program), overhead_ms (paired_ms - forwards_ms: time spent outside
  the forwards) and share_of_bound (forwards_ms / paired_ms)."""
  generator = inference.ReportGenerator(
    setup["model"], setup["tokenizer"], setup["example_fn"], batch_size=args.batch_size
  )
  contexts = [context for _, _, context in generator.batches(setup["studies"])]
  for row in rows:
    if row["sampler"] in ("ar", "one_step", "multi_step"):
      row["predicted_ms"] = predicted_ms(row, costs)
      sampler = budget_sampler(setup["config"], row["sampler"], row["block_len"], args.new_tokens)
      program = forwards_only_program(generator.decode_model, row, args.new_tokens)
      ours, bound = paired_ms(
        generator, sampler, program, contexts, len(setup["studies"]), args.repeats
      )
      row.update(paired_ms=ours, forwards_ms=bound, overhead_ms=ours - bound)
      row["share_of_bound"] = bound / ours


def sweep(
  setup: dict[str, Any], args: argparse.Namespace, peer: hf_peer.Peer | None = None
) -> list[dict[str, Any]]:
  """Every row at each of --batch_sizes, and the peer's if one is given:
  {batch_size, forward_costs, rows}.

  A batch of b decodes max(--num_prompts, b) studies, so every batch size is timed on
  at least one full batch."""
  points = []
  for b in args.batch_sizes:
    at = argparse.Namespace(**{**vars(args), "batch_size": b})
    part = {**setup, "studies": setup["studies"][: max(args.num_prompts, b)]}
    costs = forward_costs(part, at)
    rows = our_rows(part, at)
    with_overhead(rows, costs, part, at)
    if peer is not None:
      rows.append(peer_row(peer, at, len(part["studies"])))
    points.append(dict(batch_size=b, forward_costs=costs, rows=rows))
  return points


def sweep_figure(points: Sequence[dict[str, Any]], path: str) -> None:
  """tokens/s against batch size, one line per sampler (log-log), saved as a PNG."""
  import matplotlib  # the plotting backend is chosen before pyplot loads

  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
  sizes = [p["batch_size"] for p in points]
  for i, name in enumerate(r["name"] for r in points[0]["rows"]):
    speeds = [p["rows"][i]["tokens_per_second"] for p in points]
    ax.plot(sizes, speeds, marker="o", label=name)
  ax.set_xscale("log", base=2)
  ax.set_yscale("log")
  ax.set_xticks(sizes, [str(b) for b in sizes])
  ax.set_xlabel("batch size (reports per sampler call)")
  ax.set_ylabel("new tokens per second")
  ax.set_title("Decoding throughput against batch size")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def sweep_markdown(points: Sequence[dict[str, Any]]) -> str:
  """tokens/s and ms per report of every row at every batch size, with the row's
  share_of_bound where it has one."""
  sizes = [p["batch_size"] for p in points]
  lines = [
    "| decoder | " + " | ".join(f"batch {b}" for b in sizes) + " |",
    "|---|" + "---|" * len(sizes),
  ]

  def cell(r: dict[str, Any]) -> str:
    share = f"; {r['share_of_bound']:.0%} of bound" if "share_of_bound" in r else ""
    return f"{r['tokens_per_second']:.0f} tok/s ({r['ms_per_report']:.1f} ms{share})"

  for i, row in enumerate(points[0]["rows"]):
    cells = [cell(p["rows"][i]) for p in points]
    lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _costs_line(costs: dict[str, float]) -> str:
  return "ms per forward: " + ", ".join(f"{k} {v:.2f}" for k, v in costs.items())


def _write(args: argparse.Namespace, result: dict[str, Any]) -> dict[str, Any]:
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  return result


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = _parser().parse_args(argv)
  if args.new_tokens % 8 or args.new_tokens < 8:
    raise SystemExit(f"--new_tokens={args.new_tokens} must be a positive multiple of 8")
  if args.repeats < 1:
    raise SystemExit(f"--repeats={args.repeats} must be >= 1")
  if args.batch_sizes and min(args.batch_sizes) < 1:
    raise SystemExit(f"--batch_sizes {args.batch_sizes}: every batch size must be >= 1")
  if args.batch_sizes:
    return _sweep_main(args, argv)
  with tempfile.TemporaryDirectory() as work:
    setup = build(args, args.data or os.path.join(work, "data"))
    costs = forward_costs(setup, args)
    if args.forward_costs_only:
      print(_costs_line(costs))
      only = dict(preset=args.preset, forward_costs=costs, environment=environment())
      return _write(args, only)
    rows = our_rows(setup, args)
    with_overhead(rows, costs, setup, args)
    if not args.no_peer:
      rows.append(peer_row(hf_peer.Peer(setup, work), args, len(setup["studies"])))
  ar = next(r for r in rows if r["sampler"] == "ar")
  result = dict(
    command="python -m echo_jax.bench.sampling " + " ".join(sys.argv[1:] if argv is None else argv),
    preset=args.preset,
    weights=args.checkpoint or f"random (seed {args.seed})",
    prompt_tokens=setup["prompt_tokens"],
    new_tokens=args.new_tokens,
    num_prompts=len(setup["studies"]),
    environment=environment(),
    rows=[{k: v for k, v in r.items() if k != "predictions"} for r in rows],
    forward_costs=costs,
  )
  peer = next((r for r in rows if r["sampler"] == "hf_generate"), None)
  if peer is not None:
    # Same weights, same greedy rule: the texts should agree up to float rounding.
    same = sum(a == b for a, b in zip(ar["predictions"], peer["predictions"]))
    result["ar_equals_peer"] = f"{same}/{len(peer['predictions'])} reports identical"
  table = markdown(rows)
  result["markdown"] = table
  _write(args, result)
  print(table)
  print(_costs_line(costs))
  if peer is not None:
    print(f"AR vs transformers: {result['ar_equals_peer']}")
  return result


def _sweep_main(args: argparse.Namespace, argv: Sequence[str] | None) -> dict[str, Any]:
  with tempfile.TemporaryDirectory() as work:
    setup = build(args, args.data or os.path.join(work, "data"))
    peer = None if args.no_peer else hf_peer.Peer(setup, work)
    points = sweep(setup, args, peer)
  for point in points:
    texts = {row["sampler"]: row.pop("predictions") for row in point["rows"]}
    if "hf_generate" in texts:
      same = sum(a == b for a, b in zip(texts["ar"], texts["hf_generate"], strict=True))
      point["ar_equals_peer"] = f"{same}/{len(texts['ar'])} reports identical"
  plot = args.plot or os.path.splitext(args.out)[0] + ".png"
  os.makedirs(os.path.dirname(os.path.abspath(plot)), exist_ok=True)
  sweep_figure(points, plot)
  result = dict(
    command="python -m echo_jax.bench.sampling " + " ".join(sys.argv[1:] if argv is None else argv),
    preset=args.preset,
    weights=args.checkpoint or f"random (seed {args.seed})",
    prompt_tokens=setup["prompt_tokens"],
    new_tokens=args.new_tokens,
    environment=environment(),
    sweep=points,
    plot=plot,
    markdown=sweep_markdown(points),
  )
  _write(args, result)
  print(result["markdown"])
  print(f"plot -> {plot}")
  return result


if __name__ == "__main__":
  main()
