"""The data doctor CLI on a small R2Gen-layout dataset with a few broken studies."""

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from echo_jax.data.check import check_dataset, main
from echo_jax.data.images import ImageConfig
from echo_jax.data.tokenizer import train_bpe_tokenizer

REPORT = "Findings: The lungs are clear. No effusion. Impression: No acute process."


@pytest.fixture()
def dataset(tmp_path):
  root = tmp_path / "data"
  entries = []
  for i in range(8):
    sid = f"s{i}"
    os.makedirs(root / "images" / sid)
    for j in range(1 + i % 2):  # odd studies have two images
      Image.fromarray(np.full((60, 90), 10 * i, np.uint8)).save(root / "images" / sid / f"{j}.png")
    entries.append(
      {
        "id": sid,
        "report": REPORT + " x" * i,
        "image_path": [f"{sid}/{j}.png" for j in range(1 + i % 2)],
      }
    )
  # A truncated image (found when decoding) and a missing one (found by the reader).
  os.makedirs(root / "images" / "trunc")
  buf = io.BytesIO()
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(
    buf, "PNG"
  )
  (root / "images" / "trunc" / "0.png").write_bytes(buf.getvalue()[:200])
  entries.append({"id": "trunc", "report": REPORT, "image_path": ["trunc/0.png"]})
  entries.append({"id": "gone", "report": REPORT, "image_path": ["gone/0.png"]})
  ann = {"train": entries[:6] + entries[8:], "val": entries[6:7], "test": entries[7:8]}
  (root / "annotation.json").write_text(json.dumps(ann))
  return root


def test_check_dataset_counts(dataset):
  config = ImageConfig(min_pixels=56 * 56, max_pixels=56 * 84)
  report = check_dataset("r2gen", str(dataset), image_config=config, workers=2)
  assert [s.id for s in report.studies] == [f"s{i}" for i in range(8)]
  assert report.skips.reasons() == {"truncated_image": 1, "missing_image": 1}
  assert report.skips.bad_fraction == pytest.approx(0.2)
  # 90x60 -> 84x56 -> (84/28)*(56/28) = 6 merged tokens per image.
  assert report.vision_tokens == [6 * (1 + i % 2) for i in range(8)]
  assert report.report_lengths == [len(REPORT.split()) + i for i in range(8)]
  full = check_dataset("r2gen", str(dataset), image_config=config, full_preprocess=True)
  assert full.vision_tokens == report.vision_tokens


def test_cli_output_and_exit_codes(dataset, tmp_path, capsys):
  assert main(["--format", "r2gen", "--root", str(dataset)]) == 1
  out, err = capsys.readouterr()
  assert "studies: 8 usable  (test 1, train 6, val 1)" in out
  assert "images:  12" in out
  assert "skipped trunc: truncated_image" in out and "skipped gone: missing_image" in out
  assert "report length (words): min 11" in out
  assert "FAIL" in err

  tok_dir = tmp_path / "tok"
  train_bpe_tokenizer([REPORT] * 10, vocab_size=400, out_dir=str(tok_dir))
  args = [
    "--format",
    "r2gen",
    "--root",
    str(dataset),
    "--max-bad-fraction",
    "0.25",
    "--tokenizer",
    str(tok_dir),
  ]
  assert main(args + ["--max-pixels", str(56 * 84), "--min-pixels", str(56 * 56)]) == 0
  out, _ = capsys.readouterr()
  assert (
    "report length (tokens)" in out
    and "prompt length (tokens, with vision)" in out
    and out.endswith("OK\n")
  )

  assert (
    main(["--format", "r2gen", "--root", str(dataset), "--arg", 'splits=["val"]', "--no-images"])
    == 0
  )
  out, _ = capsys.readouterr()
  assert "studies: 1 usable  (val 1)" in out

  assert main(["--format", "mimic-cxr-jpg", "--root", str(dataset)]) == 2
  assert "mimic-cxr-2.0.0-split.csv" in capsys.readouterr().err
