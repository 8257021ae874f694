"""How long a frozen node takes to end a multi-node run, for a given trainer.collective_timeout_s.

    python bench/frozen_peer.py 20          # two torchrun "nodes" on 127.0.0.1, one CPU rank each (gloo)
    python bench/frozen_peer.py 10 --kill   # the node is killed (kill -9) instead of frozen

Both nodes train the tiny engine configuration on synthetic batches (tests/helpers_engine.py) until a
checkpoint exists; then the second node's rank is stopped with SIGSTOP (a hung node: its TCP connections stay
open) or its torchrun and rank are killed. Printed: seconds from the signal to the end of the surviving node's
torchrun, its exit code, and the one line the surviving rank wrote.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import signal
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def main() -> None:
    import helpers_engine as H
    import test_engine_cluster as T

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("timeout_s", type=int, help="trainer.collective_timeout_s")
    parser.add_argument("--kill", action="store_true", help="kill -9 the node instead of freezing its rank")
    args = parser.parse_args()
    T.TIMEOUT_S = args.timeout_s
    nodes, run_dir, logs = T._two_nodes_training(pathlib.Path(tempfile.mkdtemp(prefix="frozen-peer-")))
    try:
        pid = H.worker_pids(nodes[1])[0]
        rank = H.rank_of(pid)
        if args.kill:
            H.kill_tree(nodes[1])
        else:
            os.kill(pid, signal.SIGSTOP)
        started = time.monotonic()
        nodes[0].wait(timeout=args.timeout_s + 120)
        took = time.monotonic() - started
        lines = [x for x in H.rank_output(logs, 1 - rank).splitlines() if "lost a peer" in x]
        print(f"collective_timeout_s={args.timeout_s}: the surviving node ended {took:.1f} s after "
              f"{'kill -9' if args.kill else 'SIGSTOP'} (torchrun exit {nodes[0].returncode})")
        print("\n".join(lines))
    finally:
        for node in nodes:
            H.kill_tree(node)


if __name__ == "__main__":
    main()
