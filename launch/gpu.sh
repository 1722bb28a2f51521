#!/usr/bin/env bash
# rc_jax on one host with several NVIDIA GPUs (one JAX process drives all of them).
#
#   launch/gpu.sh setup                       # pip install jax[cuda12] + rc_jax (this checkout)
#   launch/gpu.sh python -m rc_jax.main --config=experiments/hmmt.py \
#        --config.model.path=/data/Qwen3-4B-Instruct-2507 --config.mesh=data:-1
#
# Several GPU hosts: start the same command on each host with
#   JAX_COORDINATOR_ADDRESS=<host0>:12345 JAX_NUM_PROCESSES=<hosts> JAX_PROCESS_ID=<i>
# (rc_jax calls jax.distributed.initialize() when these are set; only process 0 writes).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"

# Let XLA use most of the GPU memory up front (what the memory planner assumes), keep
# tokenizers single-threaded next to the grading workers.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
export TOKENIZERS_PARALLELISM=false
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | paste -sd, -)}

case "${1:-help}" in
  setup)
    python -m pip install -q -U "jax[cuda12]" -e .
    python -c 'import jax; print(jax.devices())'
    ;;
  help|-h|--help)
    sed -n '2,11p' "$0"
    ;;
  *)
    exec "$@"
    ;;
esac
