"""`python -m echo_jax.generate` end to end on tiny random checkpoints the test writes.

An echo_jax workdir (Orbax `checkpoints/<step>/model`) decoded over a dataset split to
JSONL, and a Hugging Face directory (save_pretrained) decoding the images of one study;
the reports must be those of the model that was saved, decoded in-process.
"""

import json
import os
import shutil
import subprocess
import sys

import orbax.checkpoint as ocp
import pytest
import tiny_vlm
from etils import epath
from flax import nnx

from echo_jax import generate, runs
from echo_jax.inference import ReportGenerator, make_sampler
from echo_jax.models.hf_import import save_pretrained
from echo_jax.user_errors import UserError

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
  saved = runs.workdir_config(args.checkpoint)
  assert saved["model"]["preset"] == "tiny"
  tokenizer = runs.find_tokenizer(args.checkpoint, saved)
  assert tokenizer == os.path.join(setup.data_dir, "tokenizer")
  with pytest.raises(UserError, match="tokenizer"):
    runs.find_tokenizer(str(tmp_path), {})
  with pytest.raises(SystemExit, match="--out"):
    generate.main(["--checkpoint", workdir, "--dataset", "r2gen", "--data_path", setup.data_dir])
  with pytest.raises(SystemExit, match="no such image"):
    generate.main(["--checkpoint", workdir, "--images", str(tmp_path / "missing.png")])
  # The patch bound of one image: 112x112 pixels -> 8x8 patches of 14 px.
  assert runs.image_bound(112 * 112) == 64


def test_module_entry_point():
  proc = subprocess.run(
    [sys.executable, "-m", "echo_jax.generate", "--help"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert proc.returncode == 0 and "--checkpoint" in proc.stdout and "--dataset" in proc.stdout


def _with_config(workdir, tmp_path, name, config):
  run = tmp_path / name
  shutil.copytree(os.path.join(workdir, "checkpoints"), run / "checkpoints")
  with open(run / "config.json", "w") as f:
    json.dump({"model": {"preset": "tiny"}, **config}, f)
  return str(run)


def test_saved_block_len_and_sampler(setup, workdir, tmp_path):
  # A B = 4 RAD run decodes multi-step at B = 4 by default: the same tokens as asking for it
  # (older workdirs' rad.block_len: tests/test_runs.py).
  base = ["--dataset", "r2gen", "--data_path", setup.data_dir, "--split", "train"]
  base += ["--num_studies", "2", "--batch_size", "2", "--max_new_tokens", "8", *SIZES]
  newer = _with_config(workdir, tmp_path, "newer", {"stage": "rad", "block_len": 4})
  rows = {}
  for name, run, extra in (
    ("newer", newer, []),
    ("explicit", newer, ["--sampler", "multi_step", "--block_len", "4"]),
  ):
    out = str(tmp_path / f"{name}.jsonl")
    rows[name] = generate.main(["--checkpoint", run, *base, "--out", out, *extra])
  key = [(r["prediction"], r["tokens"], r["forwards"]) for r in rows["explicit"]]
  assert [(r["prediction"], r["tokens"], r["forwards"]) for r in rows["newer"]] == key
  # At B = 4 a block holds 4 tokens: 8 tokens are at least 2 forwards.
  assert all(r["forwards"] >= -(-r["tokens"] // 4) for r in rows["explicit"])
  # The sampler a checkpoint was not trained for is refused unless forced.
  ar = _with_config(workdir, tmp_path, "ar", {"stage": "ar"})
  with pytest.raises(UserError, match="--sampler one_step.*trained to decode with ar.*--force"):
    generate.main(
      ["--checkpoint", ar, *base, "--out", str(tmp_path / "x"), "--sampler", "one_step"]
    )
  with pytest.raises(UserError, match="--sampler one_step.*multi_step"):
    generate.main(
      ["--checkpoint", newer, *base, "--out", str(tmp_path / "x"), "--sampler", "one_step"]
    )
  # A block length that does not divide the padded context, named by its flag.
  with pytest.raises(UserError, match="^--block_len 7: does not divide"):
    generate.main(["--checkpoint", newer, *base, "--out", str(tmp_path / "x"), "--block_len", "7"])


@pytest.mark.parametrize(
  "flag,value,message",
  [
    ("--block_len", "0", "--block_len 0: must be a positive"),
    ("--threshold", "2", "--threshold 2: a confidence"),
    ("--num_studies", "-1", "--num_studies -1: must be 0"),
    ("--max_pixels", "-5", "--max_pixels -5: must be 0"),
    ("--batch_size", "0", "--batch_size 0: must be a positive"),
  ],
)
def test_flag_errors_name_the_flag(flag, value, message, tmp_path):
  argv = ["--checkpoint", str(tmp_path), "--images", "a.png", flag, value]
  with pytest.raises(UserError, match="^" + message):
    generate.main(argv)


def test_user_error_exit_status(tmp_path):
  proc = subprocess.run(
    [sys.executable, "-m", "echo_jax.generate", "--checkpoint", str(tmp_path), "--images", "a.png"]
    + ["--threshold", "-0.5"],
    capture_output=True,
    text=True,
    cwd=REPO,
    env={**os.environ, "PYTHONPATH": REPO},
  )
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.strip() == "error: --threshold -0.5: a confidence, between 0 and 1"
