#!/usr/bin/env bash
# TPU pod slice: create, install, run on every worker, tear down.
#
#   launch/tpu_pod.sh create  NAME ZONE v4-32
#   launch/tpu_pod.sh install NAME ZONE            # copies this repo, pip installs
#   # once, anywhere: tokenize text8 into shards + manifest (bucket or local path)
#   python -m experiments.prepare_data --source=text8:text8.zip --tokenizer=char \
#       --out=gs://BUCKET/text8_prepared
#   # copy the shards to each worker's local disk (memory-mapped; small sets are read
#   # from the bucket into memory), then:
#   launch/tpu_pod.sh run     NAME ZONE --config=experiments/configs/text8.py \
#       --workdir=gs://BUCKET/runs/text8 --config.data.path=/data/text8_prepared
#   launch/tpu_pod.sh delete  NAME ZONE
#
# Every worker runs the same command; jax.distributed.initialize() detects the pod.
# The workdir (and data) live on a bucket all hosts can reach; orbax writes checkpoints
# from all hosts and re-running `run` resumes. Preemptible slices send SIGTERM, which
# checkpoints at the next step; `run` then exits 143 (preempted, resumable: run it
# again; it has no scheduler to requeue it). Only process 0 takes the workdir's lock.
set -euo pipefail
cmd=${1:?create|install|run|delete}; name=${2:?tpu name}; zone=${3:?zone}; shift 3
case "$cmd" in
  create)
    type=${1:?accelerator type, e.g. v4-32}
    gcloud compute tpus tpu-vm create "$name" --zone="$zone" --accelerator-type="$type" \
      --version=tpu-ubuntu2204-base ;;
  install)
    tar czf /tmp/tcsm_jax.tgz --exclude=.git --exclude=workdirs .
    gcloud compute tpus tpu-vm scp /tmp/tcsm_jax.tgz "$name":~ --zone="$zone" --worker=all
    gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command \
      "mkdir -p tcsm_jax && tar xzf tcsm_jax.tgz -C tcsm_jax && cd tcsm_jax && \
       pip install -r requirements.txt -e . 'jax[tpu]'" ;;
  run)
    args=$(printf ' %q' "$@")
    gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command \
      "cd tcsm_jax && python -m experiments.train${args}" ;;
  delete)
    gcloud compute tpus tpu-vm delete "$name" --zone="$zone" --quiet ;;
  *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
