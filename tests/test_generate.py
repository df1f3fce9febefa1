"""`python -m echo_jax.generate` end to end on tiny random checkpoints the test writes.

An echo_jax workdir (Orbax `checkpoints/<step>/model`) decoded over a dataset split to
JSONL, and a Hugging Face directory (save_pretrained) decoding the images of one study;
the reports must be those of the model that was saved, decoded in-process.
"""

import json
import os
import subprocess
import sys

import orbax.checkpoint as ocp
import pytest
import tiny_vlm
from etils import epath
from flax import nnx

from echo_jax import generate
from echo_jax.inference import ReportGenerator, make_sampler
from echo_jax.models.hf_import import save_pretrained

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = [
  "--min_pixels",
  str(tiny_vlm.PIXELS),
  "--max_pixels",
  str(tiny_vlm.PIXELS),
  "--context_len",
  str(tiny_vlm.CONTEXT_LEN),
  "--max_patches",
  "16",
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  return tiny_vlm.make_setup(str(tmp_path_factory.mktemp("data")), seed=3)


@pytest.fixture(scope="module")
def workdir(setup, tmp_path_factory):
  """A training workdir holding the tiny model at step 5 (as the train loop saves it)."""
  work = tmp_path_factory.mktemp("work")
  manager = ocp.CheckpointManager(
    epath.Path(work) / "checkpoints",
    options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False),
  )
  manager.save(5, args=ocp.args.Composite(model=ocp.args.StandardSave(nnx.state(setup.model))))
  manager.wait_until_finished()
  manager.close()
  return str(work)


def expected(setup, studies, sampler, batch_size):
  gen = ReportGenerator(setup.model, setup.tokenizer, setup.example_fn, batch_size=batch_size)
  return [r["prediction"] for r in gen.generate(studies, sampler)]


def test_workdir_dataset_to_jsonl(setup, workdir, tmp_path, capsys):
  out = tmp_path / "preds" / "train.jsonl"
  argv = ["--checkpoint", workdir, "--dataset", "r2gen", "--data_path", setup.data_dir]
  argv += ["--split", "train", "--num_studies", "5", "--out", str(out), "--batch_size", "2"]
  argv += ["--sampler", "one_step", "--block_len", "8", "--max_new_tokens", "16", *SIZES]
  rows = generate.main(argv)
  lines = [json.loads(line) for line in out.read_text().splitlines()]
  train = [s for s in setup.studies if s.split == "train"][:5]
  assert [r["id"] for r in lines] == [s.id for s in train]
  assert [r["reference"] for r in lines] == [s.report for s in train]
  for r in lines:
    assert set(r) == {"id", "prediction", "reference", "stats", "images"}
    assert r["stats"]["tpf"] == 8.0 and r["stats"]["tokens"] == 8 * r["stats"]["forwards"]
    assert r["stats"]["seconds"] > 0 and os.path.isfile(r["images"][0])
  # The restored weights are the saved ones: same reports as the in-memory model.
  sampler = make_sampler("one_step", setup.config.tokens, block_len=8, max_new_tokens=16)
  assert [r["prediction"] for r in lines] == expected(setup, train, sampler, 2)
  assert [r["prediction"] for r in rows] == [r["prediction"] for r in lines]
  assert "TPF 8.00" in capsys.readouterr().err


def test_hf_directory_one_study_images(setup, tmp_path, capsys):
  hf = tmp_path / "hf"
  save_pretrained(setup.model, setup.config, hf)
  setup.tokenizer.save(str(hf))  # the tokenizer is found next to the weights
  study = setup.studies[0]
  argv = ["--checkpoint", str(hf), "--images", *study.image_paths, "--sampler", "ar"]
  rows = generate.main([*argv, "--max_new_tokens", "12", *SIZES])
  printed = capsys.readouterr()
  sampler = make_sampler("ar", setup.config.tokens, max_new_tokens=12)
  assert rows[0]["prediction"] == expected(setup, [study], sampler, 1)[0]
  assert printed.out == rows[0]["prediction"] + "\n"
  assert "[ar] TPF 1.00" in printed.err and "ms" in printed.err


def test_workdir_config_and_errors(setup, workdir, tmp_path):
  # A step directory picks that checkpoint; the workdir's config.json names the preset and
  # the data directory, where the tokenizer is found.
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump({"model": {"preset": "tiny"}, "data": {"path": setup.data_dir}}, f)
  args = generate._parser().parse_args(
    ["--checkpoint", os.path.join(workdir, "checkpoints", "5"), "--images", "x.png"]
  )
  saved = generate.workdir_config(args.checkpoint)
  assert saved["model"]["preset"] == "tiny"
  assert generate.find_tokenizer(args, saved) == os.path.join(setup.data_dir, "tokenizer")
  with pytest.raises(SystemExit, match="tokenizer"):
    generate.find_tokenizer(
      generate._parser().parse_args(["--checkpoint", str(tmp_path), "--images", "a"]), {}
    )
  with pytest.raises(SystemExit, match="--out"):
    generate.main(["--checkpoint", workdir, "--dataset", "r2gen", "--data_path", setup.data_dir])
  with pytest.raises(SystemExit, match="no such image"):
    generate.main(["--checkpoint", workdir, "--images", str(tmp_path / "missing.png")])
  # The patch bound of one image: 112x112 pixels -> 8x8 patches of 14 px.
  assert generate.image_bound(112 * 112) == 64


def test_module_entry_point():
  proc = subprocess.run(
    [sys.executable, "-m", "echo_jax.generate", "--help"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert proc.returncode == 0 and "--checkpoint" in proc.stdout and "--dataset" in proc.stdout
