#!/usr/bin/env bash
# Runs one catflow command on every host of a Cloud TPU pod slice.
#
#   experiments/launch_tpu.sh TPU_NAME ZONE train --config=experiments/configs/flm_1p7b.py \
#       --workdir=gs://BUCKET/runs/flm_1p7b --config.data.prepared_dir=gs://BUCKET/data/fineweb
#
# Every host runs the same command line. jax.distributed.initialize() (with
# --distributed_auto) finds the coordinator from the TPU metadata, each process
# reads its own rows of every global batch from the prepared shards, process 0
# writes logs and metrics, and Orbax writes each checkpoint from all hosts into
# the shared gs:// workdir. Re-running the same line resumes from the latest
# checkpoint. The repository must be checked out at the same commit on every
# host (the setup step below clones it and installs it into a virtualenv).
set -euo pipefail

if [ "$#" -lt 3 ]; then
  echo "usage: $0 TPU_NAME ZONE COMMAND [FLAGS...]" >&2
  exit 2
fi
tpu_name="$1"; zone="$2"; shift 2
repo_url="${CATFLOW_REPO_URL:?set CATFLOW_REPO_URL to the git URL of this repository}"
commit="${CATFLOW_COMMIT:-$(git rev-parse HEAD)}"

quoted_args=$(printf '%q ' "$@")
# Multi-host commands find their coordinator from the TPU metadata.
case "$1" in
  train|distill|evaluate|sample) distributed_flag="--distributed_auto" ;;
  *) distributed_flag="" ;;
esac
remote_script="
set -euo pipefail
if [ ! -d ~/catflow ]; then git clone ${repo_url} ~/catflow; fi
cd ~/catflow && git fetch --quiet origin && git checkout --quiet ${commit}
if [ ! -d ~/catflow-venv ]; then python3 -m venv ~/catflow-venv; fi
. ~/catflow-venv/bin/activate
pip install --quiet -e . 'jax[tpu]'
catflow ${quoted_args} ${distributed_flag}
"

gcloud compute tpus tpu-vm ssh "${tpu_name}" --zone="${zone}" --worker=all \
  --command="${remote_script}"
