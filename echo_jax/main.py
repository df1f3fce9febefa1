r"""Train ECHO: `python -m echo_jax.main --config=configs/<stage>.py:<preset> [--config.key=value ...]`.

Examples:
  python -m echo_jax.main --config=configs/dcd.py        # the main job (echo_jax/reproduce.py)
  python -m echo_jax.main --config=configs/rad.py:tiny --workdir=W --config.total_steps=20
  # multi-host (TPU pods set the coordinator themselves; GPU clusters pass it):
  python -m echo_jax.main --config=configs/rad.py:7b --distributed \
      --coordinator_address=host0:1234 --num_processes=4 --process_id=$RANK
"""

from __future__ import annotations

import logging

from absl import app, flags
from absl import logging as absl_logging

from echo_jax import config_lib
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


class _QuietLibraries(logging.Filter):
  """Keep Orbax's and Grain's per-save INFO chatter out of the log."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or not any(
      s in record.pathname for s in ("/orbax/", "/grain/")
    )


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  absl_logging.get_absl_handler().addFilter(_QuietLibraries())
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
  pipeline = config.stage == "pipeline"  # configs/dcd.py:tiny, the whole ECHO recipe
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
  app.run(main)
