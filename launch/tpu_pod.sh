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
# Multi-slice (several slices joined by the data-centre network, DCN; needs queued
# resources): SLICES slices of one accelerator type, nodes NAME-0 .. NAME-(SLICES-1).
#   launch/tpu_pod.sh create-multi  NAME ZONE v5p-128 2
#   launch/tpu_pod.sh install-multi NAME ZONE 2
#   launch/tpu_pod.sh run-multi     NAME ZONE 2 --config=experiments/configs/owt.py \
#       --workdir=gs://BUCKET/runs/owt --config.mesh.fsdp=64 \
#       --config.train.batch_size=1024 ...
#   launch/tpu_pod.sh delete-multi  NAME ZONE
# The mesh puts the slices on the data axis (tcsm_jax/training/partition.py): FSDP stays
# inside a slice (mesh.fsdp must divide the chips of ONE slice, e.g. 64 for v5p-128),
# and only the data-parallel gradient all-reduce crosses the DCN. train.batch_size must
# be a multiple of all chips (2 x 64 here). The pod plan for such a pair of slices:
#   python -m experiments.benchmarks.scale_plan --target=tpu:v5p:4x4x4 --slices=2 ...
#
# Every worker runs the same command; jax.distributed.initialize() detects the pod.
# The workdir (and data) live on a bucket all hosts can reach; orbax writes checkpoints
# from all hosts and re-running `run` resumes. Preemptible slices send SIGTERM, which
# checkpoints at the next step; `run` then exits 143 (preempted, resumable: run it
# again; it has no scheduler to requeue it). Only process 0 takes the workdir's lock.
set -euo pipefail
cmd=${1:?create|install|run|delete|create-multi|install-multi|run-multi|delete-multi}; name=${2:?tpu name}; zone=${3:?zone}; shift 3
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
  create-multi)
    type=${1:?accelerator type, e.g. v5p-128}; slices=${2:?number of slices}
    gcloud compute tpus queued-resources create "$name" --zone="$zone" \
      --accelerator-type="$type" --runtime-version=tpu-ubuntu2204-base \
      --node-count="$slices" --node-prefix="$name"
    echo "queued; wait for state ACTIVE:"
    echo "  gcloud compute tpus queued-resources describe $name --zone=$zone" ;;
  install-multi|run-multi)
    slices=${1:?number of slices}; shift
    if [ "$cmd" = install-multi ]; then
      tar czf /tmp/tcsm_jax.tgz --exclude=.git --exclude=workdirs .
    fi
    args=$(printf ' %q' "$@")
    pids=()
    for ((i = 0; i < slices; i++)); do       # every worker of every slice, together
      node="$name-$i"
      if [ "$cmd" = install-multi ]; then
        (gcloud compute tpus tpu-vm scp /tmp/tcsm_jax.tgz "$node":~ --zone="$zone" \
           --worker=all && \
         gcloud compute tpus tpu-vm ssh "$node" --zone="$zone" --worker=all --command \
           "mkdir -p tcsm_jax && tar xzf tcsm_jax.tgz -C tcsm_jax && cd tcsm_jax && \
            pip install -r requirements.txt -e '.[tpu]'") &
      else
        gcloud compute tpus tpu-vm ssh "$node" --zone="$zone" --worker=all --command \
          "cd tcsm_jax && python -m experiments.train${args}" &
      fi
      pids+=($!)
    done
    rc=0
    for p in "${pids[@]}"; do wait "$p" || rc=$?; done
    exit $rc ;;
  delete-multi)
    gcloud compute tpus queued-resources delete "$name" --zone="$zone" --force --quiet ;;
  *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
