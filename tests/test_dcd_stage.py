"""The DCD stage on the real EchoVLM: rollout -> student packing -> loss -> gradient.

The key invariant: the student's masked block n attends the context and the teacher's
clean blocks < n, exactly what the teacher saw at the first step of block n. So with
the student equal to the teacher, the KL is zero at every position the teacher
committed at step 1, and positive elsewhere only where later steps changed the view.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tiny_vlm import make_setup

from echo_jax import config_lib
from echo_jax.data.pipeline import stack_examples
from echo_jax.diffusion import dcd_loss
from echo_jax.train import dcd_teacher, objectives
from echo_jax.train.stage_config import StageConfig

REPO = pathlib.Path(__file__).resolve().parents[1]
BLOCK = 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  s = make_setup(str(tmp_path_factory.mktemp("dcd_stage")))
  batch = stack_examples([s.example_fn(study) for study in s.studies[:3]])
  batch = jax.tree.map(jnp.asarray, batch)
  config = config_lib.load(str(REPO / "configs/rad.py:tiny"), ())
  config.stage = "dcd"
  config.block_len = BLOCK
  config.data.response_len = s.example_fn.response_len
  config.dcd.threshold = 0.3  # a random teacher is rarely confident: force multi-commit steps
  config.dcd.loop_ngram = 0
  return s, batch, config


def _rollout_batch(setup, **dcd):
  s, batch, config = setup
  for k, v in dcd.items():
    config.dcd[k] = v
  graphdef, state = nnx.split(s.model)
  stage = StageConfig.from_config(config, s.config)
  prepare = dcd_teacher.make_prepare_batch(stage, s.config, graphdef, state)
  return prepare(None, None, batch), config


def test_student_equal_to_teacher_has_zero_kl_at_first_step_commits(setup):
  s = setup[0]
  batch, _ = _rollout_batch(setup, top_k=0)
  targets = batch["rollout_targets"]
  steps = np.asarray(targets.steps_BR)
  assert (steps >= 1).all() and (steps > 1).any(), "the test needs first and later commits"
  packed = dcd_loss.pack_student(
    batch["context_tokens"],
    jnp.swapaxes(batch["context_positions"], 0, 1),
    batch["context_valid"].astype(bool),
    batch["rollout_tokens"],
    batch["next_position"],
    block_len=BLOCK,
    mask_id=s.config.tokens.mask,
    eos_id=s.config.tokens.eos,
  )
  logits = s.model(
    packed.tokens_BL,
    packed.positions_3BL,
    packed.mask_BLL,
    batch["vision"],
    logits_span=(packed.target_start, packed.target_stop),
  )
  kl = np.asarray(dcd_loss.divergence_BR(logits, targets, "forward_kl"))
  np.testing.assert_allclose(kl[steps == 1], 0.0, atol=2e-5)
  assert kl[steps > 1].max() > 1e-4  # later commits saw tokens the student does not


# Slow: the main job's end-to-end test trains both DCD stages through the same loss; the
# zero-KL test above stays in the fast suite.
@pytest.mark.slow
def test_dcd_loss_trains_kept_rollouts_only(setup):
  s = setup[0]
  batch, config = _rollout_batch(setup, top_k=8)
  loss_fn = objectives.make_loss_fn(StageConfig.from_config(config, s.config))
  assert not np.asarray(batch["rollout_keep"]).any()  # a random teacher never writes EOS

  def loss_and_grad_norm(b):
    (loss, metrics), grads = nnx.value_and_grad(
      lambda m: loss_fn(m, b, jax.random.key(0)), has_aux=True
    )(s.model)
    norm = float(jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads))))
    return float(loss), metrics, norm

  loss, metrics, norm = loss_and_grad_norm(batch)
  assert (loss, norm) == (0.0, 0.0)  # discarded rollouts train nothing
  assert float(metrics["kept_fraction"]) == 0.0
  assert float(metrics["teacher_forwards"]) >= s.example_fn.response_len // BLOCK

  targets = batch["rollout_targets"]
  kept = dict(batch, rollout_targets=targets.replace(valid_BR=jnp.ones_like(targets.valid_BR)))
  loss, _, norm = loss_and_grad_norm(kept)
  assert np.isfinite(loss) and loss > 0 and norm > 0
