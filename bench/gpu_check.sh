#!/usr/bin/env bash
# Single-GPU check of train/model.py: correctness of cached decoding on the CUDA attention kernels, training
# throughput/MFU of a 1.1B-class Llama (bf16, fused AdamW, torch.compile when it works) and one
# 16,384-token step's peak memory. Needs only python3 with torch (no network, no hydra/deepspeed).
#
#   bash bench/gpu_check.sh                      # from anywhere; extra flags go to bench/gpu_train.py
#   bash bench/gpu_check.sh --peak-flops 1979e12 --no-compile
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}   # override with PYTHON=/path/to/python
log=$(mktemp -t gpu_check.XXXXXX.log)

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi not found"
"$PY" -c 'import torch; print("torch", torch.__version__, "| cuda", torch.version.cuda, "| available", torch.cuda.is_available())'

echo "== bench/gpu_train.py $*"
start=$(date +%s)
timeout 295 "$PY" bench/gpu_train.py "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
elapsed=$(( $(date +%s) - start ))

echo "== summary (exit status $status, ${elapsed}s; full log $log)"
grep '^RESULT' "$log" | sed 's/^RESULT /  /'
[ "$status" -eq 124 ] && echo "  TIMED OUT after 295 s"
exit "$status"
