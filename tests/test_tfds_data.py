"""A built echo_cxr dataset as a data path: TfdsStudies, training on it, generate from it.

One tiny build (the synthetic benchmark's 20 studies through the tfds builder) serves every
test; the path-based reading of the same synthetic files is the reference.
"""

import json
import os
import pickle
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from absl import flags

from echo_jax import config_lib, generate, reproduce
from echo_jax.data import datasets, examples, images, pipeline, synthetic
from echo_jax.data import tfds_builder as tb
from echo_jax.data.readers import read_dataset
from echo_jax.data.study import Study
from echo_jax.data.tfds_source import NotATfdsDatasetError, TfdsStudies, image_name
from echo_jax.train import loop, tasks
from echo_jax.user_errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """(synthetic root, built dataset dir): 20 synthetic studies, built with their tokenizer."""
  root = tmp_path_factory.mktemp("tfds_data")
  syn = str(root / "synthetic")
  synthetic.write_benchmark(syn, 20, 0, workers=1, gallery=False, progress=False)
  builder = tb.build("r2gen", syn, str(root / "tfds"))
  return syn, os.fspath(builder.data_dir)


def _config(workdir, data_dir, *overrides):
  return config_lib.load(
    os.path.join(REPO, "configs/rad.py:tiny"),
    [
      f"workdir={workdir}",
      "data.name=tfds",
      f"data.path={data_dir}",
      "data.context_len=64",
      "data.response_len=112",
      "batch_size=4",
      "total_steps=2",
      "optimizer.warmup_steps=1",
      "log_every=1",
      "eval_every=2",
      "checkpoint_every=2",
      "sample_every=0",
      "tensorboard=False",
      "mesh.data=1",
      *overrides,
    ],
  )


def _tokenizer(config, syn):
  """The synthetic benchmark's own BPE (trained on its train reports), as the runs use it."""
  model_config = config_lib.model_config(config)
  return datasets.load_tokenizer_for(
    "",
    data_name="synthetic",
    data_path=syn,
    train_studies=read_dataset("r2gen", syn, splits=["train"]),
    vocab_size=model_config.text.vocab_size,
    token_ids=model_config.tokens,
  )


@pytest.fixture(scope="module")
def with_tokenizer(built, tmp_path_factory):
  """The built dir with the synthetic tokenizer copied to DATA_PATH/tokenizer."""
  syn, data_dir = built
  config = _config(tmp_path_factory.mktemp("unused"), data_dir)
  _tokenizer(config, syn)
  dest = os.path.join(data_dir, "tokenizer")
  if not os.path.isdir(dest):
    shutil.copytree(datasets.synthetic_tokenizer_dir(syn), dest)
  return built


def test_sequence_of_studies(built):
  syn, data_dir = built
  by_id = {s.id: s for s in read_dataset("r2gen", syn)}
  for split in ("train", "val", "test"):
    studies = TfdsStudies(data_dir, split)
    want = {i for i, s in by_id.items() if s.split == split}
    assert len(studies) == len(want) > 0
    assert {s.id for s in studies} == want
  train = TfdsStudies(data_dir, "train")
  s = train[0]
  ref = by_id[s.id]
  assert isinstance(s, Study) and s.split == "train" and s.report == ref.report
  assert s.image_paths == tuple(image_name(s.id, k) for k in range(len(ref.image_paths)))
  assert len(s.images) == len(ref.image_paths) and s.images[0][:8] == b"\x89PNG\r\n\x1a\n"
  assert s.view_positions == ref.view_positions
  assert "images=" not in repr(s)  # bytes stay out of the repr
  assert train[-1] == train[len(train) - 1] and hash(train[1]) == hash(train[1])
  with pytest.raises(IndexError):
    train[len(train)]
  head = train[:3]
  assert isinstance(head, TfdsStudies) and [x.id for x in head] == [x.id for x in list(train)[:3]]
  picked = train.select([2, 0])
  assert [x.id for x in picked] == [train[2].id, train[0].id]
  again = pickle.loads(pickle.dumps(picked))
  assert len(again) == 2 and again[0] == picked[0]
  one = TfdsStudies(data_dir, "train", max_images=1)
  assert all(len(x.images) == len(x.image_paths) == len(x.view_positions) == 1 for x in one)
  assert train.ids_and_image_counts() == [(x.id, len(x.images)) for x in train]


def test_errors_name_the_path(built, tmp_path):
  _, data_dir = built
  with pytest.raises(NotATfdsDatasetError, match=f"{tmp_path / 'nowhere'} is not a folder"):
    TfdsStudies(str(tmp_path / "nowhere"), "train")
  with pytest.raises(NotATfdsDatasetError, match=f"{tmp_path} holds no built dataset"):
    TfdsStudies(str(tmp_path), "train")
  other = tmp_path / "other" / "1.0.0"
  other.mkdir(parents=True)
  (other / "dataset_info.json").write_text(json.dumps({"name": "mnist"}))
  with pytest.raises(NotATfdsDatasetError, match="holds the tfds dataset 'mnist', not echo_cxr"):
    TfdsStudies(str(other.parent), "train")
  with pytest.raises(NotATfdsDatasetError, match="has no split 'validation'"):
    TfdsStudies(data_dir, "validation")


def test_examples_equal_the_path_based_ones(with_tokenizer, tmp_path):
  syn, data_dir = with_tokenizer
  config = _config(tmp_path, data_dir)
  model_config = config_lib.model_config(config)
  image_config = images.ImageConfig.from_vision_config(
    model_config.vision, min_pixels=config.data.min_pixels, max_pixels=config.data.max_pixels
  )
  transform = examples.StudyExamples(
    tokenizer=_tokenizer(config, syn),
    model_config=model_config,
    image_config=image_config,
    context_len=config.data.context_len,
    response_len=config.data.response_len,
    max_patches=config.data.max_patches,
  )
  by_id = {s.id: s for s in read_dataset("r2gen", syn, splits=["val", "test"])}
  for split in ("val", "test"):
    for study in TfdsStudies(data_dir, split):
      ref = by_id[study.id]
      # PNG is lossless: the decoded pixels are load_image's
      for data, path in zip(study.images, ref.image_paths, strict=True):
        a = np.asarray(images.load_image_bytes(data, "x"))
        np.testing.assert_array_equal(a, np.asarray(images.load_image(path)))
      got, want = transform(study), transform(ref)
      assert jax.tree.structure(got) == jax.tree.structure(want)
      for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(x, y)


def test_bad_bytes_are_bad_images_named_by_the_study():
  study = Study("s1", (image_name("s1", 0),), ("",), "", "", "test", images=(b"not a png",))
  with pytest.raises(images.BadImageError, match=r"unreadable_image: tfds:s1/0.png"):
    images.load_study_images(study.image_paths, encoded=study.images)
  with pytest.raises(images.BadImageError, match="zero_byte_image"):
    images.load_study_images(study.image_paths, encoded=(b"",))
  with pytest.raises(ValueError, match="2 encoded images but 1 image names"):
    Study("s1", ("a",), ("",), "", "", "test", images=(b"x", b"y"))


def test_reading_and_examples_do_not_import_tensorflow(with_tokenizer):
  _, data_dir = with_tokenizer
  code = (
    "import sys\n"
    "from echo_jax.data import pipeline, tokenizer\n"
    "from echo_jax.data.tfds_source import TfdsStudies\n"
    f"studies = TfdsStudies({data_dir!r}, 'train')\n"
    f"tok = tokenizer.load_tokenizer({os.path.join(data_dir, 'tokenizer')!r})\n"
    "reports = lambda s: {'n': len(tokenizer.encode_report(tok, s.report))}\n"
    "ds = pipeline.train_dataset(studies, reports, global_batch_size=2, seed=0)\n"
    "batch = next(iter(ds))\n"
    "assert batch['n'].shape == (2,), batch\n"
    "assert 'tensorflow' not in sys.modules, 'reading imported tensorflow'\n"
  )
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO, timeout=300)


def test_tokenizer_rule_and_vision_refusal(built, tmp_path):
  _, data_dir = built
  with pytest.raises(ValueError, match=f"no tokenizer for the tfds dataset {tmp_path}:"):
    datasets.load_tokenizer_for(
      "",
      data_name="tfds",
      data_path=str(tmp_path),  # no tokenizer/ here
      train_studies=TfdsStudies(data_dir, "train"),
      vocab_size=64,
      token_ids=None,
    )
  vision = config_lib.load(
    os.path.join(REPO, "configs/vision.py"),
    [f"workdir={tmp_path}", "data.name=tfds", f"data.path={data_dir}"],
  )
  with pytest.raises(config_lib.ConfigError, match="cannot train the vision stage"):
    config_lib.validate(vision, 1)


def test_train_and_generate_from_tfds(with_tokenizer, tmp_path, capsys):
  _, data_dir = with_tokenizer
  workdir = tmp_path / "rad"
  result = loop.train(_config(workdir, data_dir), devices=jax.devices()[:1])
  assert all(np.isfinite(m["loss"]) for _, m in result.history)
  (eval_step, eval_metrics), *_ = result.eval_history  # the val split, read from the build
  assert eval_step == 1 and np.isfinite(eval_metrics["loss"])
  assert reproduce.finished_step(str(workdir)) == 2

  out = tmp_path / "preds.jsonl"
  argv = ["--checkpoint", str(workdir), "--dataset", "tfds", "--data_path", data_dir]
  argv += ["--split", "test", "--out", str(out), "--max_new_tokens", "16", "--batch_size", "2"]
  rows = generate.main(argv)
  test = TfdsStudies(data_dir, "test")
  lines = [json.loads(line) for line in out.read_text().splitlines()]
  assert len(rows) == len(lines) == len(test)
  assert [r["id"] for r in lines] == [s.id for s in test]
  for line, study in zip(lines, test, strict=True):
    assert line["reference"] == study.report
    assert line["images"] == list(study.image_paths)
  # --resume on a complete file decodes nothing more and keeps it; on a file that lost its
  # last line it decodes that study only (a view of the split), ending with the same file
  before = out.read_text()
  assert generate.main([*argv, "--resume"]) == []
  assert out.read_text() == before
  out.write_text("".join(before.splitlines(keepends=True)[:-1]))
  resumed = generate.main([*argv, "--resume"])
  assert [r["id"] for r in resumed] == [test[len(test) - 1].id]
  unstat = lambda text: [{**json.loads(x), "stats": None} for x in text.splitlines()]
  assert unstat(out.read_text()) == unstat(before)  # all but the timings
  with pytest.raises(UserError, match="has no split 'nope'"):
    generate.main([*argv[:-2], "--out", str(tmp_path / "x.jsonl"), "--split", "nope"])


@pytest.mark.slow
def test_pipeline_takes_tfds_studies_with_workers(with_tokenizer):
  # Grain worker processes get the source by pickling: TfdsStudies reopens it there (the
  # pickle round trip itself is checked fast in test_sequence_of_studies).
  flags.FLAGS.mark_as_parsed()  # Grain's workers read absl flags; main.py parses them for real
  _, data_dir = with_tokenizer
  studies = TfdsStudies(data_dir, "train")
  ds = pipeline.train_dataset(
    studies, _IdLength(), global_batch_size=2, seed=0, worker_count=1, num_epochs=1
  )
  lengths = [int(n) for batch in ds for n in batch["n"]]
  assert len(lengths) == len(studies) // 2 * 2
  assert set(lengths) <= {len(s.id) + len(s.images) for s in studies}


class _IdLength:
  def __call__(self, study):
    return {"n": np.int32(len(study.id) + len(study.images))}


def test_response_len_is_sized_on_a_sample_of_a_lazy_source():
  # tuples stand for a lazy source (a TfdsStudies): not lists
  train, val = tuple(range(4000)), tuple(range(4000, 5000))
  checked = tasks.studies_to_check(train, val)
  assert len(checked) == tasks.MAX_CHECKED_STUDIES
  assert checked[0] == 0 and checked[-1] >= 4000 and checked == sorted(set(checked))
  assert tasks.studies_to_check([1, 2], [3]) == [1, 2, 3]  # in memory: every study
  assert tasks.studies_to_check((1, 2), (3,)) == [1, 2, 3]  # small: every study
