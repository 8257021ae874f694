#!/usr/bin/env bash
# Several nodes, without or with SLURM (docs/cluster.md).
#
#   torchrun (the default): run this on EVERY node; the nodes meet at HOST:PORT (c10d rendezvous).
#     launch/multinode.sh [--nnodes N] [--node-rank R] [--master HOST] [--port P] [--nproc N] [--pipeline] \
#                         [--] [Hydra overrides...]
#   deepspeed: run this ONCE, on the first host of the hostfile; DeepSpeed starts the other nodes over pdsh/ssh.
#     launch/multinode.sh --launcher deepspeed --hostfile FILE [--master HOST] [--port P] [--pipeline] \
#                         [--] [Hydra overrides...]
#
# Values not given come from SLURM (SLURM_JOB_NUM_NODES, SLURM_NODEID, the first host of SLURM_JOB_NODELIST,
# SLURM_GPUS_ON_NODE), else: --port $MASTER_PORT or 29500, --nproc the number of GPUs (nvidia-smi) or 1.
# Stop signals: SIGUSR1 or SIGTERM to this script (or, with torchrun, to torchrun or the ranks) reaches every rank,
# which checkpoints at its next step (or micro-batch) boundary and exits 0. torchrun waits STOP_GRACE_S (default 900) seconds for
# that before it kills the ranks. With --launcher deepspeed the signal is sent to the ranks of every host of the
# hostfile (pdsh), and the environment the run needs (WANDB_*, HF_*, HUGGING_FACE_*, TRANSFORMERS_*,
# CODELLAMA_*, DS_*, TORCH_*, NCCL_*, OMP_NUM_THREADS, PATH, VIRTUAL_ENV, LD_LIBRARY_PATH) is handed to every
# host through a DeepSpeed environment file (DS_ENV_FILE), written next to the hostfile, readable only by you.
set -euo pipefail
usage() { sed -n '2,21p' "$0" >&2; exit 2; }
refuse() { echo "$0: $*" >&2; exit 2; }

LAUNCHER=torchrun ENTRY=codellama_recipe.train.cli HOSTFILE="" GIVEN=""
NNODES=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-}}
NODE_RANK=${SLURM_NODEID:-}
MASTER=""
PORT=${MASTER_PORT:-29500}
NPROC=${SLURM_GPUS_ON_NODE:-}
while [[ $# -gt 0 ]]; do
  case "$1" in
    --launcher) LAUNCHER=${2:?--launcher needs a value}; shift 2 ;;
    --hostfile) HOSTFILE=${2:?--hostfile needs a value}; shift 2 ;;
    --nnodes) NNODES=${2:?--nnodes needs a value}; GIVEN+=" --nnodes"; shift 2 ;;
    --node-rank) NODE_RANK=${2:?--node-rank needs a value}; GIVEN+=" --node-rank"; shift 2 ;;
    --master) MASTER=${2:?--master needs a value}; shift 2 ;;
    --port) PORT=${2:?--port needs a value}; shift 2 ;;
    --nproc) NPROC=${2:?--nproc needs a value}; GIVEN+=" --nproc"; shift 2 ;;
    --pipeline) ENTRY=codellama_recipe.stages.pipeline_cli; shift ;;
    -h|--help) usage ;;
    --) shift; break ;;
    --*) refuse "unknown option '$1' (see --help)" ;;
    *) break ;;
  esac
done

case "$LAUNCHER" in
  torchrun) [[ -z "$HOSTFILE" ]] || refuse "--hostfile is for --launcher deepspeed; torchrun runs on every node" ;;
  deepspeed)
    [[ -z "$GIVEN" ]] || refuse "${GIVEN# } not used with --launcher deepspeed: the hostfile names the nodes and their slots"
    [[ -n "$HOSTFILE" && -f "$HOSTFILE" ]] || refuse "--hostfile '${HOSTFILE}': expected a DeepSpeed hostfile ('host slots=N' lines)" ;;
  *) refuse "--launcher '$LAUNCHER': expected torchrun or deepspeed" ;;
esac
if [[ -z "$MASTER" && -n "${SLURM_JOB_NODELIST:-}" ]]; then
  hosts=$(scontrol show hostnames "$SLURM_JOB_NODELIST")   # no `| head -n 1`: under pipefail it can exit 141
  MASTER=${hosts%%$'\n'*}
fi
if [[ -z "$MASTER" && -n "$HOSTFILE" && -f "$HOSTFILE" ]]; then
  MASTER=$(awk 'NF && $1 !~ /^#/ {print $1; exit}' "$HOSTFILE")
fi
if [[ -z "$NPROC" ]]; then
  NPROC=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  [[ "$NPROC" =~ ^[1-9][0-9]*$ ]] || NPROC=1
fi
[[ "$PORT" =~ ^[0-9]+$ && "$PORT" -ge 1 && "$PORT" -le 65535 ]] || refuse "--port '$PORT': expected a TCP port (1-65535)"
[[ "$NPROC" =~ ^[1-9][0-9]*$ ]] || refuse "--nproc '$NPROC': expected a positive number of processes per node"
[[ -n "$MASTER" ]] || refuse "no rendezvous host: give --master HOST (or run under SLURM)"
for arg in "$@"; do
  [[ "$arg" == --* ]] && refuse "'$arg' is not a Hydra override (the launcher's options come before them)"
done
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}
export STOP_GRACE_S=${STOP_GRACE_S:-900}
[[ "$STOP_GRACE_S" =~ ^[0-9]+$ ]] || refuse "STOP_GRACE_S '$STOP_GRACE_S': expected seconds"

case "$LAUNCHER" in
  torchrun)
    [[ "$NNODES" =~ ^[1-9][0-9]*$ ]] || refuse "--nnodes '${NNODES}': expected the number of nodes (or run under SLURM)"
    [[ "$NODE_RANK" =~ ^[0-9]+$ && "$NODE_RANK" -lt "$NNODES" ]] \
      || refuse "--node-rank '${NODE_RANK}': expected 0..$((NNODES - 1)) (or run under SLURM)"
    # torchrun forwards these signals to the ranks and waits STOP_GRACE_S for their checkpoint (older torch
    # versions lack both options: there SIGUSR1 goes to the ranks directly, as SLURM sends it).
    extra=()
    help=$("$PY" -m torch.distributed.run --help 2>&1 || true)
    [[ "$help" == *--signals_to_handle* || "$help" == *--signals-to-handle* ]] \
      && extra+=(--signals_to_handle "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1")
    [[ "$help" == *--shutdown_timeout* || "$help" == *--shutdown-timeout* ]] && extra+=(--shutdown_timeout "$STOP_GRACE_S")
    exec "$PY" -m torch.distributed.run --nnodes "$NNODES" --nproc_per_node "$NPROC" --node_rank "$NODE_RANK" \
      --rdzv_backend c10d --rdzv_endpoint "$MASTER:$PORT" --rdzv_id "${SLURM_JOB_ID:-codellama}" \
      --max_restarts 0 "${extra[@]}" -m "$ENTRY" "$@" ;;
  deepspeed)
    HOSTFILE=$(cd "$(dirname "$HOSTFILE")" && pwd)/$(basename "$HOSTFILE")
    hosts=$(awk 'NF && $1 !~ /^#/ {print $1}' "$HOSTFILE" | paste -sd, -)
    # The environment every host needs, as DeepSpeed's environment file (one NAME=value a line).
    export DS_ENV_FILE="$HOSTFILE.env"
    (
      umask 077
      : > "$DS_ENV_FILE"
      while IFS= read -r name; do
        case "$name" in
          WANDB_*|HF_*|HUGGING_FACE_*|TRANSFORMERS_*|CODELLAMA_*|DS_*|TORCH_*|NCCL_*|OMP_NUM_THREADS|PATH|VIRTUAL_ENV|LD_LIBRARY_PATH)
            [[ "$name" == DS_ENV_FILE || "${!name}" == *$'\n'* ]] && continue
            printf '%s=%s\n' "$name" "${!name}" >> "$DS_ENV_FILE" ;;
        esac
      done < <(compgen -e)
    )
    # The stop signal goes straight to the ranks of every host (DeepSpeed's own launchers would kill them).
    forward() {
      echo "[multinode] $1: asking the ranks on $hosts to checkpoint and stop" >&2
      PDSH_RCMD_TYPE="${PDSH_RCMD_TYPE:-ssh}" pdsh -w "$hosts" "pkill -$1 -f '^[^ ]+ -u -m $ENTRY( |\$)'" || true
    }
    trap 'forward USR1' USR1
    trap 'forward TERM' TERM
    "$PY" -m deepspeed.launcher.runner --hostfile "$HOSTFILE" --master_addr "$MASTER" --master_port "$PORT" \
      --no_local_rank --module "$ENTRY" "$@" &
    pid=$!
    rc=0
    while true; do   # `wait` returns early when a trapped signal arrives: wait again for the launcher
      wait "$pid" && { rc=0; break; } || rc=$?
      kill -0 "$pid" 2>/dev/null || break
    done
    exit "$rc" ;;
esac
