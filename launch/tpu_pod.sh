#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: create it, copy the code, set up, run on every worker.
#
#   launch/tpu_pod.sh create   # once: creates the slice
#   launch/tpu_pod.sh copy     # copies this checkout to every worker
#   launch/tpu_pod.sh setup    # venv + jax[tpu] on every worker
#   launch/tpu_pod.sh run --config=configs/imagenet256.py --workdir=gs://BUCKET/run1
#   launch/tpu_pod.sh delete
#
# Settings from the environment: TPU_NAME, ZONE, ACCELERATOR (e.g. v4-32), RUNTIME.
# `jax.distributed.initialize()` needs no arguments on a pod slice; every worker reads its
# own slice of the data (process_index/process_count) and Orbax writes one checkpoint.
set -euo pipefail
TPU_NAME=${TPU_NAME:-semantica}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR=${ACCELERATOR:-v4-32}
RUNTIME=${RUNTIME:-tpu-ubuntu2204-base}
ssh_all() { gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="$1"; }
cmd=${1:?create|copy|setup|run|delete}; shift
case "$cmd" in
  create) gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" \
            --accelerator-type="$ACCELERATOR" --version="$RUNTIME" ;;
  copy)   tar czf /tmp/semantica_jax.tgz --exclude=.venv --exclude=.git -C "$(dirname "$0")/.." .
          gcloud compute tpus tpu-vm scp /tmp/semantica_jax.tgz "$TPU_NAME":~/ --zone="$ZONE" --worker=all
          ssh_all "mkdir -p ~/semantica_jax && tar xzf ~/semantica_jax.tgz -C ~/semantica_jax" ;;
  setup)  ssh_all "cd ~/semantica_jax && python3 -m venv .venv && .venv/bin/pip install -q -c constraints.txt -e . && .venv/bin/pip install -q 'jax[tpu]==$(sed -n 's/^jax==//p' constraints.txt)'" ;;
  run)    ssh_all "cd ~/semantica_jax && SEMANTICA_TPU=1 .venv/bin/python -m semantica_jax.main $*" ;;
  delete) gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" --quiet ;;
  *) echo "unknown command $cmd (create|copy|setup|run|delete)" >&2; exit 2 ;;
esac
