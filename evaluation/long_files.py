"""Long source texts for the long-context evaluations: the embedded corpus (a source such as `python`
or `code`, validation split first) or the user's own files (glob patterns)."""
from __future__ import annotations

import glob
import itertools
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from codellama_recipe.core.errors import InputError


def corpus_dir_for(cache_dir) -> Path:
    """The embedded corpus, built on first use by data/embedded/cache.py."""
    from codellama_recipe.data.embedded.cache import ensure_embedded
    return Path(ensure_embedded(cache_dir).corpus_dir)


def corpus_texts(corpus_dir, source: str, splits: Sequence[str]) -> Iterator[tuple[str, str]]:
    corpus_dir = Path(corpus_dir)
    if not (corpus_dir / source).is_dir():
        raise InputError("source", source, f"not a source of the corpus at {corpus_dir}")
    for split in splits:
        for shard in sorted((corpus_dir / source).glob(f"{split}-*.jsonl")):
            with open(shard, encoding="utf-8") as f:
                for n, line in enumerate(f):
                    row = json.loads(line)
                    if "text" in row:
                        yield f"{source}/{split}:{row.get('path', shard.name + ':' + str(n))}", row["text"]


def user_texts(patterns: Sequence[str]) -> Iterator[tuple[str, str]]:
    paths = sorted({p for pattern in patterns for p in glob.glob(str(Path(pattern).expanduser()), recursive=True)})
    if not paths:
        raise InputError("files", list(patterns), "no file matches these glob patterns")
    for p in paths:
        if Path(p).is_file():
            yield p, Path(p).read_text(encoding="utf-8", errors="replace")


def select_texts(section, cache_dir=None, min_bytes: int = 0, max_files: int | None = None,
                 corpus_dir: Path | None = None) -> list[tuple[str, str]]:
    """(name, text) pairs with at least min_bytes (UTF-8), from section.files (globs, in path order) when
    set, else from the embedded corpus source section.source (in corpus_dir, or built in cache_dir), splits in
    the order given (held-out `val` first; the corpus stores files in a hashed, deterministic order)."""
    files = section.files
    if files:
        texts = user_texts([files] if isinstance(files, str) else list(files))
    else:
        texts = corpus_texts(corpus_dir or corpus_dir_for(cache_dir), section.source, list(section.splits))
    long_enough = ((name, text) for name, text in texts if len(text.encode("utf-8")) >= min_bytes)
    chosen = list(itertools.islice(long_enough, max_files))
    if not chosen:
        where = files or f"corpus source {section.source!r} splits {list(section.splits)}"
        raise InputError("min_bytes", min_bytes, f"no text of {where} is that long")
    return chosen
