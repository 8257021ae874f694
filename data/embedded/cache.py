"""The embedded default: corpus + tokenizer built on first use under the cache directory.

    paths = ensure_embedded()          # EmbeddedPaths(corpus_dir, tokenizer_path)

Layout: `<cache>/corpus-v<N>/` (see data.corpus) and `<cache>/tokenizer-v<N>.model`, trained on the
corpus train split. Idempotent; concurrent callers (two ranks, two test processes) serialise on an
fcntl lock, and every artefact appears by atomic rename, so a reader never sees a half-built one.
"""
from __future__ import annotations

import contextlib
import glob
import fcntl
import os
import pathlib
import shutil
import time
from typing import NamedTuple

from codellama_recipe.data.embedded.corpus import CORPUS_FORMAT_VERSION, SOURCES, CorpusConfig, build_corpus, shard_files
from codellama_recipe.data.tokenizer import DEFAULT_VOCAB_SIZE, train_tokenizer

TOKENIZER_VERSION = 2


class EmbeddedPaths(NamedTuple):
    corpus_dir: pathlib.Path
    tokenizer_path: pathlib.Path


def default_cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("CODELLAMA_CACHE") or pathlib.Path.home() / ".cache" / "codellama-recipe")


@contextlib.contextmanager
def _locked(cache_dir: pathlib.Path):
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".embedded.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _paths(cache_dir) -> EmbeddedPaths:
    cache_dir = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return EmbeddedPaths(cache_dir / f"corpus-v{CORPUS_FORMAT_VERSION}",
                         cache_dir / f"tokenizer-v{TOKENIZER_VERSION}.model")


def in_embedded_corpus(pattern: str, cache_dir) -> bool:
    """Does a path or glob point into the embedded corpus under `cache_dir`?"""
    corpus = os.path.abspath(os.path.expanduser(str(_paths(pathlib.Path(str(cache_dir)).expanduser()).corpus_dir)))
    path = os.path.abspath(os.path.expanduser(str(pattern)))
    return path == corpus or path.startswith(corpus + os.sep)


def corpus_train_files(corpus_dir) -> list[pathlib.Path]:
    """Train shards of every source, interleaved (code 0, python 0, ..., code 1, ...), so a byte limit
    on tokenizer training still sees every source."""
    per_source = [shard_files(corpus_dir, s, "train") for s in SOURCES]
    return [shards[i] for i in range(max(map(len, per_source))) for shards in per_source if i < len(shards)]


def _remove_stale_temporaries(cache_dir: pathlib.Path) -> None:
    """What killed processes left behind (only called while holding the lock): half-built corpora, replaced
    corpora not yet deleted, tokenizer training folders and half-written tokenizer files."""
    for pattern in (".corpus-v*.tmp-*", ".corpus-v*.old-*", ".tok-train-*", ".tokenizer-v*.tmp-*"):
        for stale in cache_dir.glob(pattern):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


def ensure_corpus(cache_dir=None, cfg: CorpusConfig | None = None, log=print) -> pathlib.Path:
    corpus_dir = _paths(cache_dir).corpus_dir
    if (corpus_dir / "manifest.json").is_file():
        return corpus_dir
    with _locked(corpus_dir.parent):
        if not (corpus_dir / "manifest.json").is_file():  # another process may have built it meanwhile
            _remove_stale_temporaries(corpus_dir.parent)
            log(f"building the embedded corpus in {corpus_dir} (once; about half a minute)")
            build_corpus(corpus_dir, cfg, log=log)
    return corpus_dir


def ensure_embedded(cache_dir=None, log=print, corpus_cfg: CorpusConfig | None = None) -> EmbeddedPaths:
    """Build the corpus and train the tokenizer if missing; return their paths. `corpus_cfg` (caps) is
    used only when the corpus is built here; pass a separate cache_dir for non-default caps."""
    paths = _paths(cache_dir)
    if (paths.corpus_dir / "manifest.json").is_file() and paths.tokenizer_path.is_file():
        return paths
    ensure_corpus(cache_dir, corpus_cfg, log=log)
    with _locked(paths.corpus_dir.parent):
        if not paths.tokenizer_path.is_file():
            _remove_stale_temporaries(paths.corpus_dir.parent)
            start = time.perf_counter()
            prefix = str(paths.tokenizer_path)[: -len(".model")]
            train_tokenizer(corpus_train_files(paths.corpus_dir), prefix, vocab_size=DEFAULT_VOCAB_SIZE)
            log(f"trained the embedded tokenizer ({DEFAULT_VOCAB_SIZE} pieces) in "
                f"{time.perf_counter() - start:.1f}s -> {paths.tokenizer_path}")
    return paths


def ensure_corpus_for(plan_sources, cache_dir, log=print) -> None:
    """Build the embedded corpus when a configured training path points into `cache_dir` and matches nothing
    yet (the defaults point there: the corpus is made on first use)."""
    cache = str(pathlib.Path(str(cache_dir)).expanduser())
    patterns = [p for spec in plan_sources for p in spec.paths]
    if any(p.startswith(cache) and not glob.glob(p) for p in patterns):
        ensure_corpus(cache, log=log)
