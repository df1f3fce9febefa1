#!/usr/bin/env bash
# Train on one machine: one process over all its accelerators (or the CPU).
#
#   launch/single_host.sh configs/rad.py:tiny --config.total_steps=100
#   launch/single_host.sh configs/rad.py:7b --workdir=/data/runs/rad_7b \
#       --config.init.path=/data/runs/ar_7b --config.data.path=/data/mimic_r2gen
#
# Preemption: SIGTERM or SIGINT (Ctrl-C) makes the loop save a checkpoint after the
# current step and exit 0. A crash or `kill -9` loses at most the steps since the last
# complete checkpoint. Either way, run the same command again: it resumes from the newest
# complete checkpoint in the workdir, with the same data order and diffusion masks.
#
# Environment: PYTHON (default: python), DRY_RUN=1 prints the command instead of running it.
set -euo pipefail

if [[ $# -lt 1 || $1 == -h || $1 == --help ]]; then
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
config=$1
shift
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cmd=("${PYTHON:-python}" -m echo_jax.main "--config=${config}" --nodistributed "$@")
if [[ -n ${DRY_RUN:-} ]]; then
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi
exec "${cmd[@]}"  # exec: the signals go straight to the training process
