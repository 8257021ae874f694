"""codellama-train [Hydra overrides]: train one stage (conf/train.yaml).

    codellama-train model=tiny stage=code run_dir=runs/code trainer.max_steps=200
    torchrun --standalone --nproc_per_node 2 -m codellama_recipe.train.cli deepspeed=zero2 ...     (or launch/cpu.sh 2 ...)

Rerunning the same command resumes from the latest complete checkpoint in run_dir.
Exit codes: 0 finished or stopped by SIGTERM/SIGUSR1 (checkpoint written), 2 invalid configuration or
checkpoint refused, 3 too many non-finite steps in a row.
"""
from __future__ import annotations

import os
import sys

from codellama_recipe.core.config import HYDRA_CONFIG_PATH, register_resolvers


def _run(cfg) -> int:
    from codellama_recipe.train.weight_formats import CheckpointError
    from codellama_recipe.train.engine_setup import shutdown_distributed
    from codellama_recipe.core.errors import ConfigError
    from codellama_recipe.train.trainer import TooManyNonFinite, run

    try:
        run(cfg)
        return 0
    except (ConfigError, CheckpointError) as e:
        print(f"codellama-train: {e}", file=sys.stderr, flush=True)
        return 2
    except TooManyNonFinite as e:
        print(f"codellama-train: {e}", file=sys.stderr, flush=True)
        return 3
    finally:
        shutdown_distributed()


def main() -> None:
    import hydra

    register_resolvers()

    if not _has_cuda():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    exit_code = 0

    @hydra.main(config_path=HYDRA_CONFIG_PATH, config_name="train", version_base="1.3")
    def _main(cfg) -> None:
        nonlocal exit_code
        exit_code = _run(cfg)

    _main()
    sys.exit(exit_code)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
