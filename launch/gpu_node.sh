#!/usr/bin/env bash
# One node with N GPUs.
#   launch/gpu_node.sh NGPU [--launcher torchrun|deepspeed] [--pipeline] [Hydra overrides…]
# Runs codellama-train (one stage) or, with --pipeline, codellama-pipeline (a chain of stages) on every GPU.
# Overrides pass through unchanged, e.g.
#   launch/gpu_node.sh 8 --pipeline pipeline=codellama pipeline.model=7b pipeline.init_from=/ckpt/llama-2-7b
set -euo pipefail
usage() { sed -n '2,6p' "$0" >&2; exit 2; }
[[ $# -ge 1 && "$1" =~ ^[0-9]+$ ]] || usage
NGPU=$1; shift
LAUNCHER=torchrun
ENTRY=codellama_recipe.train.cli
while [[ $# -gt 0 ]]; do
  case "$1" in
    --launcher) LAUNCHER=${2:?}; shift 2 ;;
    --pipeline) ENTRY=codellama_recipe.stages.pipeline_cli; shift ;;
    -h|--help) usage ;;
    *) break ;;
  esac
done
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
case "$LAUNCHER" in
  torchrun)
    exec torchrun --standalone --nproc_per_node "$NGPU" -m "$ENTRY" "$@" ;;
  deepspeed)
    # --no_local_rank: Hydra parses the command line, it must not receive --local_rank=N.
    exec deepspeed --num_gpus "$NGPU" --no_local_rank --module "$ENTRY" "$@" ;;
  *) echo "unknown launcher '$LAUNCHER' (torchrun or deepspeed)" >&2; exit 2 ;;
esac
