"""Launch scripts: the commands they build, and the SLURM ones start a real two-process JAX job.

`srun` and `gcloud` are not here: DRY_RUN=1 makes each script print its command. The SLURM
commands are then run as two local processes with the environment srun would give them
(SLURM_PROCID, SLURM_LOCALID, ...): echo_jax.main must bring up jax.distributed from it.
"""

import os
import pathlib
import shlex
import socket
import stat
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = "configs/rad.py:tiny"
TINY = ["--config.init.path=", "--config.batch_size=4", "--validate_only"]


def dry_run(script, *args, **env) -> list[str]:
  out = subprocess.run(
    ["bash", str(REPO / "launch" / script), *args],
    env=dict(os.environ, DRY_RUN="1", PYTHON=sys.executable, **env),
    capture_output=True,
    text=True,
    timeout=30,
    check=True,
  )
  return shlex.split(out.stdout)


@pytest.mark.parametrize("script", ["single_host.sh", "tpu_pod.sh", "slurm_gpu.sbatch"])
def test_scripts_parse_and_print_usage(script):
  subprocess.run(["bash", "-n", str(REPO / "launch" / script)], check=True, timeout=30)
  assert os.stat(REPO / "launch" / script).st_mode & stat.S_IXUSR
  usage = subprocess.run(
    ["bash", str(REPO / "launch" / script)], capture_output=True, text=True, timeout=30
  )
  assert usage.returncode == 2 and "launch/" in usage.stdout


def test_single_host_and_tpu_commands():
  assert dry_run("single_host.sh", CONFIG, "--config.total_steps=3") == [
    sys.executable, "-m", "echo_jax.main", f"--config={CONFIG}", "--nodistributed",
    "--config.total_steps=3",
  ]  # fmt: skip
  cmd = dry_run(
    "tpu_pod.sh", "train", "configs/rad.py:7b", "--workdir=gs://b/r", TPU_NAME="t", ZONE="z"
  )
  assert cmd[:7] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "t", "--zone=z"]
  assert cmd[7] == "--worker=all"  # the same command on every host
  remote = cmd[8].removeprefix("--command=")
  assert "-m echo_jax.main --config=configs/rad.py:7b --distributed --workdir=gs://b/r" in remote


def test_slurm_per_node_command(tmp_path):
  fake = tmp_path / "bin"
  fake.mkdir()
  (fake / "scontrol").write_text("#!/bin/sh\necho node001\necho node002\n")
  (fake / "scontrol").chmod(0o755)
  cmd = dry_run(
    "slurm_gpu.sbatch",
    CONFIG,
    MODE="per_node",
    PORT="1234",
    PATH=f"{fake}:{os.environ['PATH']}",
    SLURM_JOB_NODELIST="node[001-002]",
    SLURM_JOB_NUM_NODES="2",
    SLURM_SUBMIT_DIR=str(REPO),
  )
  assert cmd[:5] == ["srun", "--kill-on-bad-exit=1", "--ntasks=2", "--ntasks-per-node=1", "bash"]
  inner = shlex.split(cmd[6])
  assert inner[:4] == ["exec", "env", "-u", "SLURM_LOCALID"]  # JAX would pin GPU LOCALID
  assert inner[-4:] == [
    "--distributed", "--coordinator_address=node001:1234", "--num_processes=${SLURM_NTASKS}",
    "--process_id=${SLURM_PROCID}",
  ]  # fmt: skip


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def run_like_srun(cmd: list[str], tmp_path, **extra) -> list[str]:
  """Start `cmd` as the 2 tasks of a one-node SLURM step on the CPU; return their logs."""
  port = str(free_port())
  procs = []
  for rank in range(2):
    env = dict(
      os.environ,
      JAX_PLATFORMS="cpu",
      XLA_FLAGS="--xla_force_host_platform_device_count=2",
      SLURM_JOB_ID="4242",
      SLURM_JOB_NODELIST="localhost",
      SLURM_STEP_NODELIST="localhost",
      SLURM_NTASKS="2",
      SLURM_PROCID=str(rank),
      SLURM_LOCALID=str(rank),
      JAX_COORDINATOR_PORT=port,
      PORT=port,
      **extra,
    )
    log = open(tmp_path / f"task{rank}.log", "w")
    procs.append(
      subprocess.Popen(
        ["timeout", "-k", "5", "90", *cmd], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
      )
    )
  codes = [p.wait(timeout=120) for p in procs]
  logs = [(tmp_path / f"task{rank}.log").read_text() for rank in range(2)]
  assert codes == [0, 0], [log[-2000:] for log in logs]
  return logs


@pytest.mark.parametrize(
  "mode", ["per_gpu", pytest.param("per_node", marks=pytest.mark.slow)]
)  # per_node: the dry-run part runs in test_slurm_per_node_command
def test_slurm_commands_start_one_jax_job(tmp_path, mode):
  fake = tmp_path / "bin"
  fake.mkdir()
  (fake / "scontrol").write_text("#!/bin/sh\necho localhost\necho otherhost\n")
  (fake / "scontrol").chmod(0o755)
  env = dict(MODE=mode, SLURM_JOB_NODELIST="localhost,otherhost", SLURM_JOB_NUM_NODES="2")
  env["PATH"] = f"{fake}:{os.environ['PATH']}"
  env["SLURM_SUBMIT_DIR"] = str(REPO)
  cmd = dry_run("slurm_gpu.sbatch", CONFIG, *TINY, **env)
  assert cmd[:2] == ["srun", "--kill-on-bad-exit=1"]
  task = [c for c in cmd[2:] if not c.startswith("--n")]  # what each srun task runs
  if mode == "per_node":
    assert task[:2] == ["bash", "-c"] and "--coordinator_address=localhost:" in task[2]
    assert "env -u SLURM_LOCALID" in task[2]  # so JAX does not pin the process to one GPU
  logs = run_like_srun(task, tmp_path)
  for rank, log in enumerate(logs):
    assert f"process {rank}/2, 4 devices" in log, log[-2000:]
