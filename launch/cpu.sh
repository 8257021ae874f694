#!/usr/bin/env bash
# Train one stage on this machine's CPUs with NPROC processes (torchrun + gloo; no GPU needed).
#
#   launch/cpu.sh NPROC [Hydra overrides...]
#   launch/cpu.sh 2 model=tiny stage=code run_dir=runs/code trainer.max_steps=200
#
# One thread per process (OMP_NUM_THREADS=1): more threads than cores makes every step several times slower.
# torchrun, not the deepspeed launcher: the latter leaves a 66 MB /dev/shm buffer per rank behind on CPU.
# Rerunning the same command resumes from the latest checkpoint in run_dir. SIGTERM/SIGUSR1 to the ranks
# writes a checkpoint at the next step (or micro-batch) boundary and exits 0.
set -euo pipefail
if [[ $# -lt 1 || ! "$1" =~ ^[0-9]+$ || "$1" -lt 1 ]]; then
  echo "usage: $0 NPROC [Hydra overrides...]   (NPROC: number of CPU processes, e.g. 2)" >&2
  exit 2
fi
NPROC=$1
shift
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}
export OMP_NUM_THREADS=1
export DS_ACCELERATOR=cpu
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}
exec "$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m codellama_recipe.train.cli "$@"
