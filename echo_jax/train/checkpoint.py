"""Orbax checkpoints of the train state and the data iterator, with preemption saves.

Layout: `<workdir>/checkpoints/<step>/` with three items:
  model  every variable of the model (trainable and frozen), an nnx.State
  opt    {"step", "opt_state"}: the optimizer state over the trainable parameters
  data   the Grain iterator state, one JSON file per process
so the next stage (e.g. RAD from AR) restores just `model`, whatever was frozen before,
and a resumed run continues the same data order and diffusion masks (the noise key is
a function of the step). Restores read straight into the target shardings.

A step directory appears only once all its items are written (Orbax writes
`<step>.orbax-checkpoint-tmp` and renames it), so a process killed mid-save leaves the
previous checkpoint as the newest; such leftover temporary directories are removed when
the next run starts. Before reading, every stored array's shape and dtype is checked against
the target; a damaged or foreign checkpoint raises CheckpointError naming the file or key.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx
from jax.sharding import Mesh

from echo_jax.train import state as state_lib
from echo_jax.train.state import TrainState

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


class CheckpointError(ValueError):
  """A checkpoint that cannot be restored: damaged, incomplete, or from another model."""


def checkpoint_dir(workdir: str | epath.Path) -> epath.Path:
  return absolute(workdir) / CHECKPOINT_DIR


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
    _remove_partial_saves(self.directory)
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
    opt_target = {"step": target.step, "opt_state": target.opt_state}
    step_dir = self.directory / str(step)
    check_item(step_dir, "model", model_target)
    check_item(step_dir, "opt", opt_target)
    items = {
      "model": ocp.args.StandardRestore(model_target),
      "opt": ocp.args.StandardRestore(opt_target),
    }
    if data_iterator is not None:
      _check_data_item(step_dir)
      items["data"] = grain.checkpoint.CheckpointRestore(_grain_iterator(data_iterator))
    restored = _read(step_dir, lambda: self.manager.restore(step, args=ocp.args.Composite(**items)))
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


def _remove_partial_saves(directory: epath.Path) -> None:
  """Delete `<step>.orbax-checkpoint-tmp*` directories left by a process killed mid-save.

  Process 0 does it when the run starts, before anyone saves (Orbax's own option for this
  runs in a background thread that a quick close cuts short).
  """
  if jax.process_index() != 0 or not directory.exists():
    return
  for path in directory.glob("*.orbax-checkpoint-tmp*"):
    log.warning("removing %s: a checkpoint save that never finished", path)
    path.rmtree(missing_ok=True)


def _grain_iterator(iterator: Any) -> Any:
  # The pipeline's global-batch iterator wraps a Grain iterator; Grain saves that one.
  return getattr(iterator, "grain_iterator", iterator)


def absolute(path: str | epath.Path) -> epath.Path:
  """Local paths made absolute (Orbax refuses relative ones); bucket URLs unchanged."""
  if "://" in str(path):
    return epath.Path(path)
  return epath.Path(os.path.abspath(os.fspath(path)))


def restore_model_state(
  path: str | epath.Path, abstract_model_state: nnx.State, step: int | None = None
) -> nnx.State:
  """The `model` item of an echo_jax checkpoint, read into the target's shardings.

  `path` is a workdir, its `checkpoints` directory, or one step directory inside it;
  `abstract_model_state` holds ShapeDtypeStructs with shardings.
  """
  path = absolute(path)
  _refuse_pickles(path)
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
    # Float widths may differ (e.g. a bfloat16 teacher from float32 weights); kinds may not.
    check_item(path / str(step), "model", abstract_model_state, same_dtype=False)
    restored = _read(
      path / str(step),
      lambda: manager.restore(
        step, args=ocp.args.Composite(model=ocp.args.StandardRestore(abstract_model_state))
      ),
    )
  finally:
    manager.close()
  log.info("initialized the model from %s step %d", path, step)
  return restored["model"]


def restore_sharded_model_state(
  path: str | epath.Path,
  model_fn: Callable[[], nnx.Module],
  mesh: Mesh,
  rules: Sequence[tuple[str, Any]],
) -> nnx.State:
  """The `model` item of the checkpoint at `path`, read straight into the mesh shardings
  that `model_fn`'s model gets under `rules` (no copy on one device first)."""
  tx = optax.identity()  # shapes of the model only; no optimizer state needed
  _, abstract, shardings = state_lib.state_shardings(model_fn, tx, mesh, rules)
  target = state_lib.with_shardings(abstract, shardings)
  return restore_model_state(path, nnx.merge_state(target.params, target.frozen))


def _key(path: Sequence[Any]) -> str:
  """ "layers.0.mlp.kernel" for a key path; the `value` level of nnx variables is dropped."""
  parts = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
  return ".".join(p for p in parts if p != "value")


def _stored_arrays(item_dir: epath.Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  try:
    tree = ocp.StandardCheckpointHandler().metadata(item_dir).tree
  except Exception as e:  # a missing or unreadable _METADATA, manifest or data file
    raise _damaged(item_dir.parent, e) or CheckpointError(
      f"cannot read the array metadata of {item_dir} ({_first_line(e)}): the checkpoint is "
      f"incomplete or damaged; delete {item_dir.parent} to resume from an earlier one"
    ) from None
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {_key(p): (tuple(m.shape), np.dtype(m.dtype)) for p, m in leaves if hasattr(m, "shape")}


def check_item(step_dir: epath.Path, item: str, target: Any, *, same_dtype: bool = True) -> None:
  """Raise CheckpointError unless `step_dir/item` holds exactly the arrays of `target`.

  Every missing, unexpected, mis-shaped or mis-typed array is named (up to 12). With
  `same_dtype=False`, floating-point arrays may be stored at another width (cast on read).
  """
  item_dir = step_dir / item
  if not item_dir.is_dir():
    raise CheckpointError(
      f"{item_dir} is missing: {step_dir} is not a complete echo_jax checkpoint "
      f"(items model, opt, data); delete it to resume from an earlier one"
    )
  for file in [item_dir / "_METADATA", *sorted((item_dir / "array_metadatas").glob("*"))]:
    try:
      json.loads(file.read_text()) if file.exists() else None
    except (ValueError, UnicodeDecodeError) as e:
      raise CheckpointError(
        f"{file} is not valid JSON ({e}): checkpoint {step_dir} is damaged; delete it to "
        "resume from an earlier one"
      ) from None
  stored = _stored_arrays(item_dir)
  leaves = jax.tree_util.tree_flatten_with_path(target)[0]
  wanted = {_key(p): (tuple(x.shape), np.dtype(x.dtype)) for p, x in leaves}
  problems = [f"{item}/{k}: not in the checkpoint" for k in sorted(wanted.keys() - stored.keys())]
  problems += [
    f"{item}/{k}: in the checkpoint but not in this model"
    for k in sorted(stored.keys() - wanted.keys())
  ]
  for k in sorted(wanted.keys() & stored.keys()):
    (shape, dtype), (want_shape, want_dtype) = stored[k], wanted[k]
    if shape != want_shape:
      problems.append(f"{item}/{k}: shape {shape} in the checkpoint, {want_shape} expected")
    elif dtype != want_dtype and (
      same_dtype
      or not (jnp.issubdtype(dtype, jnp.floating) and jnp.issubdtype(want_dtype, jnp.floating))
    ):
      problems.append(f"{item}/{k}: dtype {dtype} in the checkpoint, {want_dtype} expected")
  if problems:
    more = f"\n  ... and {len(problems) - 12} more" if len(problems) > 12 else ""
    raise CheckpointError(
      f"{item_dir} does not match this run ({len(problems)} arrays):\n  "
      + "\n  ".join(problems[:12])
      + more
      + "\nWas it written with another model.preset, model.param_dtype or freeze list?"
    )


def _check_data_item(step_dir: epath.Path) -> None:
  """The Grain iterator state of this process exists and is JSON."""
  data_dir = step_dir / "data"
  name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
  if not (data_dir / name).exists():
    found = sorted(p.name for p in data_dir.iterdir()) if data_dir.is_dir() else []
    raise CheckpointError(
      f"{data_dir / name} is missing (found: {', '.join(found) or 'nothing'}): the data "
      "iterator was saved by another number of processes, or the save was cut short"
    )
  try:
    json.loads((data_dir / name).read_text())
  except ValueError as e:
    raise CheckpointError(f"{data_dir / name} is not valid JSON ({e}): it is damaged") from None


def _first_line(error: BaseException) -> str:
  return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


def _read(step_dir: epath.Path, restore: Any) -> Any:
  """`restore()`, with tensorstore's read errors turned into one line naming the file."""
  try:
    return restore()
  except (ValueError, OSError) as e:
    error = _damaged(step_dir, e)
    if error is None:
      raise CheckpointError(
        f"checkpoint {step_dir} could not be read ({type(e).__name__}: {_first_line(e)}); "
        f"it is incomplete or damaged. Delete {step_dir} to resume from an earlier checkpoint."
      ) from e
    raise error from None


def _damaged(step_dir: epath.Path, error: BaseException) -> CheckpointError | None:
  """A one-paragraph CheckpointError for a tensorstore read error naming a file, else None."""
  text = str(error)
  files = re.findall(r'local file "([^"]+)"', text)
  if not files:
    return None
  code = re.match(r"[A-Z_]+(?=:)", text)
  array = re.search(r'"([^"/]+)/\.zarray"', text)
  reason = text.rsplit(f'local file "{files[-1]}"', 1)[1].split("[tensorstore_spec")[0]
  reason = reason.strip(" :.'\"") or ("no such file" if "NOT_FOUND" in text[:12] else "")
  _quiet_closed_event_loops()
  return CheckpointError(
    f"checkpoint {step_dir} is damaged: reading {files[-1]}"
    + (f" (array {array.group(1)})" if array else "")
    + f" failed: {code.group(0) if code else type(error).__name__}"
    + (f": {reason}" if reason else "")
    + f". Delete {step_dir} to resume from an earlier checkpoint."
  )


def _quiet_closed_event_loops() -> None:
  """After a failed read, drop the echoes of its cancelled sibling reads ("Event loop is closed",
  orbax coroutines never awaited) from sys.unraisablehook; everything else still prints."""
  previous = sys.unraisablehook
  if getattr(previous, "_echo_jax_quiet", False):
    return

  def hook(unraisable):
    value, code = unraisable.exc_value, getattr(unraisable.object, "cr_code", None)
    closed = isinstance(value, RuntimeError) and str(value) == "Event loop is closed"
    if not (closed or "orbax" in getattr(code, "co_filename", "")):  # orbax's orphaned reads
      previous(unraisable)

  hook._echo_jax_quiet = True
  sys.unraisablehook = hook


def _refuse_pickles(path: epath.Path) -> None:
  """Weights offered as pickles (torch .bin/.pt, ...) are never loaded: they can run code."""
  offered = [path] if path.suffix in _PICKLE_SUFFIXES else []
  if path.is_dir() and not (path / CHECKPOINT_DIR).exists() and not (path / "model").exists():
    offered = sorted(p for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
  if offered:
    raise CheckpointError(
      f"{offered[0]} is a pickle file: pickled weights are refused because loading them can "
      "run arbitrary code. Convert them to safetensors (transformers: "
      "save_pretrained(dir, safe_serialization=True)) and pass that directory."
    )


class PreemptionGuard:
  """Turns SIGTERM / SIGINT into a "save and stop" request checked once per step.

  Single-process runs use the signal flag. Multi-process runs leave SIGTERM to JAX's
  preemption notifier (installed by jax.distributed.initialize; a Python handler would
  replace it) and ask Orbax's preemption sync point every step, so every host stops at
  the same step however many of them got the signal; SIGINT there is passed on as SIGTERM.
  """

  def __init__(self, signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT)):
    self._event = threading.Event()
    self._previous: dict[int, Any] = {}
    self._multiprocess = jax.process_count() > 1
    if threading.current_thread() is threading.main_thread():
      for sig in signals:
        if not (self._multiprocess and sig == signal.SIGTERM):
          self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame) -> None:
    log.warning("received signal %d: saving a checkpoint and stopping after this step", signum)
    self._event.set()
    if self._multiprocess:
      signal.raise_signal(signal.SIGTERM)  # JAX's notifier tells every process

  def request(self) -> None:
    """Ask for a save-and-stop (what the signal handler does; single-process runs)."""
    self._event.set()

  def should_stop(self, step: int, checkpointer: Checkpointer | None = None) -> bool:
    if self._multiprocess:
      return checkpointer is not None and checkpointer.reached_preemption(step)
    return self._event.is_set()

  def close(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()
