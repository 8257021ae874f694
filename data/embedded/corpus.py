"""`codellama-corpus OUT`: the embedded default corpus, built from files already on the machine.

Everything comes from the running Python installation (found through sys / sysconfig / site, never
from fixed paths). By default only what a release pins is read, so that two users of the same release and Python
version build the same corpus (the manifest's `fingerprint` tells): the standard library, the interpreter's C
headers, and the files of the pinned distributions (`distributions`: torch, whose version the Makefile pins); with
`include_system_dirs` (or `distributions=None`: every installed package and the environment's scripts) it also
reads the standard Debian/Ubuntu licence locations and shell scripts, which differ from machine to machine:

  code      C/C++ and CUDA sources and headers, Python (installed packages, not the stdlib), shell,
            and a few other languages shipped inside packages (Fortran, protobuf, CMake, ...)
  python    the Python standard library (tests excluded)
  nl_code   natural language about code: Python's documentation topics (pydoc_data.topics), the
            docstrings of modules (extracted with ast), package READMEs / docs / METADATA descriptions
  nl        general English prose, as far as the machine has any: licence and copyright texts
  instruct  docstring → function chat pairs mined from the standard library (data.instruct_mining)

Output: `<out>/<source>/{train,val}-NNNNN.jsonl` (text rows {"text", "path", "kind"}; instruct rows
{"messages", "source_path"}) and `<out>/manifest.json`. The build is deterministic: files are walked
in sorted order and then taken in the order of a hash of their path label; the validation split is a
hash of the path label too (so a stdlib module is held out in `python`, `nl_code` and `instruct`
alike, and never leaks into training through another source). Texts are exact-deduplicated by sha256; in
`code` and `python`, generated files (a generator's marker near the top, such as torchgen's `@generated`) are
skipped and near-duplicates (MinHash, Jaccard >= 0.7 over 5-token shingles, data.near_dedup) of a file taken
before are skipped, so one family of generated headers cannot fill the source (`--keep-duplicates` keeps them,
to measure what their removal does).

`code` and `python` also come as pieces: `<source>/{train,val}_pieces-NNNNN.jsonl` hold the same files cut into
pieces of at most `piece_chars` characters at top-level boundaries (data.pieces), for models whose context
holds few whole files (the ablations and the demo train and evaluate infilling on them).
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import site
import sys
import sysconfig
import time
from typing import Callable, Iterable, Iterator

from codellama_recipe.core.atomic import replace_dir_atomic, write_bytes_atomic, write_text_atomic
from codellama_recipe.data.embedded.instruct_mining import USER_TEMPLATE, mine_pairs, module_docstrings
from codellama_recipe.data.near_dedup import NearDuplicateIndex, looks_generated
from codellama_recipe.data.pieces import split_into_pieces

CORPUS_FORMAT_VERSION = 2
SOURCES = ("code", "python", "nl_code", "nl", "instruct")
DEDUPLICATED_SOURCES = ("code", "python")   # generated files and near-duplicates skipped; also written as pieces
MB = 1_000_000

DEFAULT_SOURCE_BYTES = {"code": 24 * MB, "python": 12 * MB, "nl_code": 8 * MB, "nl": 4 * MB, "instruct": 4 * MB}


@dataclasses.dataclass(frozen=True)
class CorpusConfig:
    """Size caps and split settings. Defaults give ~50 MB built in well under a minute."""
    source_bytes: dict = dataclasses.field(default_factory=lambda: dict(DEFAULT_SOURCE_BYTES))
    max_file_bytes: int = 200_000     # larger files (generated tables, amalgamations) are skipped
    val_per_mille: int = 30           # ~3% of path labels go to validation
    train_shards: int = 8             # 2 ranks x 2 workers read whole shards
    val_shards: int = 4
    include_system_dirs: bool = False  # licences in /usr/share, shell scripts in /usr/bin, bash completions (these
                                       # differ between machines: off by default)
    distributions: tuple | None = ("torch",)   # installed packages read (their RECORD files); None: every package
                                               # in site-packages and the environment's bin/ scripts
    near_dup_threshold: float = 0.7   # MinHash Jaccard over 5-token shingles (StarCoder's near-dedup value)
    near_dedup: bool = True           # False keeps generated files and near-duplicates in code and python (to
                                      # measure what removing them does; docs/ablations.md)
    piece_chars: int = 1500           # the `*_pieces` splits: files cut into pieces of at most this many chars

    def validate(self) -> "CorpusConfig":
        unknown = set(self.source_bytes) - set(SOURCES)
        if unknown:
            raise ValueError(f"corpus source_bytes has unknown source(s) {sorted(unknown)}; allowed: {SOURCES}")
        for name, cap in self.source_bytes.items():
            if not isinstance(cap, int) or cap <= 0:
                raise ValueError(f"corpus source_bytes[{name!r}]={cap!r} is invalid; must be a positive int")
        if not 0 < self.near_dup_threshold <= 1:
            raise ValueError(f"corpus near_dup_threshold={self.near_dup_threshold!r} is invalid; must be in (0, 1]")
        for key in ("max_file_bytes", "train_shards", "val_shards", "piece_chars"):
            if getattr(self, key) <= 0:
                raise ValueError(f"corpus {key}={getattr(self, key)!r} is invalid; must be > 0")
        if not 0 < self.val_per_mille < 1000:
            raise ValueError(f"corpus val_per_mille={self.val_per_mille!r} is invalid; must be in 1..999")
        return self

    def scaled(self, factor: float) -> "CorpusConfig":
        caps = {k: max(1, int(v * factor)) for k, v in self.source_bytes.items()}
        return dataclasses.replace(self, source_bytes=caps)


# ----------------------------------------------------------------------------------------------
# Where the files are
# ----------------------------------------------------------------------------------------------

C_CPP = {".c", ".h", ".cc", ".cpp", ".cxx", ".hpp", ".hh", ".hxx", ".inl", ".ipp", ".tcc"}
CUDA = {".cu", ".cuh"}
PYTHON = {".py", ".pyi", ".pyx", ".pxd", ".pxi"}
SHELL = {".sh", ".bash", ".zsh"}
OTHER_CODE = {".f", ".f90", ".f95", ".for", ".proto", ".cmake", ".js", ".mjs", ".ts", ".rs", ".go", ".java",
              ".lua", ".ps1", ".bat", ".jl", ".scala", ".kt", ".swift", ".sql", ".pl", ".rb", ".php", ".cs"}
CODE_EXTS = C_CPP | CUDA | PYTHON | SHELL | OTHER_CODE
DOC_EXTS = {".md", ".rst"}
DOC_STEMS = ("readme", "changelog", "changes", "history", "news")
LICENSE_STEMS = ("license", "licence", "copying", "notice", "copyright")
SKIP_DIRS = {"__pycache__", ".git", ".hg", ".svn", "node_modules"}
STDLIB_SKIP_DIRS = SKIP_DIRS | {"test", "tests", "idle_test", "site-packages", "dist-packages"}
SH_SHEBANGS = (b"#!/bin/sh", b"#!/bin/bash", b"#!/usr/bin/env sh", b"#!/usr/bin/env bash", b"#!/bin/dash",
               b"#!/usr/bin/env zsh", b"#!/bin/zsh")


@dataclasses.dataclass(frozen=True)
class Candidate:
    label: str          # machine-independent name: "<root>/<relative path>" (+ "#topic" for topics)
    path: pathlib.Path | None
    kind: str           # bucket inside a source


def _dedup_dirs(paths: Iterable) -> list[pathlib.Path]:
    seen, out = set(), []
    for p in paths:
        p = pathlib.Path(p)
        if p.is_dir() and p.resolve() not in seen:
            seen.add(p.resolve())
            out.append(p)
    return out


def distribution_files(names) -> dict[str, set[str]]:
    """site-packages root label -> the relative paths of the files that the named distributions installed there
    (from their RECORD). An absent distribution is an error: the corpus would silently differ."""
    import importlib.metadata

    roots = {label: path.resolve() for label, path in python_roots().items() if label.startswith("site-packages")}
    allowed: dict[str, set[str]] = {label: set() for label in roots}
    for name in names:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise ValueError(f"corpus distributions: {name!r} is not installed; install it or set distributions") \
                from None
        for f in dist.files or ():
            path = pathlib.Path(dist.locate_file(f)).resolve()
            for label, root in roots.items():
                if root in path.parents:
                    allowed[label].add(path.relative_to(root).as_posix())
                    break
    return allowed


def distribution_versions(names) -> dict[str, str]:
    import importlib.metadata

    return {name: importlib.metadata.version(name) for name in names}


def python_roots() -> dict[str, pathlib.Path]:
    """Root label -> directory, for the running interpreter."""
    paths = sysconfig.get_paths()
    roots = {"stdlib": pathlib.Path(paths["stdlib"]), "include": pathlib.Path(paths["include"])}
    site_dirs = _dedup_dirs(list(site.getsitepackages()) + [paths["purelib"], paths["platlib"]])
    for i, d in enumerate(site_dirs):
        roots["site-packages" if i == 0 else f"site-packages-{i}"] = d
    bin_name = "Scripts" if os.name == "nt" else "bin"
    for i, d in enumerate(_dedup_dirs([pathlib.Path(sys.prefix) / bin_name, pathlib.Path(sys.base_prefix) / bin_name])):
        roots["bin" if i == 0 else f"bin-{i}"] = d
    return {k: v for k, v in roots.items() if v.is_dir()}


def _walk(root: pathlib.Path, skip_dirs: set) -> Iterator[pathlib.Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip_dirs)
        for name in sorted(filenames):
            p = pathlib.Path(dirpath) / name
            if p.is_file() and not p.is_symlink():
                yield p


def _is_license_name(name: str) -> bool:
    return name.lower().startswith(LICENSE_STEMS)


def _is_package_doc(path: pathlib.Path) -> bool:
    name = path.name.lower()
    if _is_license_name(name):
        return False
    return path.suffix.lower() in DOC_EXTS or (name.startswith(DOC_STEMS) and path.suffix.lower() in {"", ".txt"})


def _shell_shebang(path: pathlib.Path) -> bool:
    try:
        with path.open("rb") as f:
            head = f.read(32)
    except OSError:
        return False
    return head.startswith(SH_SHEBANGS)


def discover(roots: dict[str, pathlib.Path], include_system_dirs: bool,
             allowed: dict[str, set[str]] | None = None) -> dict[str, dict[str, list[Candidate]]]:
    """source -> bucket -> candidates (in sorted-walk order; ordering by hash happens later). With `allowed`, a
    root it names contributes only the files it lists, and a root it does not name outside the interpreter's own
    (stdlib, include) contributes nothing."""
    buckets: dict[str, dict[str, list[Candidate]]] = {s: {} for s in SOURCES}

    def add(source, kind, label, path):
        buckets[source].setdefault(kind, []).append(Candidate(label, path, kind))

    for root_name, root in roots.items():
        is_stdlib = root_name == "stdlib"
        skip = STDLIB_SKIP_DIRS if is_stdlib else SKIP_DIRS
        if allowed is not None and root_name not in allowed and root_name not in ("stdlib", "include"):
            continue
        for p in _walk(root, skip):
            relative = p.relative_to(root).as_posix()
            if allowed is not None and root_name in allowed and relative not in allowed[root_name]:
                continue
            label = f"{root_name}/{relative}"
            ext, name = p.suffix.lower(), p.name
            if root_name.startswith("bin"):
                if ext in SHELL or name == "activate" or (ext == "" and _shell_shebang(p)):
                    add("code", "shell", label, p)
                elif ext in OTHER_CODE:
                    add("code", "other", label, p)
                continue
            in_dist_licenses = ".dist-info" in label and "/licenses/" in label
            if (_is_license_name(name) or in_dist_licenses) and ext not in CODE_EXTS:
                add("nl", "package_license", label, p)
                continue
            if is_stdlib:
                if ext == ".py":
                    add("python", "stdlib", label, p)
                    add("instruct", "stdlib_functions", label, p)
                    add("nl_code", "docstrings", label, p)
                elif p.parent.name == "idlelib" and ext == ".txt":
                    add("nl_code", "package_doc", label, p)
                elif ext in C_CPP:
                    add("code", "c_cpp", label, p)
                elif ext in SHELL:
                    add("code", "shell", label, p)
                continue
            if name == "METADATA" and p.parent.name.endswith(".dist-info"):
                add("nl_code", "package_metadata", label, p)
            elif ext in C_CPP:
                add("code", "c_cpp", label, p)
            elif ext in CUDA:
                add("code", "cuda", label, p)
            elif ext in PYTHON:
                add("code", "python", label, p)
                if ext == ".py":
                    add("nl_code", "docstrings", label, p)
            elif ext in SHELL:
                add("code", "shell", label, p)
            elif ext in OTHER_CODE or name == "CMakeLists.txt":
                add("code", "other", label, p)
            elif _is_package_doc(p):
                add("nl_code", "package_doc", label, p)

    buckets["nl_code"]["pydoc_topics"] = [Candidate(f"stdlib/pydoc_data/topics.py#{t}", None, "pydoc_topics")
                                          for t in sorted(_pydoc_topics())]
    if include_system_dirs:
        for p in _walk(pathlib.Path("/usr/share/common-licenses"), SKIP_DIRS) if pathlib.Path(
                "/usr/share/common-licenses").is_dir() else ():
            add("nl", "system_license", f"system/usr/share/common-licenses/{p.name}", p)
        # Shell is scarce inside a Python installation; the system's own scripts are real shell code.
        for bin_dir in ("/usr/bin", "/usr/sbin"):
            if pathlib.Path(bin_dir).is_dir():
                for p in sorted(pathlib.Path(bin_dir).iterdir()):
                    if p.is_file() and not p.is_symlink() and _shell_shebang(p):
                        add("code", "shell", f"system{bin_dir}/{p.name}", p)
        completions = pathlib.Path("/usr/share/bash-completion/completions")
        if completions.is_dir():
            for p in _walk(completions, SKIP_DIRS):
                add("code", "shell", f"system/{p.relative_to('/').as_posix()}", p)
        doc = pathlib.Path("/usr/share/doc")
        if doc.is_dir():
            for pkg in sorted(doc.iterdir()):
                c = pkg / "copyright"
                if c.is_file() and not c.is_symlink():
                    add("nl", "debian_copyright", f"system/usr/share/doc/{pkg.name}/copyright", c)
    return buckets


def _pydoc_topics() -> dict[str, str]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip pydoc_data
        return {}
    return dict(topics)


# ----------------------------------------------------------------------------------------------
# Reading documents
# ----------------------------------------------------------------------------------------------

class Skip(Exception):
    """A candidate that gives no document; the message is the reason counted in the manifest."""


def _read_text(path: pathlib.Path, max_bytes: int) -> str:
    try:
        size = path.stat().st_size
    except OSError:
        raise Skip("unreadable") from None
    if size > max_bytes:
        raise Skip("too_large")
    try:
        data = path.read_bytes()
    except OSError:
        raise Skip("unreadable") from None
    if b"\x00" in data:
        raise Skip("binary")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise Skip("undecodable") from None
    if not text.strip():
        raise Skip("empty")
    return text


def _metadata_description(text: str) -> str:
    """The long description of a METADATA file: the body after the RFC 822 headers."""
    text = text.replace("\r\n", "\n")
    _, sep, body = text.partition("\n\n")
    if not sep or not body.strip():
        raise Skip("empty")
    return body


def make_loaders(cfg: CorpusConfig, topics: dict[str, str]) -> dict[str, Callable[[Candidate], list]]:
    """bucket kind -> function(candidate) -> list of rows (text rows or instruct rows)."""
    limit = cfg.max_file_bytes

    def file_row(c):
        return [{"text": _read_text(c.path, limit), "path": c.label, "kind": c.kind}]

    def docstrings_row(c):
        doc = module_docstrings(_read_text(c.path, limit))
        if doc is None:
            raise Skip("no_docstrings")
        return [{"text": doc, "path": c.label, "kind": c.kind}]

    def metadata_row(c):
        return [{"text": _metadata_description(_read_text(c.path, limit)), "path": c.label, "kind": c.kind}]

    def topic_row(c):
        text = topics[c.label.rsplit("#", 1)[1]]
        if not text.strip():
            raise Skip("empty")
        return [{"text": text, "path": c.label, "kind": c.kind}]

    def instruct_rows(c):
        rows = mine_pairs(_read_text(c.path, limit), c.label)
        if not rows:
            raise Skip("no_pairs")
        return rows

    loaders = {kind: file_row for kind in ("c_cpp", "cuda", "python", "shell", "other", "stdlib", "package_doc",
                                           "package_license", "system_license", "debian_copyright")}
    loaders.update(docstrings=docstrings_row, package_metadata=metadata_row, pydoc_topics=topic_row,
                   stdlib_functions=instruct_rows)
    return loaders


# ----------------------------------------------------------------------------------------------
# Selection, split, shards
# ----------------------------------------------------------------------------------------------

def _hash_int(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\x00".join(parts).encode()).digest()[:8], "big")


def is_val_label(label: str, val_per_mille: int) -> bool:
    """The split is a pure function of the path label, shared by every source."""
    return _hash_int("split", label) % 1000 < val_per_mille


def _row_bytes(row: dict) -> int:
    if "text" in row:
        return len(row["text"].encode("utf-8"))
    return sum(len(m["content"].encode("utf-8")) for m in row["messages"])


def _row_key(row: dict) -> str:
    """Exact-dedup key: the text (instruct: the answer, so one function is one pair)."""
    text = row["text"] if "text" in row else row["messages"][-1]["content"]
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def select_source(buckets: dict[str, list[Candidate]], loaders, cap: int, seen: set, skipped: dict,
                  near: NearDuplicateIndex | None = None) -> list[dict]:
    """Take candidates until `cap` bytes, always from the bucket with the fewest bytes taken so far
    (so languages / kinds stay balanced until the small ones run out), each bucket in hash order. With `near`,
    generated files and near-duplicates of a file taken before are skipped (counted as such)."""
    order = sorted(buckets)
    queues = {k: iter(sorted(buckets[k], key=lambda c: (_hash_int("order", c.label), c.label))) for k in order}
    taken = {k: 0 for k in order}
    rows, total = [], 0
    while total < cap and queues:
        kind = min(queues, key=lambda k: (taken[k], order.index(k)))
        cand = next(queues[kind], None)
        if cand is None:
            del queues[kind]
            continue
        try:
            new_rows = loaders[kind](cand)
        except Skip as why:
            skipped[str(why)] = skipped.get(str(why), 0) + 1
            continue
        for row in new_rows:
            key = _row_key(row)
            if key in seen:
                skipped["duplicate"] = skipped.get("duplicate", 0) + 1
                continue
            if near is not None:
                if looks_generated(row["text"]):
                    skipped["generated"] = skipped.get("generated", 0) + 1
                    continue
                if not near.add(row["text"]):
                    skipped["near_duplicate"] = skipped.get("near_duplicate", 0) + 1
                    continue
            seen.add(key)
            rows.append(row)
            size = _row_bytes(row)
            taken[kind] += size
            total += size
    return rows


def split_rows(rows: list[dict], val_per_mille: int) -> tuple[list[dict], list[dict]]:
    def label(r):
        return r.get("path") or r["source_path"]

    val_labels = {label(r) for r in rows if is_val_label(label(r), val_per_mille)}
    labels = sorted({label(r) for r in rows}, key=lambda s: (_hash_int("split", s), s))
    # Tiny sources: make sure both splits exist (the lowest-hash label goes to val, the highest to train).
    if not val_labels and len(labels) > 1:
        val_labels = {labels[0]}
    if val_labels == set(labels) and len(labels) > 1:
        val_labels.discard(labels[-1])
    train = [r for r in rows if label(r) not in val_labels]
    val = [r for r in rows if label(r) in val_labels]
    return train, val


def pieces_of(rows: list[dict], max_chars: int) -> list[dict]:
    """Each text row cut into pieces (data.pieces); a piece's path is its file's label + "#<piece number>"."""
    return [{"text": piece, "path": f"{r['path']}#{i}", "kind": r["kind"]}
            for r in rows for i, piece in enumerate(split_into_pieces(r["text"], max_chars))]


INFILLING_SOURCE = "infilling"
INFILLING_DESCRIPTION = (
    "The held-out infilling set: pieces of the validation files of `code` and `python` (so C/C++, CUDA, shell and "
    "package Python next to standard-library Python) with at least 3 non-blank lines, none a near-duplicate of "
    "any training piece of either source, in a fixed hash order. codellama-ablate and the per-stage evaluation "
    "(corpus_infilling) fill their middles and lines.")


def infilling_heldout(pieces: dict[tuple[str, str], list[dict]], cfg: CorpusConfig) -> tuple[list[dict], dict]:
    """The held-out infilling set (INFILLING_DESCRIPTION) and why other validation pieces were left out."""
    train_index = NearDuplicateIndex(cfg.near_dup_threshold)
    for source in DEDUPLICATED_SOURCES:
        for row in pieces.get((source, "train"), ()):
            train_index.add(row["text"])
    kept, skipped = [], collections.Counter()
    for source in DEDUPLICATED_SOURCES:
        for row in pieces.get((source, "val"), ()):
            if sum(1 for line in row["text"].splitlines() if line.strip()) < 3:
                skipped["short"] += 1
            elif train_index.match(row["text"])[0] is not None:
                skipped["near_duplicate_of_train"] += 1
            else:
                kept.append({"text": row["text"], "path": f"{source}/{row['path']}", "kind": row["kind"]})
    kept.sort(key=lambda r: (_hash_int("infilling", r["path"]), r["path"]))
    return kept, dict(sorted(skipped.items()))


def write_shards(rows: list[dict], out_dir: pathlib.Path, split: str, n_shards: int) -> list[dict]:
    """Greedy by bytes (each document to the currently smallest shard), so shards are balanced."""
    n = max(1, min(n_shards, len(rows)))
    shards: list[list[dict]] = [[] for _ in range(n)]
    sizes = [0] * n
    for row in rows:
        i = min(range(n), key=lambda j: (sizes[j], j))
        shards[i].append(row)
        sizes[i] += _row_bytes(row)
    info = []
    for i, shard in enumerate(shards):
        path = out_dir / f"{split}-{i:05d}.jsonl"
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in shard).encode("utf-8")
        write_bytes_atomic(path, data)
        info.append({"file": path.name, "docs": len(shard), "bytes": sizes[i],
                     "sha256": hashlib.sha256(data).hexdigest()})
    return info


SOURCE_DESCRIPTIONS = {
    "code": "Source code shipped with this Python installation and its installed packages: C/C++ sources and "
            "headers (CPython's include dir, package headers such as torch's and numpy's), CUDA (.cu/.cuh), "
            "Python of installed packages (.py/.pyi/.pyx/.pxd), shell scripts (the environment's bin/ and, when "
            "present, /usr/bin, /usr/sbin and bash completions), and other languages found in "
            "packages (Fortran, protobuf, CMake, JavaScript, ...). Not the standard library (see `python`).",
    "python": "The Python standard library of the running interpreter (.py files; test suites excluded).",
    "nl_code": "Natural language about code: Python's documentation topics (pydoc_data.topics), module/class/"
               "function docstrings extracted with ast (standard library and installed packages), package "
               "READMEs, changelogs, .md/.rst docs and METADATA long descriptions.",
    "nl": "General English prose, as far as this machine has any: licence and copyright texts (installed "
          "packages' licence files, Python's LICENSE.txt, and when present /usr/share/common-licenses/* and "
          "/usr/share/doc/*/copyright). Legal English, not web text: a stand-in for the paper's general NL.",
    "instruct": "Docstring -> function chat pairs mined with ast from the standard library: user = '"
                + USER_TEMPLATE + "', assistant = the function's exact source. Split by module, the same "
                "modules as `python` and `nl_code` validation.",
}


def build_corpus(out_dir, cfg: CorpusConfig | None = None, roots: dict | None = None, log=print) -> dict:
    """Build the corpus into `out_dir` (written in a temp sibling, then renamed into place). Returns
    the manifest. Refuses to replace a non-empty directory that is not a corpus."""
    cfg = (cfg or CorpusConfig()).validate()
    out_dir = pathlib.Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "manifest.json").is_file():
        raise ValueError(f"corpus output {str(out_dir)!r} exists and is not a corpus (no manifest.json); "
                         "give a new or empty directory")
    start = time.perf_counter()
    explicit_roots = roots is not None
    roots = roots if explicit_roots else python_roots()
    pinned = cfg.distributions is not None and not explicit_roots
    allowed = distribution_files(cfg.distributions) if pinned else None
    if allowed is not None:
        roots = {k: v for k, v in roots.items() if k in ("stdlib", "include") or allowed.get(k)}
    buckets = discover(roots, cfg.include_system_dirs, allowed)
    loaders = make_loaders(cfg, _pydoc_topics())
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    seen: set[str] = set()
    pieces: dict[tuple[str, str], list[dict]] = {}
    manifest = {"format_version": CORPUS_FORMAT_VERSION, "python": sys.version.split()[0],
                "roots": {k: str(v) for k, v in roots.items()} | ({"system": "/"} if cfg.include_system_dirs else {}),
                "config": dataclasses.asdict(cfg), "sources": {},
                "distributions": distribution_versions(cfg.distributions) if pinned else None}
    try:
        for source in SOURCES:
            skipped: dict[str, int] = {}
            near = (NearDuplicateIndex(cfg.near_dup_threshold)
                    if cfg.near_dedup and source in DEDUPLICATED_SOURCES else None)
            rows = select_source(buckets[source], loaders, cfg.source_bytes.get(source, DEFAULT_SOURCE_BYTES[source]),
                                 seen, skipped, near)
            if not rows:
                raise ValueError(f"corpus source {source!r} is empty on this machine (candidates per kind: "
                                 f"{ {k: len(v) for k, v in buckets[source].items()} }, skipped: {skipped})")
            train, val = split_rows(rows, cfg.val_per_mille)
            (tmp / source).mkdir()
            shards = {"train": write_shards(train, tmp / source, "train", cfg.train_shards),
                      "val": write_shards(val, tmp / source, "val", cfg.val_shards) if val else []}
            if source in DEDUPLICATED_SOURCES:
                for split, split_rows_, n in (("train", train, cfg.train_shards), ("val", val, cfg.val_shards)):
                    if split_rows_:
                        pieces[source, split] = pieces_of(split_rows_, cfg.piece_chars)
                        shards[f"{split}_pieces"] = write_shards(pieces[source, split], tmp / source,
                                                                 f"{split}_pieces", n)
            kinds: dict[str, dict[str, int]] = {}
            for r in rows:
                k = kinds.setdefault(r.get("kind", "stdlib_functions"), {"docs": 0, "bytes": 0})
                k["docs"] += 1
                k["bytes"] += _row_bytes(r)
            labels = {r.get("path") or r["source_path"] for r in rows}
            manifest["sources"][source] = {
                "description": SOURCE_DESCRIPTIONS[source],
                "files": len(labels),
                "docs": {"train": len(train), "val": len(val)},
                "bytes": {"train": sum(map(_row_bytes, train)), "val": sum(map(_row_bytes, val))},
                "kinds": kinds,
                "skipped": dict(sorted(skipped.items())),
                "shards": shards,
            }
            log(f"  {source:9s} {len(labels):6d} files {len(rows):7d} docs "
                f"{sum(map(_row_bytes, rows)) / MB:6.1f} MB (val {len(val)} docs)")
        heldout, heldout_skipped = infilling_heldout(pieces, cfg)
        (tmp / INFILLING_SOURCE).mkdir()
        manifest["infilling"] = {"description": INFILLING_DESCRIPTION, "docs": len(heldout),
                                 "kinds": dict(sorted(collections.Counter(r["kind"] for r in heldout).items())),
                                 "skipped": heldout_skipped,
                                 "shards": {"heldout": write_shards(heldout, tmp / INFILLING_SOURCE, "heldout", 1)}}
        log(f"  {INFILLING_SOURCE:9s} {len(heldout):6d} held-out pieces (skipped {heldout_skipped})")
        manifest["fingerprint"] = hashlib.sha256(json.dumps(
            {s: [sh["sha256"] for split in sorted(m["shards"]) for sh in m["shards"][split]]
             for s, m in manifest["sources"].items()} | {INFILLING_SOURCE: manifest["infilling"]["shards"]},
            sort_keys=True).encode()).hexdigest()
        write_text_atomic(tmp / "manifest.json", json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
        replace_dir_atomic(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    total = sum(m["bytes"]["train"] + m["bytes"]["val"] for m in manifest["sources"].values())
    log(f"corpus: {total / MB:.1f} MB in {time.perf_counter() - start:.1f}s -> {out_dir}")
    return manifest


def shard_files(corpus_dir, source: str, split: str) -> list[pathlib.Path]:
    """The shard paths of one source and split, as listed in the manifest."""
    corpus_dir = pathlib.Path(corpus_dir)
    manifest = json.loads((corpus_dir / "manifest.json").read_text())
    if source == INFILLING_SOURCE and "infilling" in manifest:
        return [corpus_dir / source / s["file"] for s in manifest["infilling"]["shards"][split]]
    if source not in manifest["sources"]:
        raise ValueError(f"corpus {str(corpus_dir)!r} has no source {source!r}; it has {sorted(manifest['sources'])}")
    return [corpus_dir / source / s["file"] for s in manifest["sources"][source]["shards"][split]]


def _parse_source_bytes(items: list[str]) -> dict[str, int]:
    caps = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in SOURCES:
            raise ValueError(f"--source-mb {item!r} is invalid; use SOURCE=MB with SOURCE in {SOURCES}")
        caps[name] = int(float(value) * MB)
    return caps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="codellama-corpus", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="output directory (replaced if it holds a previous corpus)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every per-source cap (e.g. 0.1, 4)")
    p.add_argument("--source-mb", nargs="*", default=[], metavar="SOURCE=MB",
                   help=f"per-source caps in MB (defaults: { {k: v // MB for k, v in DEFAULT_SOURCE_BYTES.items()} })")
    p.add_argument("--max-file-kb", type=int, default=CorpusConfig.max_file_bytes // 1000)
    p.add_argument("--val-per-mille", type=int, default=CorpusConfig.val_per_mille)
    p.add_argument("--train-shards", type=int, default=CorpusConfig.train_shards)
    p.add_argument("--val-shards", type=int, default=CorpusConfig.val_shards)
    p.add_argument("--system-dirs", action="store_true",
                   help="also /usr/share licences, /usr/bin scripts and bash completions (machine-dependent)")
    p.add_argument("--no-system-dirs", action="store_true", help="(the default) only the Python installation")
    p.add_argument("--distributions", nargs="*", default=list(CorpusConfig.distributions), metavar="NAME",
                   help="installed packages whose files are read (default: torch); --all-packages reads every one")
    p.add_argument("--keep-duplicates", action="store_true",
                   help="keep generated files and near-duplicates in code and python (the default skips them)")
    p.add_argument("--all-packages", action="store_true",
                   help="every package in site-packages and the environment's scripts (machine-dependent)")
    args = p.parse_args(argv)
    try:
        caps = dict(DEFAULT_SOURCE_BYTES)
        caps.update(_parse_source_bytes(args.source_mb))
        cfg = CorpusConfig(source_bytes=caps, max_file_bytes=args.max_file_kb * 1000,
                           val_per_mille=args.val_per_mille, train_shards=args.train_shards,
                           val_shards=args.val_shards, include_system_dirs=args.system_dirs and not args.no_system_dirs,
                           distributions=None if args.all_packages else tuple(args.distributions),
                           near_dedup=not args.keep_duplicates)
        if args.scale != 1.0:
            cfg = cfg.scaled(args.scale)
        build_corpus(args.out, cfg)
    except ValueError as exc:
        print(f"codellama-corpus: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
