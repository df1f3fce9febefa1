r"""Train ECHO: `python -m echo_jax.main --config=configs/<stage>.py:<preset> [--config.key=value ...]`.

Examples:
  python -m echo_jax.main --config=configs/echo.py       # the main job (echo_jax/reproduce.py)
  python -m echo_jax.main --config=configs/dcd.py        # the same (its default preset)
  python -m echo_jax.main --config=configs/rad.py:tiny --workdir=W --config.total_steps=20
  # multi-host (TPU pods set the coordinator themselves; GPU clusters pass it):
  python -m echo_jax.main --config=configs/rad.py:7b --distributed \
      --coordinator_address=host0:1234 --num_processes=4 --process_id=$RANK
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from absl import app, flags
from absl import logging as absl_logging

from echo_jax import config_lib, log_setup
from echo_jax.train import distributed

_CONFIG = config_lib.define_config_flag()
_DISTRIBUTED = flags.DEFINE_bool(
  "distributed",
  None,
  "Call jax.distributed.initialize() (default: when a multi-process environment is detected).",
)
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address", None, "host:port of process 0 (GPU clusters)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Total number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Run directory (checkpoints, logs, results); overrides config.workdir."
)
_VALIDATE_ONLY = flags.DEFINE_bool(
  "validate_only", False, "Check the config against the devices and exit."
)


def _wants_distributed() -> bool:
  if _DISTRIBUTED.value is not None:
    return _DISTRIBUTED.value
  return bool(_COORDINATOR.value) or distributed.multiprocess_environment()


def _config_args(argv: Sequence[str]) -> tuple[str | None, list[str]]:
  """The --config spec and the "key=value" of each --config.key=value in `argv`."""
  spec, overrides = None, []
  args = list(argv[1:])
  for i, a in enumerate(args):
    if a.startswith("--config="):
      spec = a.split("=", 1)[1]
    elif a == "--config" and i + 1 < len(args):
      spec = args[i + 1]
    elif a.startswith("--config.") and "=" in a:
      overrides.append(a.removeprefix("--config."))
  return spec, overrides


def config_error(argv: Sequence[str]) -> str | None:
  """One line naming what is wrong with the config flags of `argv` (None: nothing found)."""
  spec, overrides = _config_args(argv)
  if not spec:
    return None
  try:
    config = config_lib.load(spec)
  except (ValueError, KeyError, FileNotFoundError) as e:
    return str(e.args[0] if e.args else e)
  for item in overrides:
    try:
      config_lib.apply_overrides(config, [item])
    except (ValueError, KeyError) as e:
      message = str(e.args[0] if e.args else e).removeprefix(f"override {item!r}: ")
      return f"--config.{item}: {message} (in {spec})"
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a wrong preset argument or config key as one line (exit 2)."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, ValueError) as error:
    message = config_error(argv)
    if message is None:
      if not isinstance(error, flags.Error):
        raise
      return app.parse_flags_with_usage(argv)  # absl's own report of other flag errors
    sys.stderr.write(f"error: {message}\n")
    raise SystemExit(2) from None


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  absl_logging.get_absl_handler().addFilter(log_setup.QuietLibraries())
  import jax  # after flag parsing: XLA flags in the environment are read at import

  if _wants_distributed():
    jax.distributed.initialize(
      coordinator_address=_COORDINATOR.value,
      num_processes=_NUM_PROCESSES.value,
      process_id=_PROCESS_ID.value,
    )
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config is required, e.g. --config=configs/dcd.py")
  if _WORKDIR.value:
    with config.unlocked():
      config.workdir = _WORKDIR.value
  pipeline = config.stage == "pipeline"  # configs/echo.py, the whole ECHO recipe
  # Imported after jax.distributed.initialize, which must come before any other JAX call.
  from echo_jax import reproduce
  from echo_jax.train import loop

  check, run = (
    (reproduce.validate, reproduce.run) if pipeline else (config_lib.validate, loop.train)
  )
  try:
    check(config, jax.device_count())  # every config error at once, before any compute
  except config_lib.ConfigError as e:
    raise SystemExit(str(e)) from None
  logging.info("process %d/%d, %d devices, config:\n%s", jax.process_index(),
               jax.process_count(), jax.device_count(), config)  # fmt: skip
  if not _VALIDATE_ONLY.value:
    run(config)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
