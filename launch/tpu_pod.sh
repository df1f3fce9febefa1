#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: the same command on every host of the slice.
#
#   export TPU_NAME=echo-v5p-64 ZONE=us-east5-a
#   launch/tpu_pod.sh setup                        # copy this checkout to every host, install
#   launch/tpu_pod.sh train configs/rad.py:7b --workdir=gs://BUCKET/echo/rad_7b \
#       --config.init.path=gs://BUCKET/echo/ar_7b --config.data.path=/data/mimic_r2gen
#
# Every host runs `python -m echo_jax.main ... --distributed`; jax.distributed.initialize()
# finds the coordinator and the host's index from the TPU metadata, and each host's Grain
# pipeline reads only its own slice of every batch. The workdir must be one location all
# hosts share (a gs:// bucket): every host writes its part of each checkpoint there. The
# data path must exist on every host (or be a gs:// path the reader supports).
#
# Preemption: a maintenance event or SIGTERM on any host is propagated by JAX's preemption
# service; all hosts stop after the same step and save one checkpoint. After the slice is
# back (recreate it, or wait for the queued resource), run the same `train` command: it
# resumes from the newest complete checkpoint in the workdir.
#
# Environment: TPU_NAME, ZONE (required), PROJECT (optional), REMOTE_DIR (default: echo_jax
# in the remote home), PYTHON (default: python3), DRY_RUN=1 prints the gcloud commands.
set -euo pipefail

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[[ $# -ge 1 ]] || usage
action=$1
shift
: "${TPU_NAME:?set TPU_NAME to the TPU VM name}"
: "${ZONE:?set ZONE to the TPU zone}"
remote_dir=${REMOTE_DIR:-echo_jax}
python=${PYTHON:-python3}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

gcloud_tpu=(gcloud compute tpus tpu-vm)
where=("${TPU_NAME}" "--zone=${ZONE}" --worker=all)
[[ -n ${PROJECT:-} ]] && where+=("--project=${PROJECT}")

run() {
  if [[ -n ${DRY_RUN:-} ]]; then
    printf '%q ' "$@"
    echo
  else
    "$@"
  fi
}

case ${action} in
  setup)
    # A clean copy of the tracked files (no virtualenv, no workdirs) on every host.
    archive=$(mktemp --suffix=.tar.gz)
    git -C "${repo}" ls-files -z | tar -C "${repo}" --null -T - -czf "${archive}"
    run "${gcloud_tpu[@]}" scp "${archive}" "${where[0]}:echo_jax.tar.gz" "${where[@]:1}"
    run "${gcloud_tpu[@]}" ssh "${where[@]}" --command="mkdir -p ${remote_dir} && \
tar -xzf echo_jax.tar.gz -C ${remote_dir} && ${python} -m pip install -q -U 'jax[tpu]' && \
${python} -m pip install -q -e ${remote_dir}"
    rm -f "${archive}"
    ;;
  train)
    [[ $# -ge 1 ]] || usage
    config=$1
    shift
    args=$(printf '%q ' "--config=${config}" --distributed "$@")
    # One log per host next to the code; the metrics and checkpoints go to the workdir.
    run "${gcloud_tpu[@]}" ssh "${where[@]}" --command="cd ${remote_dir} && \
${python} -m echo_jax.main ${args} 2>&1 | tee -a train_\$(hostname).log"
    ;;
  *) usage ;;
esac
