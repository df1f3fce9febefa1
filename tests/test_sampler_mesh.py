"""Samplers on an 8-device CPU mesh give exactly the single-device tokens.

The tiny EchoVLM's parameters are placed by the logical-axis rules
(models/sharding.py: heads, kv, mlp and vocab on `tensor`) and the batch is split
over `data`; AR, multi-step and one-step decoding of the same studies must produce
the same tokens and forward counts as on one device. Collectives on a 2-core host can
stall, so the decoding runs in a child process under `timeout -k`.
"""

import argparse
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BUDGET = 16


def compare(data_dir: str, samplers: list[str], tensor: int) -> dict:
  """Decode one batch of 4 studies on one device and on a (data, 1, tensor) mesh."""
  import jax
  import ml_collections
  import numpy as np
  import tiny_vlm

  from echo_jax.inference import ReportGenerator, make_sampler
  from echo_jax.train import mesh as mesh_lib

  setup = tiny_vlm.make_setup(data_dir)
  mesh = mesh_lib.make_mesh(
    ml_collections.ConfigDict(dict(data=8 // tensor, fsdp=1, tensor=tensor)), jax.devices()[:8]
  )
  single = ReportGenerator(setup.model, setup.tokenizer, setup.example_fn, batch_size=4)
  sharded = ReportGenerator(setup.model, setup.tokenizer, setup.example_fn, batch_size=4, mesh=mesh)
  studies = setup.studies[4:8]
  _, _, one = next(single.batches(studies))
  _, _, many = next(sharded.batches(studies))
  specs = {str(x.sharding.spec) for x in jax.tree.leaves(sharded.params)}
  result = {"param_specs": sorted(specs), "context_spec": str(many.tokens_BP.sharding.spec)}
  for name in samplers:
    sampler = make_sampler(name, setup.config.tokens, block_len=8, max_new_tokens=BUDGET)
    want = jax.device_get(sampler(single.decode_model, single.params, one))
    got = jax.block_until_ready(sampler(sharded.decode_model, sharded.params, many))
    out_spec = str(got.tokens_BR.sharding.spec)
    got = jax.device_get(got)
    result[name] = {
      "same_tokens": bool(np.array_equal(want.tokens_BR, got.tokens_BR)),
      "same_lengths": bool(np.array_equal(want.lengths_B, got.lengths_B)),
      "same_forwards": bool(np.array_equal(want.stats.forwards_B, got.stats.forwards_B)),
      "forwards": np.asarray(got.stats.forwards_B).tolist(),
      "tokens": np.asarray(got.stats.tokens_B).tolist(),
      "output_spec": out_spec,
    }
  return result


def run_child(tmp_path, samplers: list[str], tensor: int, limit: int) -> dict:
  env = dict(os.environ)
  env.update(
    XLA_FLAGS="--xla_force_host_platform_device_count=8",
    JAX_PLATFORMS="cpu",
    PYTHONPATH=os.pathsep.join([HERE, REPO, env.get("PYTHONPATH", "")]),
  )
  out = tmp_path / "result.json"
  cmd = ["timeout", "-k", "10", str(limit), sys.executable, __file__, "--data", str(tmp_path)]
  cmd += ["--tensor", str(tensor), "--out", str(out), *samplers]
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=limit + 30)
  assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
  return json.loads(out.read_text())


def check(result: dict, samplers: list[str], tensor: int) -> None:
  # The parameters really are split over `tensor` and the batch over `data`.
  assert any("tensor" in s for s in result["param_specs"]), result["param_specs"]
  assert "data" in result["context_spec"]
  for name in samplers:
    r = result[name]
    assert r["same_tokens"] and r["same_lengths"] and r["same_forwards"], (name, tensor, r)
    assert "data" in r["output_spec"]
    if name == "one_step":
      assert all(t == 8 * f for t, f in zip(r["tokens"], r["forwards"]))


def test_one_step_on_mesh_equals_single_device(tmp_path):
  result = run_child(tmp_path, ["one_step"], tensor=4, limit=150)
  check(result, ["one_step"], 4)


@pytest.mark.slow
@pytest.mark.parametrize("tensor", [2, 4])
def test_all_samplers_on_mesh_equal_single_device(tmp_path, tensor):
  samplers = ["ar", "multi_step", "one_step"]
  result = run_child(tmp_path, samplers, tensor=tensor, limit=500)
  check(result, samplers, tensor)


if __name__ == "__main__":
  parser = argparse.ArgumentParser()
  parser.add_argument("--data", required=True)
  parser.add_argument("--tensor", type=int, default=4)
  parser.add_argument("--out", required=True)
  parser.add_argument("samplers", nargs="+")
  args = parser.parse_args()
  result = compare(args.data, args.samplers, args.tensor)
  with open(args.out, "w") as f:
    json.dump(result, f)
