"""Orbax checkpoints of the train state and the data iterator, with preemption saves.

Layout: `<workdir>/checkpoints/<step>/` with three items:
  model  every variable of the model (trainable and frozen), an nnx.State
  opt    {"step", "opt_state"}: the optimizer state over the trainable parameters
  data   the Grain iterator state, one JSON file per process
so the next stage (e.g. RAD from AR) restores just `model`, whatever was frozen before,
and a resumed run continues the same data order and diffusion masks (the noise key is
a function of the step). Restores read straight into the target shardings.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Sequence
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from echo_jax.train import state as state_lib
from echo_jax.train.state import TrainState

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"


def checkpoint_dir(workdir: str | epath.Path) -> epath.Path:
  return epath.Path(workdir) / CHECKPOINT_DIR


def _split_model_state(
  model_state: nnx.State, freeze: Sequence[str]
) -> tuple[nnx.State, nnx.State]:
  params, frozen = nnx.split_state(model_state, state_lib.trainable_filter(freeze), ...)
  return params, frozen


class Checkpointer:
  """Saves and restores TrainState + data iterator under `<workdir>/checkpoints`.

  Saves are asynchronous (device-to-host copies happen in `save`, file writes in the
  background) and only the newest `keep` checkpoints stay on disk.
  """

  def __init__(self, workdir: str | epath.Path, *, keep: int = 3, async_save: bool = True):
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep,
      create=True,
      enable_async_checkpointing=async_save,
      save_interval_steps=1,  # the loop decides when to save
    )
    self.directory = checkpoint_dir(workdir)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, state: TrainState, data_iterator: Any = None, *, force: bool = False) -> bool:
    """Save at `state.step` (the number of optimizer steps taken); returns whether it saved."""
    step = int(jax.device_get(state.step))
    items = {
      "model": ocp.args.StandardSave(state.model_state()),
      "opt": ocp.args.StandardSave({"step": state.step, "opt_state": state.opt_state}),
    }
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(_grain_iterator(data_iterator))
    return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(
    self,
    abstract: TrainState,
    shardings: TrainState,
    freeze: Sequence[str],
    data_iterator: Any = None,
    step: int | None = None,
  ) -> TrainState:
    """Restore the train state at `step` (default: latest) into `shardings`.

    `abstract`/`shardings` come from state.state_shardings; `data_iterator`, if given,
    is set to the saved position in place.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    target = state_lib.with_shardings(abstract, shardings)
    model_target = nnx.merge_state(target.params, target.frozen)
    items = {
      "model": ocp.args.StandardRestore(model_target),
      "opt": ocp.args.StandardRestore({"step": target.step, "opt_state": target.opt_state}),
    }
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(_grain_iterator(data_iterator))
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    params, frozen = _split_model_state(restored["model"], freeze)
    return TrainState(
      step=restored["opt"]["step"],
      params=params,
      frozen=frozen,
      opt_state=restored["opt"]["opt_state"],
    )

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def reached_preemption(self, step: int) -> bool:
    """Orbax's multi-host preemption sync point (False when the service is off)."""
    return self.manager.reached_preemption(step)

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _grain_iterator(iterator: Any) -> Any:
  # The pipeline's global-batch iterator wraps a Grain iterator; Grain saves that one.
  return getattr(iterator, "grain_iterator", iterator)


def restore_model_state(
  path: str | epath.Path, abstract_model_state: nnx.State, step: int | None = None
) -> nnx.State:
  """The `model` item of an echo_jax checkpoint, read into the target's shardings.

  `path` is a workdir, its `checkpoints` directory, or one step directory inside it;
  `abstract_model_state` holds ShapeDtypeStructs with shardings.
  """
  path = epath.Path(path)
  if path.name.isdigit() and (path / "model").exists():
    step, path = int(path.name), path.parent
  elif (path / CHECKPOINT_DIR).exists():
    path = path / CHECKPOINT_DIR
  manager = ocp.CheckpointManager(
    path, options=ocp.CheckpointManagerOptions(read_only=True, create=False)
  )
  try:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(
        f"no echo_jax checkpoint under {path}: expected <workdir>/checkpoints/<step>/model"
      )
    restored = manager.restore(
      step, args=ocp.args.Composite(model=ocp.args.StandardRestore(abstract_model_state))
    )
  finally:
    manager.close()
  log.info("initialized the model from %s step %d", path, step)
  return restored["model"]


class PreemptionGuard:
  """Turns SIGTERM / SIGINT into a "save and stop" request checked once per step.

  Single-process runs use the signal flag; multi-process runs also ask Orbax's
  preemption sync point, which makes every host agree on the same step.
  """

  def __init__(self, signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT)):
    self._event = threading.Event()
    self._previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
      for sig in signals:
        self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame) -> None:
    log.warning("received signal %d: saving a checkpoint and stopping after this step", signum)
    self._event.set()

  def request(self) -> None:
    """Ask for a save-and-stop (what the signal handler does)."""
    self._event.set()

  def should_stop(self, step: int, checkpointer: Checkpointer | None = None) -> bool:
    if jax.process_count() > 1:
      return checkpointer is not None and checkpointer.reached_preemption(step)
    return self._event.is_set()

  def close(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()
