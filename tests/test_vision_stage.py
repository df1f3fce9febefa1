"""The vision pretraining stage: targets, training, resume, and the handover of its tower to AR."""

import pathlib

import jax
import numpy as np
import pytest
from flax import nnx

from echo_jax import config_lib, reproduce
from echo_jax.data.synthetic import targets as targets_lib
from echo_jax.train import loop, tasks, vision_stage
from echo_jax.train import mesh as mesh_lib

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_targets_of_a_finding_set():
  findings = {
    "pleural_effusion": {"side": "bilateral", "severity": "large"},
    "consolidation": {"side": "left", "lobe": "lower", "pneumonia": True},
    "support_devices": {"devices": ["pacemaker"], "pacemaker_side": "right"},
  }
  t = targets_lib.targets_from_findings(findings)
  on = {name for name, v in zip(targets_lib.TARGET_NAMES, t) if v}
  assert on == {
    "label/Pleural Effusion",
    "label/Consolidation",
    "label/Pneumonia",
    "label/Support Devices",
    "finding/pleural_effusion",
    "finding/consolidation",
    "pleural_effusion/left",
    "pleural_effusion/right",
    "pleural_effusion/at_least_moderate",
    "pleural_effusion/at_least_severe",
    "consolidation/left",
    "consolidation/lower_lobe",
    "consolidation/pneumonia",
    "device/pacemaker",
    "device/pacemaker_right",
  }
  assert targets_lib.TARGET_NAMES[: targets_lib.NUM_LABELS] == tuple(
    f"label/{n}" for n in targets_lib.CHEXPERT_LABELS
  )
  values, mask = targets_lib.targets_from_labels({"Edema": 1, "Cardiomegaly": -1})
  assert mask.sum() == 1 and values[targets_lib.CHEXPERT_LABELS.index("Edema")] == 1


def _vision_config(tmp_path, steps):
  return config_lib.load(
    str(REPO / "configs/vision.py"),
    [
      f"workdir={tmp_path / 'vision'}",
      f"data.path={tmp_path / 'data'}",
      "data.num_studies=30",
      "data.context_len=64",
      "batch_size=4",
      f"total_steps={steps}",
      "optimizer.warmup_steps=1",
      "log_every=1",
      "eval_every=2",
      "checkpoint_every=2",
      "tensorboard=False",
      "mesh.data=1",
    ],
  )


def _state_leaves(state):
  return {
    jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(state)
  }


# Slow: the main job's end-to-end test (tests/test_reproduce.py) trains the vision stage and
# hands its tower to AR; resuming is tested in tests/test_checkpoint.py.
@pytest.mark.slow
@pytest.mark.e2e
def test_vision_stage_trains_resumes_and_hands_its_tower_to_ar(tmp_path):
  devices = jax.devices()[:1]
  result = loop.train(_vision_config(tmp_path, 2), devices=devices)
  assert reproduce.finished_step(str(tmp_path / "vision")) == 2
  (eval_step, eval_metrics) = result.eval_history[-1]
  assert eval_step == 1 and "loss" in eval_metrics and "auc/mean_14" in eval_metrics
  assert np.isfinite(result.history[-1][1]["loss"])

  resumed = loop.train(_vision_config(tmp_path, 3), devices=devices)
  assert resumed.history[0][0] == 2  # resumed at step 2, ran only step 3
  probe = _state_leaves(nnx.merge_state(resumed.state.params, resumed.state.frozen)["vision"])

  ar = config_lib.load(
    str(REPO / "configs/ar.py:tiny"),
    [
      f"workdir={tmp_path / 'ar'}",
      f"data.path={tmp_path / 'data'}",
      "data.num_studies=30",
      "data.context_len=64",
      "data.response_len=112",
      "batch_size=4",
      "total_steps=2",
      "optimizer.warmup_steps=1",
      "sample_every=0",
      "tensorboard=False",
      "mesh.data=1",
      f"init.vision_path={tmp_path / 'vision'}",
      'freeze=("vision",)',
    ],
  )
  config_lib.validate(ar, 1)
  mesh = mesh_lib.make_mesh(ar.mesh, devices)
  task = tasks.build_task(ar, mesh, mesh_lib.logical_rules(ar))
  handed = _state_leaves(task.model_state["vision"])
  assert handed.keys() == probe.keys()
  for name, value in probe.items():
    np.testing.assert_array_equal(handed[name], value, err_msg=name)
  # Trained with the tower frozen, AR's tower is still exactly the vision stage's.
  trained = loop.train(ar, task, devices=devices)
  after = _state_leaves(nnx.merge_state(trained.state.params, trained.state.frozen)["vision"])
  for name, value in probe.items():
    np.testing.assert_array_equal(after[name], value, err_msg=name)


def test_graft_refuses_a_tower_of_another_shape():
  from echo_jax.models import presets
  from echo_jax.models.vlm import EchoVLM

  tiny = presets.get_preset("tiny")
  model = nnx.state(nnx.eval_shape(lambda: EchoVLM(tiny, rngs=nnx.Rngs(0))))
  other = tiny.replace(vision=tiny.vision.__class__(**{**tiny.vision.__dict__, "hidden_size": 32}))
  probe = nnx.state(nnx.eval_shape(vision_stage.probe_fn(other, 0)))
  with pytest.raises(ValueError, match="same model.preset"):
    vision_stage.graft_vision(model, probe)


def test_main_job_skips_the_vision_stage_for_a_pretrained_vlm(tmp_path):
  config = config_lib.load(str(REPO / "configs/dcd.py"), [f"workdir={tmp_path}"])
  assert reproduce.tower_is_used(config, "vision")
  assert reproduce.stage_config(config, "ar").init.vision_path == str(tmp_path / "vision")
  hf = tmp_path / "hf_vlm"
  hf.mkdir()
  (hf / "config.json").write_text("{}")
  (hf / "model.safetensors").write_bytes(b"")
  config.stages.ar.init.path = str(hf)
  assert reproduce.stage_config(config, "ar").init.vision_path == ""
  assert not reproduce.tower_is_used(config, "vision")


def test_response_len_is_checked_against_the_longest_report():
  import types

  from echo_jax.data.study import Study

  tokenizer = types.SimpleNamespace(
    encode=lambda text: list(range(len(text.split()))), ids=types.SimpleNamespace(eos=0)
  )

  def study(i, words):
    return Study(f"s{i}", (), (), " ".join(["w"] * words), "", "train")

  # "Findings: <words> Impression:" is words + 2 tokens, + EOS.
  studies = [study(0, 5), study(1, 11)]
  config = config_lib.load(str(REPO / "configs/rad.py:tiny"), ["data.response_len=8"])
  with pytest.raises(config_lib.ConfigError, match=r"cut 1 of 2 .*study s1, has 14 tokens.*=16"):
    tasks.check_response_len(config, studies, tokenizer)
  config.data.response_len = 16
  tasks.check_response_len(config, studies, tokenizer)  # fits: no error
  config.data.response_len = 8
  config.data.allow_truncation = True
  tasks.check_response_len(config, studies, tokenizer)
