"""The seed-variance command: which stages a row set needs, and mean/spread over runs."""

import json

import pytest

from echo_jax import reproduce, seeds


def test_key_rows_train_only_the_stages_they_need(tmp_path):
  config = seeds.seed_config(1, seeds.KEY_ROWS, str(tmp_path / "s1"))
  assert config.seed == 1 and config.workdir == str(tmp_path / "s1")
  assert config.order == ("vision", "ar", "rad", "dcd_b8")  # no B=4 student
  names = [r[0] for r in (*config.eval.rows, *config.eval.deranged_rows)]
  assert names == [r for r in seeds.KEY_ROWS if r != reproduce.CONSTANT_ROW]
  assert config.eval.constant_report
  only_ar = seeds.seed_config(2, ["AR"], str(tmp_path / "s2"))
  assert only_ar.order == ("vision", "ar") and not only_ar.eval.constant_report
  with pytest.raises(SystemExit, match="unknown row"):
    seeds.seed_config(0, ["no such row"], str(tmp_path))


def _run(seed, f1, tpf):
  return {
    "seed": seed,
    "models": [
      {"name": "AR", "tpf": tpf, "metrics": {"chexpert/f1_micro_14": f1}},
      {"name": "constant report", "tpf": None, "metrics": {"chexpert/f1_micro_14": 0.2}},
    ],
  }


def test_aggregate_mean_std_range():
  rows = seeds.aggregate([_run(0, 0.5, 1.0), _run(1, 0.7, 1.0), _run(2, 0.6, 1.0)])
  ar = rows[0]["metrics"]["chexpert/f1_micro_14"]
  assert ar["mean"] == pytest.approx(0.6) and ar["std"] == pytest.approx(0.1)
  assert (ar["min"], ar["max"]) == (0.5, 0.7)
  assert "tpf" not in rows[1]["metrics"]  # no TPF for the constant report
  table = seeds.markdown(rows)
  assert "0.600 ± 0.100" in table and "seeds 0, 1, 2" in table
  with pytest.raises(ValueError, match="missing"):
    seeds.aggregate([_run(0, 0.5, 1.0), {"seed": 1, "models": []}])


def test_a_finished_run_is_reused_and_earlier_results_are_kept(tmp_path):
  work = tmp_path / "tiny"
  (work / "eval").mkdir(parents=True)
  results = {"seed": 0, "models": _run(0, 0.5, 1.0)["models"]}
  (work / "results.json").write_text(json.dumps(results))
  (work / "results.md").write_text("the main job's table")
  (work / "eval" / "metrics.json").write_text("{}")
  # Every asked row of the same seed is there: reused in the asked order.
  rows = seeds.finished_rows(str(work), 0, ["constant report", "AR"])
  assert [r["name"] for r in rows] == ["constant report", "AR"]
  assert seeds.finished_rows(str(work), 1, ["AR"]) is None  # another seed
  assert seeds.finished_rows(str(work), 0, ["AR", "DCD one-step B=8"]) is None  # a row missing
  assert seeds.finished_rows(str(tmp_path / "none"), 0, ["AR"]) is None
  # Before a partial evaluation the earlier results move aside instead of being overwritten.
  seeds.keep_earlier_results(str(work))
  assert not (work / "results.json").exists() and not (work / "eval").exists()
  assert json.loads((work / "results.before_seeds.json").read_text()) == results
  assert (work / "results.before_seeds.md").read_text() == "the main job's table"
  assert (work / "eval.before_seeds" / "metrics.json").is_file()
