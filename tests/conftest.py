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


def shared_dir() -> pathlib.Path | None:
    """../shared next to the checkout (CI and developer machines), or $CODELLAMA_SHARED_DIR."""
    env = os.environ.get("CODELLAMA_SHARED_DIR")
    candidates = [pathlib.Path(env)] if env else []
    candidates.append(REPO.parent / "shared")
    for c in candidates:
        if (c / "benchmarks").is_dir():
            return c
    return None


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _no_inherited_wandb_service(monkeypatch):
    """wandb exports WANDB_SERVICE once a run starts in this process; a training subprocess that inherits it
    joins this process's wandb service, where a run id left open by a killed subprocess stays 'in use'."""
    monkeypatch.delenv("WANDB_SERVICE", raising=False)
