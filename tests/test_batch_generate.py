"""Batch generation that loses nothing: --out checked first, lines streamed, bad studies
skipped with their reason, interrupted runs resumed, --max_images applied.

The tiny checkpoint and synthetic data are those of tests/test_generate.py (its `setup`
and `workdir` fixtures, imported, hence F811); each test writes its own copy of the
dataset to damage.
"""
# ruff: noqa: F811

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from test_generate import SIZES, setup, workdir  # noqa: F401 (fixtures)

from echo_jax import batch_output, generate
from echo_jax.data.images import BadImageError
from echo_jax.inference import ReportGenerator, make_sampler
from echo_jax.user_errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GARBAGE = b"\x89PNG\r\n\x1a\n this is not an image at all" * 4


def dataset(setup, root, num_studies, *, garbage=(), second_image=None):
  """The first num_studies train studies of the tiny benchmark at `root`.

  garbage: indices of studies whose image is overwritten with bytes no reader decodes.
  second_image: {index: bytes}: that study gets a second image file holding these bytes.
  """
  shutil.copytree(setup.data_dir, root)
  with open(os.path.join(root, "annotation.json")) as f:
    annotation = json.load(f)
  train = annotation["train"][:num_studies]
  for i in garbage:
    with open(os.path.join(root, "images", train[i]["image_path"][0]), "wb") as f:
      f.write(GARBAGE)
  for i, data in (second_image or {}).items():
    extra = os.path.join(os.path.dirname(train[i]["image_path"][0]), "extra.png")
    with open(os.path.join(root, "images", extra), "wb") as f:
      f.write(data)
    train[i]["image_path"].append(extra)
  with open(os.path.join(root, "annotation.json"), "w") as f:
    json.dump({"train": train, "val": [], "test": []}, f)
  return str(root), train


def argv(checkpoint, data, out, *extra):
  args = ["--checkpoint", checkpoint, "--dataset", "r2gen", "--data_path", data]
  args += ["--split", "train", "--out", str(out), "--batch_size", "2", "--sampler", "one_step"]
  return [*args, "--block_len", "8", "--max_new_tokens", "16", *SIZES, *extra]


def lines_of(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


# ------------------------------------------------------------------ --out checked first
def test_bad_out_is_refused_before_the_model_is_loaded(setup, tmp_path):
  # The checkpoint is an empty directory: had the model been loaded first, the error would
  # name the checkpoint, not --out.
  empty = str(tmp_path / "no_model")
  os.makedirs(empty)
  (tmp_path / "a_file").write_text("x")
  existing = tmp_path / "old.jsonl"
  existing.write_text('{"id": "a"}\n')
  for out, message in (
    (tmp_path, "is a directory"),
    (tmp_path / "a_file" / "preds.jsonl", "cannot be created: .*a_file is a file"),
    (existing, "already exists; pass --resume .* or --overwrite"),
  ):
    with pytest.raises(UserError, match=f"^--out {out}.*{message}"):
      generate.main(argv(empty, setup.data_dir, out))
  with pytest.raises(SystemExit):  # the two ways of treating an existing file exclude each other
    generate.main(argv(empty, setup.data_dir, existing, "--resume", "--overwrite"))
  assert existing.read_text() == '{"id": "a"}\n'


def test_out_error_is_one_line_and_exit_2(tmp_path):
  proc = subprocess.run(
    [sys.executable, "-m", "echo_jax.generate", "--checkpoint", str(tmp_path)]
    + ["--dataset", "r2gen", "--data_path", str(tmp_path), "--out", str(tmp_path)],
    capture_output=True,
    text=True,
    cwd=REPO,
    env={**os.environ, "PYTHONPATH": REPO},
    timeout=120,
  )
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.strip() == f"error: --out {tmp_path}: is a directory; give a file name"


# ------------------------------------------------------------------ streaming and skipping
def test_iter_rows_skips_bad_studies_and_keeps_their_batch(setup, tmp_path):
  bad_path = tmp_path / "bad.png"
  bad_path.write_bytes(GARBAGE)
  good = [s for s in setup.studies if s.split == "train"][:3]
  bad = type(good[0])("bad", (str(bad_path),), ("",), "f", "i", "train")
  gen = ReportGenerator(setup.model, setup.tokenizer, setup.example_fn, batch_size=2)
  sampler = make_sampler("one_step", setup.config.tokens, block_len=8, max_new_tokens=16)
  batches = list(gen.iter_rows([good[0], bad, good[1], good[2]], sampler, skip=(BadImageError,)))
  # The first batch is filled from the study after the bad one.
  assert [[r["id"] for r in rows] for rows, _ in batches] == [
    [good[0].id, good[1].id],
    [good[2].id],
  ]
  assert [[s.study.id for s in skipped] for _, skipped in batches] == [["bad"], []]
  assert batches[0][1][0].reason == "unreadable_image" and str(bad_path) in batches[0][1][0].detail
  predictions = [r["prediction"] for rows, _ in batches for r in rows]
  assert predictions == [r["prediction"] for r in gen.generate(good, sampler)]
  with pytest.raises(BadImageError):  # generate keeps raising: nothing is dropped silently
    gen.generate([good[0], bad], sampler)


def test_bad_study_is_skipped_with_its_reason(setup, workdir, tmp_path, capsys):
  data, train = dataset(setup, tmp_path / "data", 5, garbage=[1])
  out = tmp_path / "preds.jsonl"
  rows = generate.main(argv(workdir, data, out))
  written = lines_of(out)
  assert [r["id"] for r in written] == [t["id"] for i, t in enumerate(train) if i != 1]
  assert [r["id"] for r in rows] == [r["id"] for r in written]
  skipped = lines_of(batch_output.skipped_path(str(out)))
  assert [s["id"] for s in skipped] == [train[1]["id"]]
  assert set(skipped[0]) == {"id", "images", "reason"}
  assert (
    skipped[0]["reason"].startswith("unreadable_image: ")
    and skipped[0]["images"][0] in (skipped[0]["reason"])
  )
  err = capsys.readouterr().err
  assert "4 written" in err and "1 skipped (unreadable_image: 1)" in err


def test_max_bad_fraction_stops_and_keeps_what_was_written(setup, workdir, tmp_path, monkeypatch):
  monkeypatch.setattr(generate, "MIN_STUDIES_FOR_BAD_FRACTION", 2)
  data, train = dataset(setup, tmp_path / "data", 6, garbage=[0, 1])
  out = tmp_path / "preds.jsonl"
  # Batch 1 skips studies 0 and 1 and decodes 2 and 3: 2 bad of 4 seen is over 0.3.
  with pytest.raises(UserError, match=r"^--max_bad_fraction 0.3: 2 of the first 4 studies"):
    generate.main(argv(workdir, data, out, "--max_bad_fraction", "0.3"))
  assert [r["id"] for r in lines_of(out)] == [train[2]["id"], train[3]["id"]]
  assert len(lines_of(batch_output.skipped_path(str(out)))) == 2
  # A looser bound lets the same dataset through; resuming decodes only the rest.
  rows = generate.main(argv(workdir, data, out, "--max_bad_fraction", "0.5", "--resume"))
  assert [r["id"] for r in rows] == [train[4]["id"], train[5]["id"]]
  assert [r["id"] for r in lines_of(out)] == [t["id"] for t in train[2:]]
  with pytest.raises(UserError, match="^--max_bad_fraction 1.5: a share"):
    generate.main(argv(workdir, data, out, "--max_bad_fraction", "1.5"))


def test_continuous_batching_writes_the_same_records(setup, workdir, tmp_path):
  # Study 1's image is garbage (skipped). Every study has its own image file: each record
  # must name its own study's, whichever order the rows finish in.
  data, train = dataset(setup, tmp_path / "data", 6, garbage=[1])
  records = {}
  for batching in ("lockstep", "continuous"):
    out = tmp_path / f"{batching}.jsonl"
    generate.main(argv(workdir, data, out, "--batching", batching))
    records[batching] = {r["id"]: r for r in lines_of(out)}
    skipped = lines_of(batch_output.skipped_path(str(out)))
    assert [s["id"] for s in skipped] == [train[1]["id"]]
  assert records["continuous"].keys() == {t["id"] for i, t in enumerate(train) if i != 1}
  for t in train:
    if t["id"] not in records["lockstep"]:
      continue
    lock, cont = records["lockstep"][t["id"]], records["continuous"][t["id"]]
    assert cont["images"] == lock["images"] and len(cont["images"]) == 1
    assert cont["images"][0].endswith(t["image_path"][0])
    assert cont["prediction"] == lock["prediction"] and cont["reference"] == lock["reference"]
    for stat in ("tokens", "forwards", "eos", "looped"):
      assert cont["stats"][stat] == lock["stats"][stat], stat


# ------------------------------------------------------------------ resume
def _same(records):
  return [(r["id"], r["prediction"], r["reference"], r["images"]) for r in records]


def test_resume_after_a_cut_off_line_equals_one_uninterrupted_run(setup, workdir, tmp_path):
  data, train = dataset(setup, tmp_path / "data", 6)
  whole = tmp_path / "whole.jsonl"
  generate.main(argv(workdir, data, whole))
  reference = lines_of(whole)
  assert [r["id"] for r in reference] == [t["id"] for t in train]
  # A run killed while writing line 4: 3 whole lines and half of the fourth.
  cut = tmp_path / "cut.jsonl"
  text = whole.read_text().splitlines(keepends=True)
  cut.write_text("".join(text[:3]) + text[3][: len(text[3]) // 2])
  with pytest.raises(UserError, match="already exists"):
    generate.main(argv(workdir, data, cut))
  rows = generate.main(argv(workdir, data, cut, "--resume"))
  assert [r["id"] for r in rows] == [t["id"] for t in train[3:]]  # only the rest decoded
  assert _same(lines_of(cut)) == _same(reference)
  # Nothing left: resuming again decodes nothing and changes nothing.
  assert generate.main(argv(workdir, data, cut, "--resume")) == []
  assert _same(lines_of(cut)) == _same(reference)
  # --overwrite starts afresh.
  cut.write_text('{"id": "stale"}\n')
  generate.main(argv(workdir, data, cut, "--overwrite", "--num_studies", "2"))
  assert [r["id"] for r in lines_of(cut)] == [t["id"] for t in train[:2]]


def test_read_done_drops_only_a_cut_off_last_line(tmp_path):
  path = tmp_path / "p.jsonl"
  path.write_text('{"id": "a"}\n{"id": "b"}\n{"id": "c"')
  assert [r["id"] for r in batch_output.read_done(str(path))] == ["a", "b"]
  assert path.read_text() == '{"id": "a"}\n{"id": "b"}\n'
  # A whole record whose newline is missing is written again too (it may be cut short).
  path.write_text('{"id": "a"}\n{"id": "b"}')
  assert [r["id"] for r in batch_output.read_done(str(path))] == ["a"]
  # A bad line in the middle is no interrupted write: refused, naming the line.
  path.write_text('{"id": "a"}\nnot json\n{"id": "c"}\n')
  with pytest.raises(UserError, match=r"^cannot resume in .*p.jsonl:2: line is not a JSON"):
    batch_output.read_done(str(path))
  assert batch_output.skipped_path("x/preds.jsonl") == "x/preds.skipped.jsonl"
  assert batch_output.skipped_path("preds") == "preds.skipped.jsonl"


# ------------------------------------------------------------------ --max_images
def test_max_images_drops_the_images_after_the_first(setup, workdir, tmp_path):
  # Study 1 gets a second, undecodable image: only --max_images 1 keeps the study.
  data, train = dataset(setup, tmp_path / "data", 3, second_image={1: GARBAGE})
  out = tmp_path / "all.jsonl"
  generate.main(argv(workdir, data, out))
  assert [r["id"] for r in lines_of(out)] == [train[0]["id"], train[2]["id"]]
  out1 = tmp_path / "first.jsonl"
  generate.main(argv(workdir, data, out1, "--max_images", "1"))
  records = lines_of(out1)
  assert [r["id"] for r in records] == [t["id"] for t in train]
  assert [len(r["images"]) for r in records] == [1, 1, 1]
  assert not os.path.getsize(batch_output.skipped_path(str(out1)))
  # Study 1 decoded from its first image alone: the report of the one-image study.
  study = [s for s in setup.studies if s.id == train[1]["id"]][0]
  gen = ReportGenerator(setup.model, setup.tokenizer, setup.example_fn, batch_size=2)
  sampler = make_sampler("one_step", setup.config.tokens, block_len=8, max_new_tokens=16)
  assert records[1]["prediction"] == gen.generate([study], sampler)[0]["prediction"]


# ------------------------------------------------------------------ the command itself
@pytest.mark.slow  # a fresh process (jax, the model, compilation): 17-27 s on 2 busy cores;
# test_bad_study_is_skipped_with_its_reason is the fast in-process variant
def test_command_skips_a_garbage_image_and_warns_about_a_flat_one(setup, workdir, tmp_path):
  data, train = dataset(setup, tmp_path / "data", 5, garbage=[2])
  flat = os.path.join(data, "images", train[3]["image_path"][0])
  Image.fromarray(np.full((224, 224), 128, np.uint8)).save(flat)
  out = tmp_path / "preds.jsonl"
  proc = subprocess.run(
    [sys.executable, "-m", "echo_jax.generate", *argv(workdir, data, out)],
    capture_output=True,
    text=True,
    cwd=REPO,
    env={**os.environ, "PYTHONPATH": REPO},
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr
  assert [r["id"] for r in lines_of(out)] == [t["id"] for i, t in enumerate(train) if i != 2]
  skipped = lines_of(batch_output.skipped_path(str(out)))
  bad = os.path.join(data, "images", train[2]["image_path"][0])
  assert [s["id"] for s in skipped] == [train[2]["id"]] and bad in skipped[0]["reason"]
  warned = [line for line in proc.stderr.splitlines() if line.startswith("warning: ")]
  assert len(warned) == 1 and flat in warned[0] and "flat" in warned[0]
  assert "4 written" in proc.stderr and "1 skipped (unreadable_image: 1)" in proc.stderr


def test_sizes_far_from_the_trained_ones_warn(capsys):
  saved = {"data": {"min_pixels": 3136, "max_pixels": 3136}}
  generate.warn_far_from_training(saved, 3136, 3136 * 4)  # at the bound: no warning
  assert capsys.readouterr().err == ""
  generate.warn_far_from_training(saved, 3136, 1_000_000)
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 1 and err[0].startswith("warning: --max_pixels 1000000 is more than 4x")
  generate.warn_far_from_training({}, 3136, 1_000_000)  # nothing known about training
  assert capsys.readouterr().err == ""
