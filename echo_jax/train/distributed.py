"""Whether this process is one of several (and so must call jax.distributed.initialize)."""

from __future__ import annotations

import os
from collections.abc import Mapping

# Environment variables that mean "one of several processes": JAX's own, SLURM, Open MPI,
# Cloud TPU multi-host slices (a comma-separated host list).
_COUNTS = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def multiprocess_environment(env: Mapping[str, str] | None = None) -> bool:
  """True under a launcher that starts several processes of one job."""
  env = os.environ if env is None else env
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return True
  if "," in env.get("TPU_WORKER_HOSTNAMES", ""):
    return True
  return any(env.get(k, "").isdigit() and int(env[k]) > 1 for k in _COUNTS)
