#!/usr/bin/env bash
# rc_jax on a Cloud TPU VM slice (v4 / v5e / v5p / v6e): create it, install rc_jax on every
# worker, run the same command on every worker, fetch results, delete it.
#
#   launch/tpu_pod.sh create                       # make the slice (TPU_NAME, ZONE, TYPE)
#   launch/tpu_pod.sh setup                        # copy this checkout + pip install, all workers
#   launch/tpu_pod.sh run python -m rc_jax.main --config=experiments/hmmt.py \
#        --config.model.path=/data/Qwen3-4B-Instruct-2507 --config.mesh=data:-1
#   launch/tpu_pod.sh ssh 'tail -n 20 ~/rc_jax/outputs/hmmt/results.jsonl'   # any command
#   launch/tpu_pod.sh fetch outputs/hmmt           # copy worker 0's output dir back here
#   launch/tpu_pod.sh delete
#
# Every worker runs the *same* program (SPMD, one JAX process per host).
# `jax.distributed.initialize()` is called by rc_jax (RC_JAX_DISTRIBUTED=1, set below),
# the mesh spans all chips of the slice, and only process 0 writes outputs and logs.
# Model weights must be readable on every worker at the same path (a GCS FUSE mount, a
# persistent disk attached read-only to all workers, or `ssh 'huggingface-cli download ...'`):
# each host reads only the slices of each tensor that its own chips hold.
set -euo pipefail

TPU_NAME=${TPU_NAME:-rc-jax}
ZONE=${ZONE:-us-central2-b}            # v4: us-central2-b; v5e: us-west4-a; v5p: us-east5-a
TYPE=${TYPE:-v4-32}                    # accelerator type, e.g. v5litepod-16, v5p-64
RUNTIME=${RUNTIME:-tpu-ubuntu2204-base}  # v5e: v2-alpha-tpuv5-lite, v5p: v2-alpha-tpuv5
PROJECT=${PROJECT:-$(gcloud config get-value project 2>/dev/null)}
REMOTE_DIR=${REMOTE_DIR:-rc_jax}       # relative to each worker's home directory
SPOT=${SPOT:-}                         # SPOT=1: preemptible capacity

here="$(cd "$(dirname "$0")/.." && pwd)"
tpu=(gcloud compute tpus tpu-vm --project="$PROJECT" --zone="$ZONE")

# Environment every worker's command starts with.
REMOTE_ENV="export RC_JAX_DISTRIBUTED=1 TOKENIZERS_PARALLELISM=false HF_HUB_ENABLE_HF_TRANSFER=1; \
export PATH=\$HOME/.local/bin:\$PATH; cd ~/$REMOTE_DIR"

on_all() {  # run a shell command on every worker at once
  "${tpu[@]}" ssh "$TPU_NAME" --worker=all --command="$1"
}

case "${1:-help}" in
  create)
    "${tpu[@]}" create "$TPU_NAME" --accelerator-type="$TYPE" --version="$RUNTIME" \
      ${SPOT:+--spot}
    ;;
  setup)
    # Ship this checkout (no outputs, no git history) and install it with the TPU runtime.
    tar -C "$here" --exclude=./outputs --exclude=./.git -czf /tmp/rc_jax_src.tgz .
    "${tpu[@]}" scp /tmp/rc_jax_src.tgz "$TPU_NAME":/tmp/rc_jax_src.tgz --worker=all
    on_all "mkdir -p ~/$REMOTE_DIR && tar -xzf /tmp/rc_jax_src.tgz -C ~/$REMOTE_DIR && \
      cd ~/$REMOTE_DIR && python3 -m pip install -q -U pip && \
      python3 -m pip install -q 'jax[tpu]' -e . && \
      python3 -c 'import jax; print(jax.process_index(), jax.device_count(), jax.devices()[0])'"
    ;;
  run)
    shift
    [ $# -gt 0 ] || { echo "usage: $0 run <command...>"; exit 2; }
    # The same command on every worker; worker 0's output streams back here.
    on_all "$REMOTE_ENV; $(printf '%q ' "$@") 2>&1 | tee -a ~/$REMOTE_DIR/launch.log"
    ;;
  ssh)
    shift
    on_all "$REMOTE_ENV; $*"
    ;;
  fetch)
    dir=${2:-outputs}
    mkdir -p "$here/$dir"
    "${tpu[@]}" scp --recurse "$TPU_NAME:~/$REMOTE_DIR/$dir/*" "$here/$dir/" --worker=0
    ;;
  plan)
    # Memory plan for this slice before renting it (runs locally; needs libtpu).
    shift
    python -m rc_jax.tools.plan --target="${TYPE/v5litepod/v5e}" "$@"
    ;;
  delete)
    "${tpu[@]}" delete "$TPU_NAME" --quiet
    ;;
  *)
    sed -n '2,22p' "$0"
    ;;
esac
