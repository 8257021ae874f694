"""Test-wide environment: CPU DeepSpeed, offline wandb, shared caches, a tiny tokenizer for everyone."""
import os
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# DeepSpeed JIT-compiles a comm op once (~30 s); keep it across test runs.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
# The embedded corpus and tokenizer are built once per checkout and reused by every test.
os.environ.setdefault("CODELLAMA_CACHE", str(REPO / ".cache" / "embedded"))


def infilling_dir() -> pathlib.Path | None:
    """The folder holding the HumanEval-infilling data files, or None: the tests that need them skip.

    The repository does not ship those files. In order: $CODELLAMA_INFILLING_DIR (the folder the per-stage
    evaluation reads), $CODELLAMA_SHARED_DIR/benchmarks, then, as a convenience for developer machines only,
    shared/benchmarks beside the checkout. CI sets the variables itself (`.ci/run`)."""
    candidates = []
    if os.environ.get("CODELLAMA_INFILLING_DIR"):
        candidates.append(pathlib.Path(os.environ["CODELLAMA_INFILLING_DIR"]))
    if os.environ.get("CODELLAMA_SHARED_DIR"):
        candidates.append(pathlib.Path(os.environ["CODELLAMA_SHARED_DIR"]) / "benchmarks")
    candidates.append(REPO.parent / "shared" / "benchmarks")
    for c in candidates:
        if (c / "HumanEval-SingleLineInfilling.jsonl.gz").is_file():
            return c
    return None


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _no_inherited_wandb_service(monkeypatch):
    """wandb exports WANDB_SERVICE once a run starts in this process; a training subprocess that inherits it
    joins this process's wandb service, where a run id left open by a killed subprocess stays 'in use'."""
    monkeypatch.delenv("WANDB_SERVICE", raising=False)
