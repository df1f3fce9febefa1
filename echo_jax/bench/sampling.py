"""Decoding speed of the samplers against transformers' greedy `generate`, same model and prompts.

    python -m echo_jax.bench.sampling --out sampling.json                 # tiny preset
    python -m echo_jax.bench.sampling --preset small --num_prompts 4 --out small.json

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
loading and tokenization are not timed on either side. tokens/s = all new tokens /
all timed seconds; ms/report = timed seconds / reports; TPF = new tokens / decode
forwards (the prefill not counted; for `generate` the forward that consumes the
prompt also yields the first token, so its TPF is 1 by construction).
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
  p.add_argument("--new_tokens", type=int, default=64, help="new tokens per report (mult. of 8)")
  p.add_argument("--pixels", type=int, default=112 * 112, help="image area after resizing")
  p.add_argument("--no_peer", action="store_true", help="skip transformers' generate")
  p.add_argument("--torch_threads", type=int, default=0, help="0 = all CPUs")
  return p


# ------------------------------------------------------------------ setup
def build(args: argparse.Namespace, data_dir: str) -> dict[str, Any]:
  """Model, tokenizer, studies and the StudyExamples transform of the benchmark."""
  import jax
  from flax import nnx

  from echo_jax.data import images, readers, synthetic
  from echo_jax.data import tokenizer as tokenizer_lib
  from echo_jax.data.pipeline import StudyExamples
  from echo_jax.models.presets import TINY_TOKEN_IDS, get_preset
  from echo_jax.models.vlm import EchoVLM

  synthetic.write_benchmark(
    data_dir, args.num_prompts, args.seed, workers=1, gallery=False, progress=False
  )
  studies = readers.read_dataset("r2gen", data_dir)[: args.num_prompts]
  tok_dir = os.path.join(data_dir, "tokenizer")
  if os.path.isfile(os.path.join(tok_dir, "tokenizer.json")):
    tokenizer = tokenizer_lib.load_tokenizer(tok_dir)
  else:
    tokenizer = tokenizer_lib.train_bpe_tokenizer([s.report for s in studies], 1024, tok_dir)
  # The small BPE's special ids are 0..7 whatever the preset; the vocabulary holds them.
  config = get_preset(args.preset).replace(tokens=TINY_TOKEN_IDS)
  if args.checkpoint:
    from echo_jax.train.checkpoint import restore_model_state

    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: EchoVLM(config, rngs=nnx.Rngs(0))))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract
    )
    model = nnx.merge(graphdef, restore_model_state(args.checkpoint, abstract))
  else:
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


def our_rows(setup: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
  from echo_jax import inference

  config = setup["config"]
  generator = inference.ReportGenerator(
    setup["model"], setup["tokenizer"], setup["example_fn"], batch_size=args.batch_size
  )
  never = config.text.vocab_size  # an id outside the vocabulary: no report ends early
  plans = [("AR (echo_jax)", "ar", 1)]
  plans += [(f"multi-step B={b} (steps={b}, tau=0.85)", "multi_step", b) for b in BLOCK_LENS]
  plans += [(f"one-step B={b}", "one_step", b) for b in BLOCK_LENS]
  rows = []
  for name, kind, block in plans:
    sampler = inference.make_sampler(
      kind, config.tokens, block_len=block, max_new_tokens=args.new_tokens
    )
    sampler = dataclasses.replace(sampler, eos_id=never)
    generated = generator.generate(setup["studies"], sampler, progress=name)
    summary = inference.speed_summary(generated)
    if summary["tokens"] != args.new_tokens * len(generated):
      raise RuntimeError(f"{name}: reports did not all reach {args.new_tokens} tokens")
    rows.append(
      dict(name=name, sampler=kind, block_len=block, batch_size=args.batch_size, **summary)
    )
    rows[-1]["predictions"] = [g["prediction"] for g in generated]
  return rows


def peer_row(setup: dict[str, Any], args: argparse.Namespace, work: str) -> dict[str, Any]:
  """transformers' greedy generate on the same weights and prompts, batch 1."""
  import numpy as np
  import torch
  import transformers

  from echo_jax.data import images
  from echo_jax.data import tokenizer as tokenizer_lib
  from echo_jax.models.hf_import import save_pretrained

  if args.torch_threads:
    torch.set_num_threads(args.torch_threads)
  config, tokenizer = setup["config"], setup["tokenizer"]
  path = os.path.join(work, "hf")
  save_pretrained(setup["model"], config, path)
  hf = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
    path, dtype=torch.float32
  ).eval()
  inputs = []
  for study in setup["studies"]:
    patches, grid = images.load_study_images(study.image_paths, setup["image_config"])
    merge = config.vision.spatial_merge_size
    ids = tokenizer_lib.encode_prompt(tokenizer, [images.num_image_tokens(g, merge) for g in grid])
    inputs.append(
      dict(
        input_ids=torch.tensor(ids[None], dtype=torch.long),
        attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
        pixel_values=torch.tensor(patches),
        image_grid_thw=torch.tensor(grid),
      )
    )
  n = args.new_tokens
  kw = dict(
    max_new_tokens=n,
    min_new_tokens=n,
    do_sample=False,
    num_beams=1,
    eos_token_id=config.tokens.eos,
    pad_token_id=config.tokens.pad,
  )

  def run(x):
    with torch.inference_mode():
      return hf.generate(**x, **kw)

  run(inputs[0])  # warm-up
  seconds, texts = 0.0, []
  for x in inputs:
    start = time.perf_counter()
    out = run(x)
    seconds += time.perf_counter() - start
    new = out[0, x["input_ids"].shape[1] :].numpy()
    if len(new) != n:
      raise RuntimeError(f"generate returned {len(new)} new tokens, expected {n}")
    texts.append(tokenizer_lib.decode(tokenizer, np.asarray(new), stop_at_eos=False))
  reports, tokens = len(inputs), n * len(inputs)
  return dict(
    name="transformers generate (PyTorch, greedy)",
    sampler="hf_generate",
    block_len=1,
    batch_size=1,
    reports=reports,
    tokens=tokens,
    forwards=tokens,
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
    "| decoder | batch | TPF | tokens/s | ms/report | speed-up vs AR |",
    "|---|---|---|---|---|---|",
  ]
  for r in rows:
    lines.append(
      f"| {r['name']} | {r['batch_size']} | {r['tpf']:.2f} | {r['tokens_per_second']:.1f} | "
      f"{r['ms_per_report']:.1f} | {r['tokens_per_second'] / ar['tokens_per_second']:.2f}x |"
    )
  return "\n".join(lines)


def environment() -> dict[str, Any]:
  import jax

  return dict(
    jax=jax.__version__,
    backend=jax.default_backend(),
    devices=f"{jax.device_count()} x {jax.devices()[0].device_kind}",
    cpus=os.cpu_count(),
    load_average_1min=os.getloadavg()[0],  # other work on the machine skews CPU timings
    python=platform.python_version(),
    machine=platform.machine(),
  )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = _parser().parse_args(argv)
  if args.new_tokens % 8 or args.new_tokens < 8:
    raise SystemExit(f"--new_tokens={args.new_tokens} must be a positive multiple of 8")
  with tempfile.TemporaryDirectory() as work:
    setup = build(args, args.data or os.path.join(work, "data"))
    rows = our_rows(setup, args)
    if not args.no_peer:
      rows.append(peer_row(setup, args, work))
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
  )
  peer = next((r for r in rows if r["sampler"] == "hf_generate"), None)
  if peer is not None:
    # Same weights, same greedy rule: the texts should agree up to float rounding.
    same = sum(a == b for a, b in zip(ar["predictions"], peer["predictions"]))
    result["ar_equals_peer"] = f"{same}/{len(peer['predictions'])} reports identical"
  table = markdown(rows)
  result["markdown"] = table
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  print(table)
  if peer is not None:
    print(f"AR vs transformers: {result['ar_equals_peer']}")
  return result


if __name__ == "__main__":
  main()
