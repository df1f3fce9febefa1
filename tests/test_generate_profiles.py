"""`python -m echo_jax.generate` picks its decoding profile from the checkpoint.

An echo_jax workdir trained at B = 4 decodes at B = 4 with no block flag (its config.json
says so), here over an echo-json test file; a directory named like a released checkpoint
decodes with the released profile, in Chinese with --lang zh.
"""

import json
import os

import numpy as np
import orbax.checkpoint as ocp
import pytest
import tiny_vlm
from etils import epath
from flax import nnx

from echo_jax import generate, profiles
from echo_jax.data import readers
from echo_jax.inference import ReportGenerator, make_sampler
from echo_jax.models.hf_import import save_pretrained

SIZES = ["--min_pixels", str(tiny_vlm.PIXELS), "--max_pixels", str(tiny_vlm.PIXELS)]
SIZES += ["--max_patches", "16"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  return tiny_vlm.make_setup(str(tmp_path_factory.mktemp("data")), seed=5)


@pytest.fixture(scope="module")
def test_json(setup):
  """Three studies as an echo-json test file, images relative to its folder."""
  folder = os.path.join(setup.data_dir, "jsons")
  os.makedirs(folder, exist_ok=True)
  entries = [
    {
      "sample_id": s.id,
      "images": [os.path.relpath(p, folder) for p in s.image_paths],
      "ground_truth": {"findings": s.findings, "impression": s.impression},
    }
    for s in setup.studies[:3]
  ]
  path = os.path.join(folder, "synthetic_test_EN.json")
  with open(path, "w") as f:
    json.dump(entries, f)
  return path


def _workdir(setup, root, saved):
  manager = ocp.CheckpointManager(
    epath.Path(root) / "checkpoints",
    options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False),
  )
  manager.save(1, args=ocp.args.Composite(model=ocp.args.StandardSave(nnx.state(setup.model))))
  manager.wait_until_finished()
  manager.close()
  with open(os.path.join(root, "config.json"), "w") as f:
    json.dump(saved, f)
  return str(root)


def test_b4_workdir_decodes_at_b4_without_flags(setup, test_json, tmp_path):
  saved = {
    "stage": "dcd",
    "rad": {"block_len": 4},
    "model": {"preset": "tiny"},
    "data": {"path": setup.data_dir},
  }
  work = _workdir(setup, tmp_path / "dcd_b4", saved)
  out = tmp_path / "preds.jsonl"
  argv = ["--checkpoint", work, "--dataset", "echo-json", "--data_path", test_json]
  argv += ["--out", str(out), "--max_new_tokens", "16", "--batch_size", "2", *SIZES]
  generate.main([*argv, "--context_len", str(tiny_vlm.CONTEXT_LEN)])
  lines = [json.loads(line) for line in out.read_text().splitlines()]
  studies = readers.read_dataset("echo-json", test_json)
  assert [r["id"] for r in lines] == [s.id for s in studies] and len(lines) == 3
  for r in lines:
    assert r["stats"]["tpf"] == 4.0 and r["stats"]["tokens"] == 4 * r["stats"]["forwards"]
  sampler = make_sampler("one_step", setup.config.tokens, block_len=4, max_new_tokens=16)
  gen = ReportGenerator(setup.model, setup.tokenizer, setup.example_fn, batch_size=2)
  assert [r["prediction"] for r in lines] == [
    r["prediction"] for r in gen.generate(studies, sampler)
  ]


def test_released_directory_in_chinese(setup, tmp_path, capsys):
  hf = tmp_path / "ECHO_Base_block4"
  save_pretrained(setup.model, setup.config, hf)
  setup.tokenizer.save(str(hf))
  study = setup.studies[0]
  context_len = 256
  argv = ["--checkpoint", str(hf), "--images", *study.image_paths, "--lang", "zh"]
  argv += ["--profile", "released"]  # also the default for this name
  argv += ["--max_new_tokens", "8", "--context_len", str(context_len), *SIZES]
  rows = generate.main(argv)
  assert "[multi_step]" in capsys.readouterr().err

  profile = profiles.released_profile(str(hf), lang="zh").with_overrides(max_new_tokens=8)
  example_fn = tiny_vlm.example_fn(setup.tokenizer, setup.config, context_len)
  zh = type(example_fn)(**{**vars(example_fn), "instruction": profile.instruction})
  prompt = zh(study)["context_tokens"]
  text = setup.tokenizer.decode(prompt, skip_special_tokens=False)
  assert profiles.RELEASED_INSTRUCTIONS["zh"] in text
  gen = ReportGenerator(setup.model, setup.tokenizer, zh, batch_size=1)
  want = gen.generate([study], profiles.make_sampler(profile, setup.config.tokens))[0]
  assert rows[0]["prediction"] == want["prediction"]
  assert rows[0]["forwards"] == want["forwards"]
  # The English prompt decodes differently in general; at least its prompt differs.
  en = example_fn(study)["context_tokens"]
  assert not np.array_equal(en, prompt)
