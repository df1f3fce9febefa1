"""Commands outside absl's app (e.g. `python -m echo_jax.seeds`) log their progress."""

import subprocess
import sys

SCRIPT = """
import logging
from absl import logging as absl_logging  # installs absl's root handler, as our imports do
from echo_jax import log_setup
log_setup.log_to_stderr()
logging.getLogger("echo_jax.reproduce").info("stage rad done")
logging.getLogger("echo_jax.x").debug("debug detail")
chatter = logging.LogRecord("orbax", logging.INFO, "/site-packages/orbax/checkpoint/x.py", 1,
                            "saved step", None, None)
logging.getLogger().handle(chatter)
logging.getLogger("orbax").warning("orbax warning")
"""


def test_info_reaches_stderr_without_library_chatter():
  proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert "echo_jax.reproduce: stage rad done" in proc.stderr
  assert "debug detail" not in proc.stderr
  assert "saved step" not in proc.stderr  # Orbax's per-save INFO is filtered
  assert "orbax warning" in proc.stderr  # its warnings are not
