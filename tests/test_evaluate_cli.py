"""The evaluate CLI and Python API: outputs, speed figures, bootstrap, HTML (rendered if chromium exists)."""

import csv
import json
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from echo_jax import evaluate as cli
from echo_jax.eval import bootstrap as bs
from echo_jax.eval.pipeline import EvalOptions, evaluate_predictions, speed_summary

REFS = [
  ("s1", "The lungs are clear without focal consolidation.", "No acute cardiopulmonary process."),
  (
    "s2",
    "Moderate cardiomegaly. Small left pleural effusion.",
    "Cardiomegaly and small left effusion.",
  ),
  ("s3", "Right lower lobe consolidation. No pneumothorax.", "Right lower lobe pneumonia."),
  ("s4", "Mild pulmonary edema. Endotracheal tube above the carina.", "Mild edema."),
]
PREDS = {
  "ar": [
    "Findings: The lungs are clear. Impression: No acute process.",
    "Findings: Moderate cardiomegaly. No pleural effusion. Impression: Cardiomegaly.",
    "Findings: Right lower lobe consolidation. Impression: Possible pneumonia.",
    "Findings: Mild pulmonary edema. Impression: Mild edema.",
  ],
  "dcd_b8": [
    "Findings: The lungs are clear. Impression: Normal.",
    "Findings: Cardiomegaly. Impression: Cardiomegaly.",
    "Findings: Opacity. Impression: Pneumonia.",
    "Findings: No edema. Impression: Normal.",
  ],
}
FAST = ["--no-meteor", "--n-boot", "50"]


def _ref_text(f, i):
  return f"Findings: {f} Impression: {i}"


@pytest.fixture
def files(tmp_path):
  img_root = tmp_path / "img"
  img_root.mkdir()
  with open(tmp_path / "refs.jsonl", "w") as f:
    for k, (sid, fi, im) in enumerate(REFS):
      arr = (np.arange(64 * 64).reshape(64, 64) * (k + 1) % 256).astype(np.uint8)
      Image.fromarray(arr).save(img_root / f"{sid}.png")
      f.write(
        json.dumps({"id": sid, "findings": fi, "impression": im, "image_path": [f"{sid}.png"]})
        + "\n"
      )
  paths = []
  for model, preds in PREDS.items():
    p = tmp_path / f"{model}.jsonl"
    tpf = 1.0 if model == "ar" else 7.5
    with open(p, "w") as f:
      for (sid, _, _), text in zip(REFS, preds):
        stats = {
          "tpf": tpf,
          "tokens_per_second": 40 * tpf,
          "tokens": 30,
          "forwards": 30 / tpf,
          "seconds": 30 / (40 * tpf),
        }
        f.write(json.dumps({"id": sid, "prediction": text, "stats": stats}) + "\n")
    paths.append(str(p))
  return tmp_path, paths


def test_cli_writes_every_output(files, capsys):
  root, preds = files
  out = root / "out"
  argv = [
    "--predictions",
    *preds,
    "--references",
    str(root / "refs.jsonl"),
    "--out",
    str(out),
    "--images-root",
    str(root / "img"),
    *FAST,
  ]
  assert cli.main(argv) == 0
  metrics = json.loads((out / "metrics.json").read_text())
  assert set(metrics["models"]) == {"ar", "dcd_b8"}
  ar = metrics["models"]["ar"]
  assert ar["n"] == 4
  assert ar["metrics"]["semscore"] is None and ar["metrics"]["ratescore"] is None
  assert "semscore" in metrics["not_computed"] and "r2gen/meteor" in metrics["not_computed"]
  assert ar["speed"]["tpf"] == pytest.approx(1.0) and metrics["models"]["dcd_b8"]["speed"][
    "tpf"
  ] == pytest.approx(7.5)
  assert metrics["models"]["dcd_b8"]["speed"]["tokens_per_second"] == pytest.approx(300.0)
  lo, hi = ar["ci"]["echo/rouge_l"]
  assert lo <= ar["metrics"]["echo/rouge_l"] <= hi
  assert ar["metrics"]["echo/rouge_l"] > metrics["models"]["dcd_b8"]["metrics"]["echo/rouge_l"]
  rows = [json.loads(x) for x in (out / "per_study.jsonl").read_text().splitlines()]
  assert len(rows) == 8 and rows[1]["labels_reference"]["Cardiomegaly"] == 1
  assert rows[1]["labels_prediction"]["Pleural Effusion"] == 0
  with open(out / "per_study.csv") as f:
    table = list(csv.DictReader(f))
  assert len(table) == 8 and "echo/rouge_l" in table[0] and "ref/Cardiomegaly" in table[0]
  png = (out / "quality_vs_tpf.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n"
  page = (out / "report.html").read_text()
  assert page.count("data:image/jpeg;base64,") == 8  # one thumbnail per study card
  assert page.count("data:image/png;base64,") == 1  # the plot
  assert "http://" not in page and "https://" not in page  # opens offline
  assert 'class="m pos dis"' in page or 'class="m neg dis"' in page  # disagreement marked
  assert "rule-based CheXpert F1" in page.lower() or "Rule-based CheXpert F1" in page
  assert "dcd_b8" in capsys.readouterr().out


def test_api_uncertain_switch_and_reference_in_records():
  recs = [
    {"id": sid, "prediction": p, "reference": _ref_text(f, i)}
    for (sid, f, i), p in zip(REFS, PREDS["ar"])
  ]
  pos = evaluate_predictions(
    recs, options=EvalOptions(conventions=("echo",), meteor=False, n_boot=20)
  )
  neg = evaluate_predictions(
    recs, options=EvalOptions(conventions=("echo",), meteor=False, n_boot=20, uncertain="negative")
  )
  m_pos, m_neg = pos["models"]["model"]["metrics"], neg["models"]["model"]["metrics"]
  # "Possible pneumonia" vs reference pneumonia: a hit only when uncertain counts as positive
  assert m_pos["chexpert/f1/Pneumonia"] == 1.0 and m_neg["chexpert/f1/Pneumonia"] == 0.0
  assert "r2gen/bleu_4" not in m_pos and m_pos["echo/rouge_l"] > 0
  assert pos["models"]["model"]["speed"] == {
    "n_with_stats": 0,
    "tpf": None,
    "tokens_per_second": None,
  }


def test_api_validates_records():
  with pytest.raises(ValueError, match="no 'reference'"):
    evaluate_predictions([{"id": 1, "prediction": "x"}])
  with pytest.raises(ValueError, match="duplicate"):
    evaluate_predictions([{"id": 1, "prediction": "x", "reference": "y"}] * 2)
  with pytest.raises(TypeError, match="prediction must be a string"):
    evaluate_predictions([{"id": 1, "prediction": None, "reference": "y"}])
  with pytest.raises(ValueError, match="no records"):
    evaluate_predictions([])


def test_cli_reports_missing_reference(files, capsys):
  root, preds = files
  (root / "refs_short.jsonl").write_text(json.dumps({"id": "s1", "reference": "x"}) + "\n")
  assert (
    cli.main(
      [
        "--predictions",
        preds[0],
        "--references",
        str(root / "refs_short.jsonl"),
        "--out",
        str(root / "o"),
        *FAST,
      ]
    )
    == 2
  )
  err = capsys.readouterr().err
  assert "error: id 's2' has no reference in" in err and "ar.jsonl:2" in err


def test_speed_summary_prefers_totals():
  recs = [
    {"stats": {"tpf": 2.0, "tokens": 10, "forwards": 5, "seconds": 1.0}},
    {"stats": {"tpf": 8.0, "tokens": 40, "forwards": 5, "seconds": 1.0}},
  ]
  s = speed_summary(recs)
  assert s["tpf"] == pytest.approx(5.0)  # 50 tokens / 10 forwards, not mean(2, 8)
  assert s["tokens_per_second"] == pytest.approx(25.0)
  s = speed_summary([{"stats": {"tpf": 2.0}}, {"stats": {"tpf": 4.0}}, {}])
  assert (
    s["tpf"] == pytest.approx(3.0) and s["n_with_stats"] == 2 and s["tokens_per_second"] is None
  )


def test_bootstrap_is_seeded_and_brackets_the_mean():
  v = np.random.default_rng(0).normal(size=200)
  idx = bs.bootstrap_indices(200, 500, seed=3)
  lo, hi = bs.mean_ci(v, idx)
  assert lo < v.mean() < hi and hi - lo < 0.5
  assert (bs.bootstrap_indices(200, 500, seed=3) == idx).all()
  assert bs.mean_ci(np.ones(10), bs.bootstrap_indices(10, 50)) == (1.0, 1.0)
  with pytest.raises(ValueError):
    bs.bootstrap_indices(0)


def _chromium():
  return (
    shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
  )


@pytest.mark.skipif(_chromium() is None, reason="no chromium for headless rendering")
def test_html_report_renders_non_blank(files, tmp_path):
  root, preds = files
  out = root / "out"
  cli.main(
    [
      "--predictions",
      *preds,
      "--references",
      str(root / "refs.jsonl"),
      "--out",
      str(out),
      "--images-root",
      str(root / "img"),
      *FAST,
    ]
  )
  shot = tmp_path / "shot.png"
  cmd = [
    _chromium(),
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--hide-scrollbars",
    "--window-size=1200,1600",
    f"--screenshot={shot}",
    (out / "report.html").as_uri(),
  ]
  subprocess.run(cmd, capture_output=True, timeout=50, check=False)
  assert shot.exists(), "chromium wrote no screenshot"
  img = np.asarray(Image.open(shot).convert("L"), np.float64)
  assert img.shape == (1600, 1200)
  assert img.std() > 10  # text, tables and the plot, not a blank page
  assert (img < 100).mean() > 0.005  # some dark text pixels
