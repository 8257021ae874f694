#!/usr/bin/env bash
# Single-GPU check of the training engine (train/): the CUDA path that the CPU test suite cannot reach.
#  1. bf16 through DeepSpeed ZeRO-1 and ZeRO-3 (NCCL, fused AdamW, chunked loss): 8 steps in one go vs 4 steps,
#     stop, resume for 4 more -> per-step losses and exported weights compared.
#  2. the engine's own tokens/s and MFU (against the bf16 peak of the GPU) on a 1.1B-class Llama (dim 2048,
#     22 layers, 32 heads, 4 KV heads, FFN 5632, vocab 32000, seq 4096), ZeRO-1, bf16, 12 steps.
# Batches come from the synthetic loader of tests/helpers_engine.py (no corpus needed).
#
#   bash bench/engine_gpu_check.sh            # on a GPU machine; a .whl/ folder next to it is installed first
#   SKIP_BIG=1 bash bench/engine_gpu_check.sh  # only part 1;  STAGES=zero3 ...: part 1 for ZeRO-3 only
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -z "${NO_WHEELS:-}" ] && compgen -G ".whl/*.whl" >/dev/null; then   # offline machine: packages carried as wheels / a tarball
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  [ -f .whl/site_extra.tgz ] && tar xzf .whl/site_extra.tgz -C /tmp/site
  export PYTHONPATH=/tmp/site
fi
# The checkout as the package it installs as (codellama_recipe), without installing it.
mkdir -p /tmp/codellama_pkgroot && ln -sfn "$PWD" /tmp/codellama_pkgroot/codellama_recipe
export PYTHONPATH="/tmp/codellama_pkgroot${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 WANDB_MODE=disabled
PY=${PYTHON:-python3}
WORK=${WORK:-/tmp/engine_gpu}
LOGS=${OUT:-$WORK}
rm -rf "$WORK"; mkdir -p "$WORK" "$LOGS"
TRAIN() { "$PY" tests/helpers_engine.py "$@"; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
"$PY" -c 'import torch, deepspeed; print("torch", torch.__version__, "deepspeed", deepspeed.__version__, "cuda", torch.cuda.is_available())'

SMALL="trainer.progress_bar=false wandb.mode=disabled data.seq_len=512 model.dim=256 model.n_layers=4 model.n_heads=8
 model.n_kv_heads=4 trainer.micro_batch_size=4 trainer.batch_tokens=4096 trainer.log_every=1 trainer.val_every=0
 optim.schedule=constant optim.warmup_steps=0 optim.lr=1e-3 trainer.precision=bf16 trainer.loss_chunk_size=1024
 trainer.checkpoint_every=4"
for z in ${STAGES:-zero1 zero3}; do
  start=$(date +%s)
  TRAIN $SMALL deepspeed=$z run_dir=$WORK/$z/ref trainer.max_steps=8 >"$LOGS/$z-ref.log" 2>&1 || echo "FAIL $z ref"
  TRAIN $SMALL deepspeed=$z run_dir=$WORK/$z/res trainer.max_steps=4 >"$LOGS/$z-res1.log" 2>&1 || echo "FAIL $z res1"
  TRAIN $SMALL deepspeed=$z run_dir=$WORK/$z/res trainer.max_steps=8 >"$LOGS/$z-res2.log" 2>&1 || echo "FAIL $z res2"
  "$PY" - "$WORK/$z" "$z" "$(( $(date +%s) - start ))" "$LOGS/$z-res2.log" <<'EOF'
import json, sys, pathlib
from safetensors.torch import load_file
d, z, secs = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
rows = lambda r: {m["step"]: m for m in map(json.loads, (d / r / "metrics.jsonl").read_text().splitlines())}
a, b = rows("ref"), rows("res")
diff = max(abs(a[s]["loss"] - b[s]["loss"]) for s in a)
wa, wb = (load_file(str(d / r / "hf" / "model.safetensors")) for r in ("ref", "res"))
bitwise = all((wa[k] == wb[k]).all().item() for k in wa)
wdiff = max((wa[k] - wb[k]).abs().max().item() for k in wa)
print(f"RESULT {z} bf16 resume: steps {sorted(b)} losses {[round(a[s]['loss'], 4) for s in sorted(a)]} "
      f"max |loss diff| {diff:.2e}, weights bitwise equal {bitwise} (max diff {wdiff:.2e}), "
      f"second session resumed: {'resumed from' in pathlib.Path(sys.argv[4]).read_text()}, "
      f"{secs}s for 3 runs")
EOF
done

if [ -z "${SKIP_BIG:-}" ]; then
  BIG="trainer.progress_bar=false wandb.mode=disabled model.dim=2048 model.n_layers=22 model.n_heads=32
   model.n_kv_heads=4 model.multiple_of=256 model.vocab_size=32000 data.seq_len=4096 trainer.precision=bf16
   trainer.micro_batch_size=2 trainer.batch_tokens=32768 trainer.loss_chunk_size=8192 trainer.log_every=4
   trainer.val_every=0 trainer.checkpoint_every=0 trainer.max_steps=100 optim.warmup_steps=10 deepspeed=zero1"
  TRAIN $BIG run_dir=$WORK/big >"$LOGS/big.log" 2>&1 &
  pid=$!
  for _ in $(seq 240); do   # stop after the 12th step is logged (no final checkpoint/export of 1.1B weights)
    grep -q '"step": 12,' "$WORK/big/metrics.jsonl" 2>/dev/null && break
    kill -0 $pid 2>/dev/null || break
    sleep 1
  done
  kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
  "$PY" - "$WORK/big/metrics.jsonl" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for r in rows:
    print(f"RESULT 1.1B zero1 bf16 seq4096 step {r['step']}: loss {r['loss']:.3f} tokens/s {r['tokens_per_s']:,.0f} "
          f"MFU {100 * r['mfu']:.1f}% memory {r['perf/memory_gb']:.1f} GB step {r['perf/step_time_s']:.2f}s")
EOF
  grep -E "MFU denominator|parameters" "$LOGS/big.log" | head -3
fi
