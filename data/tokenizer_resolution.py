"""Which tokenizer goes with a set of weights: one rule for codellama-train (`init_from`) and codellama-eval
(`model_path`).

1. `tokenizer_path` when given;
2. `<weights>/tokenizer.model`: Hugging Face folders, Code Llama downloads and this project's exports ship it;
3. for a folder of this project's training (a run_dir, its checkpoints/ folder or one checkpoint): the tokenizer
   that run trained with (its FIM-extended tokenizer.model, its hf/ export's, or the same rule applied to the
   tokenizer_path / init_from / cache_dir of the config.yaml it saved);
4. `<weights>/../tokenizer.model`: Meta's Llama 2 downloads keep one tokenizer next to the size folders
   (llama-2-7b/consolidated.00.pth, tokenizer.model); a note is logged because the file is outside the folder;
5. no weights at all (random initialisation): the embedded default tokenizer.

Anything else is a ConfigError: weights from a folder without a tokenizer must not be trained or evaluated with
an unrelated vocabulary.
"""
from __future__ import annotations

import logging
from pathlib import Path

from codellama_recipe.core.errors import InputError

TOKENIZER_FILE = "tokenizer.model"
RUN_CONFIG_FILE = "config.yaml"          # the resolved configuration codellama-train saves in its run_dir
RUN_CHECKPOINTS_DIR = "checkpoints"
RUN_EXPORT_DIR = "hf"

log = logging.getLogger(__name__)


def resolve_tokenizer(tokenizer_path, weights, *, weights_key: str, cache_dir) -> str:
    """The tokenizer file for `weights` (a folder, or None for a randomly initialised model); `weights_key` is
    the configuration key that named the folder (init_from, model_path), for the error message."""
    if tokenizer_path:
        return str(tokenizer_path)
    if not weights:
        return _embedded_tokenizer(cache_dir)
    return _tokenizer_of_weights(Path(str(weights)), weights_key, runs_followed=())


def _tokenizer_of_weights(folder: Path, weights_key: str, runs_followed: tuple[Path, ...]) -> str:
    if not folder.is_dir():
        raise InputError(weights_key, str(folder), "no such folder; expected a Hugging Face, Meta or codellama-train "
                                                    "checkpoint folder")
    shipped = folder / TOKENIZER_FILE
    if shipped.is_file():
        return str(shipped)
    run_dir = _training_run_of(folder)
    if run_dir is not None and run_dir not in runs_followed:
        return _tokenizer_of_run(run_dir, weights_key, runs_followed + (run_dir,))
    beside = folder.parent / TOKENIZER_FILE
    if beside.is_file():
        log.warning("%s=%s has no %s; using %s from the folder above (the layout of Meta's Llama 2 downloads)",
                    weights_key, folder, TOKENIZER_FILE, beside)
        return str(beside)
    raise InputError(weights_key, str(folder),
                      f"no {TOKENIZER_FILE} in {folder} nor in {folder.parent} (Meta's layout); "
                      f"set tokenizer_path=/path/to/{TOKENIZER_FILE} (the tokenizer these weights were trained with)")


def _training_run_of(folder: Path) -> Path | None:
    """The run_dir of a codellama-train folder: the folder itself, the run of its checkpoints/ folder, or the run
    of one of its checkpoints."""
    for candidate in (folder, folder.parent, folder.parent.parent):
        if (candidate / RUN_CONFIG_FILE).is_file() and (candidate / RUN_CHECKPOINTS_DIR).is_dir():
            return candidate
    return None


def _tokenizer_of_run(run_dir: Path, weights_key: str, runs_followed: tuple[Path, ...]) -> str:
    for written_by_the_run in (run_dir / TOKENIZER_FILE, run_dir / RUN_EXPORT_DIR / TOKENIZER_FILE):
        if written_by_the_run.is_file():
            return str(written_by_the_run)
    from omegaconf import OmegaConf

    run_cfg = OmegaConf.load(run_dir / RUN_CONFIG_FILE)
    tokenizer_path = OmegaConf.select(run_cfg, "tokenizer_path", default=None)
    if tokenizer_path:
        return str(tokenizer_path)
    init_from = OmegaConf.select(run_cfg, "init_from", default=None)
    if not init_from:
        return _embedded_tokenizer(OmegaConf.select(run_cfg, "cache_dir", default=None))
    return _tokenizer_of_weights(Path(str(init_from)), f"{run_dir / RUN_CONFIG_FILE}: init_from", runs_followed)


def _embedded_tokenizer(cache_dir) -> str:
    from codellama_recipe.data.embedded.cache import ensure_embedded

    return str(ensure_embedded(str(cache_dir) if cache_dir else None).tokenizer_path)
