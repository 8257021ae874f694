"""codellama-train [Hydra overrides]: train one stage (conf/train.yaml).

    codellama-train model=tiny stage=code run_dir=runs/code trainer.max_steps=200
    torchrun --standalone --nproc_per_node 2 -m codellama_recipe.train.cli deepspeed=zero2 ...   (or launch/cpu.sh 2 ...)
    codellama-train -m optim.lr=1e-3,3e-4 trainer.max_steps=50      # a sweep: one run_dir per job
    codellama-train --cfg job                                         # the composed configuration

Rerunning the same command resumes from the latest complete checkpoint in run_dir.
Exit codes: 0 finished or stopped by SIGTERM/SIGUSR1 (checkpoint written), 2 invalid configuration or
checkpoint refused, 3 too many non-finite steps in a row, 4 another rank stopped responding or died
(trainer.collective_timeout_s; one line naming it; the latest checkpoint is intact, the same command resumes).
"""
from __future__ import annotations

import functools
import os
import sys

from codellama_recipe.core.cli import run_hydra_command, split_argv
from codellama_recipe.core.errors import ConfigError

PROG = "codellama-train"


def sweep_run_dir(cfg) -> None:
    """In a -m sweep every job trains in its own folder: run_dir/<job number>_<the values it sweeps>."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    from hydra.core.override_parser.overrides_parser import OverridesParser

    job = HydraConfig.get()
    parsed = OverridesParser.create().parse_overrides(split_argv(sys.argv[1:])[1])
    swept_keys = {o.get_key_element() for o in parsed if o.is_sweep_override()}
    swept = [o for o in job.overrides.task if o.split("=", 1)[0] in swept_keys]
    suffix = "_".join([str(job.job.num), *swept]).replace("/", "_")
    cfg.run_dir = os.path.join(str(cfg.run_dir), suffix)
    print(f"[train] sweep job {job.job.num}: run_dir {cfg.run_dir}", flush=True)


def _run(cfg, callbacks=(), loaders=None) -> int:
    from codellama_recipe.data.record_readers import BadInputError
    from codellama_recipe.train.peers import PeerLost, exit_lost
    from codellama_recipe.train.trainer import TooManyNonFinite, build_loaders, run
    from codellama_recipe.train.weight_formats import CheckpointError

    sweep_run_dir(cfg)
    try:
        run(cfg, callbacks=callbacks, loaders=loaders or build_loaders)
        return 0
    except (ConfigError, CheckpointError) as e:
        print(f"{PROG}: {e}", file=sys.stderr, flush=True)
        return 2
    except BadInputError as e:    # strict mode: the first bad record, named by file and line
        print(f"{PROG}: {e.one_line()}", file=sys.stderr, flush=True)
        return 2
    except TooManyNonFinite as e:
        print(f"{PROG}: {e}", file=sys.stderr, flush=True)
        return 3
    except PeerLost as e:   # a frozen or dead rank: one line, and the process ends at once (train/peers.py)
        exit_lost(PROG, e, 4)


def _check(cfg) -> None:
    """A -m sweep's up-front check of every job: the values only (each job checks its inputs where it starts)."""
    from codellama_recipe.train.config_checks import check_values

    check_values(cfg)


def main(callbacks=(), loaders=None) -> None:
    """codellama-train; a program that embeds it may add callbacks (train/callbacks.py) and its own data loaders
    (train/trainer.py's `build_loaders` signature)."""
    if not _has_cuda():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from codellama_recipe.train.engine_setup import shutdown_distributed

    try:
        # A single run is checked once, by trainer.run before any process group starts; the jobs of a -m sweep
        # are all checked before the first one runs.
        sweep = any(a.split("=", 1)[0] in ("-m", "--multirun") for a in sys.argv[1:])
        code = run_hydra_command(PROG, "train", functools.partial(_run, callbacks=callbacks, loaders=loaders),
                                 check=_check if sweep else None)
    finally:
        shutdown_distributed()  # once: the jobs of a -m sweep share the process group
    sys.exit(code)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
