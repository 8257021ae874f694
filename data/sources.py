"""Reading documents from configured sources, sharded over (rank, worker) streams, with exact positions.

A source is local files (globs of .jsonl / .jsonl.gz / .parquet / plain text) or a hub dataset id.

Why local files are read by our own reader and not by `datasets`: its JSON builder parses a file in
chunks and a single malformed line aborts the whole chunk (or the run), which breaks the rule that
bad input is skipped and counted per record. Our reader also gives positions that resume in O(1)
(a byte offset into a .jsonl shard; a row index into a parquet row group; a line count in a .gz
shard, which is re-decompressed from the start of that one shard). Hub ids go through
`datasets.load_dataset(..., streaming=True)`, one datasets shard at a time, and resume with that
shard's `state_dict()`. No shuffle buffer anywhere: its content is not part of any saved state.

Sharding: with S = world_size * num_workers logical streams, stream s reads, in epoch e,
- files perm_e[s::S] when the source has at least S files (perm_e: a permutation seeded by
  (seed, source, e), so every epoch reshuffles the file order), or
- every file in perm_e order but only the records whose index within the epoch is s mod S.
Either way every record is read by exactly one stream per epoch. Each document carries a key
(epoch, file index in the sorted file list, record index in the file) that does not depend on S:
the FIM decisions are a pure function of (seed, source, key).
"""
from __future__ import annotations

import dataclasses
import glob
import gzip
import zlib
import hashlib
import json
import os
from collections import Counter
from typing import Any, Iterator, Mapping

import numpy as np

from codellama_recipe.core.config import typed
from codellama_recipe.core.errors import ConfigError
from codellama_recipe.core.schema import SourceConfig

SKIP_REASONS = (
    "malformed_json",   # a line that is not a JSON object
    "missing_field",    # the text / messages / filter field is absent or not of the expected type
    "invalid_utf8",     # bytes that are not UTF-8
    "empty",            # nothing but whitespace (blank lines included)
    "too_long",         # more than max_doc_chars characters
    "binary",           # NUL bytes (binary files, or "\u0000" inside a JSON string)
    "bad_chat",         # messages that are not user/assistant turns (optionally after one system turn)
    "unreadable_file",  # a file that cannot be read at all (corrupt .gz / parquet); the rest of it is skipped
    "invalid_text",     # a string that is not valid Unicode text (lone surrogates such as "\ud800")
    "tokenize_error",   # the tokenizer failed on the record
    "bad_record",       # any other error while reading or decoding one record
)
LINE_BYTES_PER_CHAR = 6     # the longest JSON escape of one character (\uXXXX): a line longer than
LINE_OVERHEAD_BYTES = 4096  # max_doc_chars * 6 + this cannot hold a document that fits, and is never held whole

TEXT_EXTENSIONS_JSONL = (".jsonl", ".json", ".ndjson")
HUB_KEYS = {"path", "name", "split", "data_files", "data_dir", "revision"}
FILE_FORMATS = ("auto", "jsonl", "jsonl.gz", "parquet", "text")
PEEK_RECORDS = 200          # records looked at, at start-up, to tell an unknown field from a few bad rows
HUB_BATCH = 256             # rows fetched per datasets batch


class BadInputError(ValueError):
    """Raised in strict mode for the first bad record, naming the file and line (or row)."""

    def one_line(self) -> str:
        """The message without what a DataLoader worker wraps around it (torch re-raises a worker's exception
        with the worker's traceback as its text)."""
        lines = [line for line in str(self).splitlines() if line.strip()]
        for line in reversed(lines):
            if "BadInputError: " in line:
                return line.split("BadInputError: ", 1)[1]
        return lines[0] if lines else "bad input"


def stable_seed(*parts) -> int:
    """A 64-bit integer that is a pure function of `parts` (no Python hash randomisation)."""
    digest = hashlib.blake2b(repr(parts).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RecordFilter:
    """Keep a record when record[field] is one of `values`, or (for paths) ends with one of `extensions`."""
    field: str
    values: tuple | None = None
    extensions: tuple | None = None

    def keeps(self, value) -> bool:
        if self.values is not None and value not in self.values:
            return False
        if self.extensions is not None and not str(value).lower().endswith(self.extensions):
            return False
        return True


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    name: str
    weight: float
    paths: tuple[str, ...] = ()
    hub: Mapping | None = None
    text_field: str = "text"
    format: str = "text"                    # text | chat
    messages_field: str = "messages"        # chat rows: [{role, content}, ...] ...
    prompt_field: str | None = None         # ... or one instruction / answer pair per row
    response_field: str | None = None
    input_field: str | None = None          # optional extra input appended to the prompt
    system_field: str | None = None
    system_prompt: str | None = None        # default system prompt for chat rows without one
    filters: tuple[RecordFilter, ...] = ()
    val_paths: tuple[str, ...] = ()
    val_hub: Mapping | None = None
    file_format: str = "auto"
    fim: bool = True                        # False: never FIM-transform this source's documents

    @property
    def is_chat(self) -> bool:
        return self.format == "chat"

    def field_keys(self) -> dict[str, str]:
        """{field a row must have: the config key that names it} (parquet columns, start-up checks)."""
        if self.is_chat:
            keys = ["prompt_field", "response_field", "input_field", "system_field"] if self.prompt_field \
                else ["messages_field", "system_field"]
        else:
            keys = ["text_field"]
        fields = {getattr(self, k): k for k in keys if getattr(self, k)}
        for f in self.filters:
            fields.setdefault(f.field, "filters")
        return fields

    def needed_fields(self) -> list[str]:
        return list(self.field_keys())

    def describe(self) -> dict:
        """JSON-able description (fingerprints)."""
        d = dataclasses.asdict(self)
        d["filters"] = [dataclasses.asdict(f) for f in self.filters]
        d["hub"] = dict(self.hub) if self.hub else None
        d["val_hub"] = dict(self.val_hub) if self.val_hub else None
        return json.loads(json.dumps(d, default=list))


def _str_tuple(value, key) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(key, value, "expected a path (glob) or a list of paths")
    return tuple(value)


def _hub(value, key) -> Mapping | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = {"path": value}
    if not isinstance(value, Mapping) or "path" not in value:
        raise ConfigError(key, value, "expected a dataset id or {path, name, split, data_files, data_dir, revision}")
    unknown = set(value) - HUB_KEYS
    if unknown:
        raise ConfigError(key, value, f"unknown key(s) {sorted(unknown)}; allowed: {sorted(HUB_KEYS)}")
    return dict(value)


def _filters(value, key) -> tuple[RecordFilter, ...]:
    if value is None:
        return ()
    if isinstance(value, Mapping):
        value = [value]
    out = []
    for i, f in enumerate(value):
        k = f"{key}[{i}]"
        if not isinstance(f, Mapping) or "field" not in f or set(f) - {"field", "values", "extensions"}:
            raise ConfigError(k, f, "a filter is {field: NAME, values: [...]} or {field: NAME, extensions: [.py, ...]}")
        if f.get("values") is None and f.get("extensions") is None:
            raise ConfigError(k, f, "give `values` or `extensions`")
        exts = None
        if f.get("extensions") is not None:
            exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in _str_tuple(f["extensions"], k))
        vals = tuple(f["values"]) if f.get("values") is not None else None
        out.append(RecordFilter(str(f["field"]), vals, exts))
    return tuple(out)


def parse_sources(sources) -> list[SourceSpec]:
    """`data.sources` ({name: SourceConfig or a mapping of its keys}) -> specs of the sources with weight > 0,
    in config order. Types are the schema's (core/schema.py); the rules between values are checked here."""
    if not isinstance(sources, Mapping) or not sources:
        raise ConfigError("data.sources", sources, "expected a non-empty mapping {name: {weight, paths|hub, ...}}")
    specs = []
    for name, source in sources.items():
        key = f"data.sources.{name}"
        cfg = typed(SourceConfig, source, key)
        if not cfg.weight >= 0:
            raise ConfigError(f"{key}.weight", cfg.weight, "expected a number >= 0 (0 disables the source)")
        if cfg.weight == 0:
            continue
        paths, hub = _str_tuple(cfg.paths, f"{key}.paths"), _hub(cfg.hub, f"{key}.hub")
        if bool(paths) == bool(hub):
            raise ConfigError(key, {"paths": list(paths), "hub": hub}, "give exactly one of `paths` (local globs) or `hub`")
        if cfg.format not in ("text", "chat"):
            raise ConfigError(f"{key}.format", cfg.format, "allowed: text, chat")
        if cfg.file_format not in FILE_FORMATS:
            raise ConfigError(f"{key}.file_format", cfg.file_format, f"allowed: {', '.join(FILE_FORMATS)}")
        if bool(cfg.prompt_field) != bool(cfg.response_field):
            raise ConfigError(key, {"prompt_field": cfg.prompt_field, "response_field": cfg.response_field},
                              "prompt_field and response_field go together")
        specs.append(SourceSpec(
            name=str(name), weight=float(cfg.weight), paths=paths, hub=hub, text_field=cfg.text_field,
            format=cfg.format, messages_field=cfg.messages_field, prompt_field=cfg.prompt_field,
            response_field=cfg.response_field, input_field=cfg.input_field, system_field=cfg.system_field,
            system_prompt=cfg.system_prompt, filters=_filters(cfg.filters, f"{key}.filters"),
            val_paths=_str_tuple(cfg.val_paths, f"{key}.val_paths"), val_hub=_hub(cfg.val_hub, f"{key}.val_hub"),
            file_format=cfg.file_format, fim=cfg.fim,
        ))
    if not specs:
        raise ConfigError("data.sources", list(sources), "every source has weight 0; enable at least one")
    return specs


# ----------------------------------------------------------------------------------------------
# Locations: the ordered list of "shards" (files, or datasets shards) of one source split
# ----------------------------------------------------------------------------------------------

def detect_file_format(path: str, configured: str = "auto") -> str:
    if configured != "auto":
        return configured
    low = path.lower()
    if low.endswith(tuple(e + ".gz" for e in TEXT_EXTENSIONS_JSONL)):
        return "jsonl.gz"
    if low.endswith(TEXT_EXTENSIONS_JSONL):
        return "jsonl"
    if low.endswith(".parquet"):
        return "parquet"
    return "text"


def resolve_globs(patterns: tuple[str, ...], key: str) -> list[str]:
    """Sorted, de-duplicated files matching the globs; ConfigError naming the first pattern that matches nothing."""
    files = []
    for pattern in patterns:
        expanded = os.path.expandvars(os.path.expanduser(pattern))
        matched = sorted(p for p in glob.glob(expanded, recursive=True) if os.path.isfile(p))
        if not matched:
            raise ConfigError(key, pattern, "matches no file; point it at existing files (globs allowed), "
                                            "or build the embedded corpus with `codellama-corpus`")
        files.extend(matched)
    return sorted(set(os.path.abspath(f) for f in files))


class Location:
    """The shards of one source split, in a fixed (sorted) order, plus how to read each one."""

    def __init__(self, spec: SourceSpec, split: str = "train"):
        """split "train" reads spec.paths / spec.hub, "val" reads spec.val_paths / spec.val_hub."""
        self.spec, self.split = spec, split
        base = f"data.sources.{spec.name}"
        paths, hub = (spec.paths, spec.hub) if split == "train" else (spec.val_paths, spec.val_hub)
        self.paths_key = f"{base}.{'paths' if split == 'train' else 'val_paths'}"
        self.hub_key = f"{base}.{'hub' if split == 'train' else 'val_hub'}"
        self.fields_key = base
        self.hub = hub
        self._hub_dataset = None
        if hub:
            self.files: list[str] = []
            self.num_shards = self._dataset().num_shards
        else:
            self.files = resolve_globs(paths, self.paths_key)
            self.num_shards = len(self.files)

    # -- hub ---------------------------------------------------------------------------------
    def _dataset(self):
        if self._hub_dataset is None:
            import datasets  # imported lazily: it is slow to import and only hub sources need it

            h = self.hub
            try:
                self._hub_dataset = datasets.load_dataset(
                    h["path"], h.get("name"), split=h.get("split", "train"), data_files=h.get("data_files"),
                    data_dir=h.get("data_dir"), revision=h.get("revision"), streaming=True)
            except Exception as exc:
                raise ConfigError(self.hub_key, dict(h), f"datasets could not open it: {exc}") from None
        return self._hub_dataset

    def __getstate__(self):  # the datasets object is re-created in worker processes
        d = dict(self.__dict__)
        d["_hub_dataset"] = None
        return d

    def hub_shard(self, index: int):
        return self._dataset().shard(num_shards=self.num_shards, index=index, contiguous=True)

    def shard_name(self, index: int) -> str:
        if self.hub:
            return f"{self.hub['path']}[shard {index}]"
        return self.files[index]

    def identity(self) -> dict:
        """Fingerprint of what is read: file names relative to their common folder, and sizes."""
        if self.hub:
            return {"hub": dict(self.hub), "num_shards": self.num_shards}
        root = os.path.commonpath(self.files) if len(self.files) > 1 else os.path.dirname(self.files[0])
        h = hashlib.sha256()
        for f in self.files:
            h.update(f"{os.path.relpath(f, root)}\0{os.path.getsize(f)}\0".encode())
        return {"num_files": len(self.files), "files_sha256": h.hexdigest()[:16]}

    # -- start-up checks ----------------------------------------------------------------------
    def check_fields(self) -> None:
        """ConfigError when a configured field exists in none of the first records (an unknown field,
        not a few bad rows). Plain text files have no fields besides text and path."""
        needed = [f for f, k in self.spec.field_keys().items() if k not in ("input_field", "system_field")]
        if self.hub:
            columns = self._dataset().column_names
            if columns is None:
                return
            seen = set(columns)
        else:
            path = self.files[0]
            fmt = detect_file_format(path, self.spec.file_format)
            if fmt == "text":
                seen = {"text", "path"}
                needed = [f.field for f in self.spec.filters]
                if self.spec.is_chat:
                    raise ConfigError(f"{self.fields_key}.format", "chat", f"{path} is a plain text file; chat sources need jsonl/parquet rows")
            elif fmt == "parquet":
                import pyarrow.parquet as pq

                seen, errors = None, []
                for candidate in self.files:   # a corrupt file is skipped while reading, wherever it sorts
                    try:
                        seen = set(pq.ParquetFile(candidate).schema_arrow.names)
                        break
                    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types on corrupt files
                        errors.append(f"{candidate}: {exc}")
                if seen is None:
                    raise ConfigError(self.paths_key, path, f"no readable parquet file among {len(self.files)} "
                                                            f"({errors[0][:200]})")
            else:
                seen = set()
                for raw in _peek_lines(path, fmt, PEEK_RECORDS):
                    try:
                        row = json.loads(raw)
                    except (ValueError, UnicodeDecodeError, RecursionError):
                        continue
                    if isinstance(row, dict):
                        seen.update(row)
                if not seen:
                    return  # nothing parseable to judge by: bad records are counted while reading
        missing = [f for f in needed if f not in seen]
        if missing:
            field_key = self.spec.field_keys().get(missing[0], "filters")
            where = self.shard_name(0) if not self.hub else self.hub["path"]
            raise ConfigError(f"{self.fields_key}.{field_key}", missing[0], f"no such field in {where} (fields seen: {sorted(seen)})")


def _peek_lines(path: str, fmt: str, n: int, limit: int = 1 << 22) -> list[bytes]:
    opener = gzip.open if fmt == "jsonl.gz" else open
    out = []
    try:
        with opener(path, "rb") as f:
            for line, _ in bounded_lines(f, limit):
                if isinstance(line, bytes) and line.strip():
                    out.append(line)
                if len(out) >= n:
                    break
    except (OSError, EOFError, zlib.error):
        pass
    return out


# ----------------------------------------------------------------------------------------------
# Documents
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Document:
    text: str | None                 # plain documents
    messages: list | None            # chat documents: [{role, content}, ...] (system first if any)
    key: tuple                       # (epoch, shard index, record index in shard): FIM randomness
    where: str                       # "file:line" for messages


class SkipRecord(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def _check_text(text: str, max_chars: int) -> str:
    if "\x00" in text:
        raise SkipRecord("binary", "NUL byte in the text")
    if not text.strip():
        raise SkipRecord("empty")
    if len(text) > max_chars:
        raise SkipRecord("too_long", f"{len(text)} characters > max_doc_chars={max_chars}")
    if not text.isascii():   # only non-ASCII text can hold lone surrogates, which JSON carries and no tokenizer reads
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise SkipRecord("invalid_text", f"{exc.reason} at character {exc.start}") from None
    return text


def row_to_document_fields(spec: SourceSpec, row: Mapping, max_chars: int) -> tuple[str | None, list | None]:
    """Validate one row (a dict) -> (text, None) or (None, messages). Raises SkipRecord."""
    if spec.is_chat:
        return None, _row_messages(spec, row, max_chars)
    text = row.get(spec.text_field)
    if not isinstance(text, str):
        raise SkipRecord("missing_field", f"no string field {spec.text_field!r}")
    return _check_text(text, max_chars), None


def _row_messages(spec: SourceSpec, row: Mapping, max_chars: int) -> list:
    if spec.prompt_field:
        prompt, answer = row.get(spec.prompt_field), row.get(spec.response_field)
        if not isinstance(prompt, str) or not isinstance(answer, str):
            raise SkipRecord("missing_field", f"no string fields {spec.prompt_field!r} / {spec.response_field!r}")
        extra = row.get(spec.input_field) if spec.input_field else None
        if isinstance(extra, str) and extra.strip():
            prompt = f"{prompt}\n\n{extra}"
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    else:
        messages = row.get(spec.messages_field)
        if not isinstance(messages, list):
            raise SkipRecord("missing_field", f"no list field {spec.messages_field!r}")
        messages = list(messages)
    system = row.get(spec.system_field) if spec.system_field else None
    if not (isinstance(system, str) and system.strip()):
        system = spec.system_prompt
    if system and not (messages and isinstance(messages[0], Mapping) and messages[0].get("role") == "system"):
        messages = [{"role": "system", "content": system}] + messages
    clean = []
    for m in messages:
        if not isinstance(m, Mapping) or not isinstance(m.get("content"), str) or m.get("role") not in ("system", "user", "assistant"):
            raise SkipRecord("bad_chat", "a message is not {role: system|user|assistant, content: str}")
        clean.append({"role": m["role"], "content": m["content"]})
    total = "".join(m["content"] for m in clean)
    _check_text(total, max_chars)
    turns = clean[1:] if clean and clean[0]["role"] == "system" else clean
    roles = [m["role"] for m in turns]
    if not roles or len(roles) % 2 or roles != ["user", "assistant"] * (len(roles) // 2):
        raise SkipRecord("bad_chat", f"roles {roles} are not alternating user/assistant turns ending with an answer")
    return clean


# ----------------------------------------------------------------------------------------------
# Raw record iterators over one shard, from a position
# ----------------------------------------------------------------------------------------------
# Each yields (record_index_in_shard, payload, byte_offset_after) where payload is bytes (a jsonl
# line, or a whole text file) or a dict (parquet / hub row) and byte_offset_after is None except
# for plain .jsonl. They raise SkipRecord("unreadable_file") when the shard breaks mid-way.

def line_limit(max_chars: int) -> int:
    return LINE_BYTES_PER_CHAR * max_chars + LINE_OVERHEAD_BYTES


def bounded_lines(f, limit: int):
    """(line, bytes consumed) per line of a binary file; a line longer than `limit` bytes is read through in 1 MiB
    pieces, never held whole, and comes as (SkipRecord("too_long"), bytes consumed)."""
    while True:
        line = f.readline(limit + 1)
        if not line:
            return
        if len(line) <= limit or line.endswith(b"\n"):
            yield line, len(line)
            continue
        consumed = len(line)
        while not line.endswith(b"\n"):
            line = f.readline(1 << 20)
            if not line:
                break
            consumed += len(line)
        yield SkipRecord("too_long", f"a line of {consumed:,} bytes > {limit:,} (max_doc_chars x "
                                     f"{LINE_BYTES_PER_CHAR} + {LINE_OVERHEAD_BYTES})"), consumed


def _iter_jsonl(path: str, start_record: int, start_offset: int, max_chars: int):
    with open(path, "rb") as f:
        f.seek(start_offset)
        record, offset = start_record, start_offset
        for line, size in bounded_lines(f, line_limit(max_chars)):
            offset += size
            yield record, line, offset
            record += 1


def _iter_jsonl_gz(path: str, start_record: int, _offset, max_chars: int):
    try:
        with gzip.open(path, "rb") as f:
            record = 0
            # a .gz shard is re-decompressed from its start on resume (bounded by one shard)
            for line, _ in bounded_lines(f, line_limit(max_chars)):
                if record >= start_record:
                    yield record, line, None
                record += 1
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise SkipRecord("unreadable_file", f"gzip: {exc}") from None


def _iter_text_file(path: str, start_record: int, _offset, max_chars: int):
    if start_record > 0:
        return
    try:
        if os.path.getsize(path) > 4 * max_chars:  # UTF-8 has <= 4 bytes per character
            yield 0, SkipRecord("too_long", f"{os.path.getsize(path)} bytes > 4 * max_doc_chars"), None
            return
        opener = gzip.open if path.lower().endswith(".gz") else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise SkipRecord("unreadable_file", str(exc)) from None
    yield 0, data, None


def _iter_parquet(path: str, start_record: int, _offset, columns: list[str]):
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        available = set(pf.schema_arrow.names)
        cols = [c for c in columns if c in available]
        first = 0
        for g in range(pf.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if first + n <= start_record:
                first += n
                continue
            table = pf.read_row_group(g, columns=cols)
            data = {c: table.column(c).to_pylist() for c in cols}
            for i in range(max(0, start_record - first), n):
                yield first + i, {c: data[c][i] for c in cols}, None
            first += n
    except SkipRecord:
        raise
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError on corrupt files
        raise SkipRecord("unreadable_file", f"parquet: {exc}") from None


def _iter_hub_shard(location: Location, index: int, position: dict | None):
    """Rows of one datasets shard. Position = datasets state before the current batch + rows of it done.

    `.iter(batch_size=...)` is used rather than `iter(ds)`: inside a torch DataLoader worker the latter
    splits the shard again by torch worker id (datasets' own worker sharding), which we do ourselves."""
    ds = location.hub_shard(index)
    position = position or {"state": None, "in_batch": 0, "record": 0}
    if position["state"] is not None:
        ds.load_state_dict(position["state"])
    record, skip, state_before = position["record"] - position["in_batch"], position["in_batch"], position["state"]
    try:
        for batch in ds.iter(batch_size=HUB_BATCH):
            columns = list(batch)
            n = len(batch[columns[0]]) if columns else 0
            for i in range(skip, n):
                yield record + i, {c: batch[c][i] for c in columns}, {"state": state_before, "in_batch": i + 1, "record": record + i + 1}
            record += n
            skip = 0
            state_before = ds.state_dict()
    except SkipRecord:
        raise
    except Exception as exc:
        raise SkipRecord("unreadable_file", f"datasets: {exc}") from None


# ----------------------------------------------------------------------------------------------
# One source as seen by one logical stream
# ----------------------------------------------------------------------------------------------

class SourceReader:
    """Documents of one source for logical stream `stream` of `num_streams`, epoch after epoch.

    State (all ints, JSON-able): epoch, cursor (index into this stream's shard list of the epoch),
    record (records of the current shard done), offset (bytes, .jsonl), hub (datasets position),
    before (records of the epoch in shards before the current one: index sharding), docs (documents
    yielded this epoch). `epochs`: stop after that many epochs (validation, benchmarks); None = forever.
    """

    def __init__(self, spec: SourceSpec, location: Location, *, seed: int, stream: int, num_streams: int,
                 max_doc_chars: int, strict: bool, counters: Counter, shuffle: bool = True,
                 epochs: int | None = None):
        self.spec, self.location = spec, location
        self.seed, self.stream, self.num_streams = seed, stream, num_streams
        self.max_doc_chars, self.strict, self.counters = max_doc_chars, strict, counters
        self.shuffle, self.epochs = shuffle, epochs
        self.by_shard = location.num_shards >= num_streams
        self.state = {"epoch": 0, "cursor": 0, "record": 0, "offset": 0, "hub": None, "before": 0, "docs": 0}
        self._it: Iterator | None = None
        self._columns = spec.needed_fields()
        if location.num_shards == 0:
            raise ConfigError(location.hub_key, spec.name, "has no shards")

    # -- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return dict(self.state)

    def load_state_dict(self, state: dict) -> None:
        self.state = dict(state)
        self._it = None

    @property
    def exhausted(self) -> bool:
        return self.epochs is not None and self.state["epoch"] >= self.epochs

    # -- shard order --------------------------------------------------------------------------
    def epoch_shards(self, epoch: int) -> list[int]:
        """Shard indices this stream reads in `epoch`, in reading order."""
        n = self.location.num_shards
        order = (np.random.default_rng(stable_seed(self.seed, "shards", self.spec.name, epoch)).permutation(n).tolist()
                 if self.shuffle else list(range(n)))
        return order[self.stream::self.num_streams] if self.by_shard else order

    # -- reading ------------------------------------------------------------------------------
    def next_document(self) -> Document | None:
        """The next valid document, or None once `epochs` epochs are done."""
        while True:
            if self.exhausted:
                return None
            if self._it is None:
                self._it = self._records()
            doc = next(self._it, None)
            if doc is not None:
                return doc
            self._it = None  # the generator advanced the epoch; go round again

    def _records(self) -> Iterator[Document]:
        st = self.state
        shards = self.epoch_shards(st["epoch"])
        while st["cursor"] < len(shards):
            index = shards[st["cursor"]]
            yield from self._shard_documents(index)
            st.update(cursor=st["cursor"] + 1, before=st["before"] + st["record"], record=0, offset=0, hub=None)
        if st["docs"] == 0:
            raise ValueError(
                f"data source {self.spec.name!r}: stream {self.stream} of {self.num_streams} got no valid document in "
                f"epoch {st['epoch']} ({self.location.num_shards} shard(s); skipped so far: {dict(self.counters)}). "
                f"Fix the data, or use fewer ranks x workers than documents.")
        st.update(epoch=st["epoch"] + 1, cursor=0, record=0, offset=0, hub=None, before=0, docs=0)

    def _raw_records(self, index: int):
        st = self.state
        if self.location.hub:
            return _iter_hub_shard(self.location, index, st["hub"])
        path = self.location.files[index]
        fmt = detect_file_format(path, self.spec.file_format)
        if fmt == "jsonl":
            return _iter_jsonl(path, st["record"], st["offset"], self.max_doc_chars)
        if fmt == "jsonl.gz":
            return _iter_jsonl_gz(path, st["record"], None, self.max_doc_chars)
        if fmt == "parquet":
            return _iter_parquet(path, st["record"], None, self._columns)
        return _iter_text_file(path, st["record"], None, self.max_doc_chars)

    def _shard_documents(self, index: int) -> Iterator[Document]:
        st = self.state
        fmt = "hub" if self.location.hub else detect_file_format(self.location.files[index], self.spec.file_format)
        raw_iter = self._raw_records(index)
        while True:
            try:
                item = next(raw_iter, None)
            except SkipRecord as skip:  # the shard broke: count once, move on to the next shard
                self._skip(skip, index, st["record"])
                return
            if item is None:
                return
            record, payload, after = item
            mine = self.by_shard or (st["before"] + record) % self.num_streams == self.stream
            # advance the position first: a document is yielded with the state *after* it
            if fmt == "hub":
                st["hub"] = after
            elif after is not None:
                st["offset"] = after
            st["record"] = record + 1
            if not mine:
                continue
            try:
                row = self._row(payload, fmt, index)
                if not self._passes_filters(row):
                    self.counters[f"filtered/{self.spec.name}"] += 1
                    continue
                text, messages = row_to_document_fields(self.spec, row, self.max_doc_chars)
            except SkipRecord as skip:
                self._skip(skip, index, record)
                continue
            except Exception as exc:  # noqa: BLE001 - one record never stops a run: skipped and counted
                self._skip(SkipRecord("bad_record", f"{type(exc).__name__}: {exc}"[:300]), index, record)
                continue
            st["docs"] += 1
            yield Document(text, messages, (st["epoch"], index, record), self._where(index, record, fmt))

    def _row(self, payload, fmt: str, index: int) -> Mapping:
        """Raw payload -> a row dict (plain text files: {text, path}). Raises SkipRecord."""
        if isinstance(payload, SkipRecord):
            raise payload
        if fmt == "text":
            if b"\x00" in payload:
                raise SkipRecord("binary", "NUL byte in the file")
            try:
                return {self.spec.text_field: payload.decode("utf-8"), "path": self.location.files[index]}
            except UnicodeDecodeError as exc:
                raise SkipRecord("invalid_utf8", str(exc)) from None
        if fmt not in ("jsonl", "jsonl.gz"):
            return payload
        if not payload.strip():
            raise SkipRecord("empty", "blank line")
        try:
            line = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SkipRecord("invalid_utf8", str(exc)) from None
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as exc:   # RecursionError: nesting deeper than Python's stack
            raise SkipRecord("malformed_json", f"{type(exc).__name__}: {exc}"[:300]) from None
        if not isinstance(row, dict):
            raise SkipRecord("malformed_json", f"a JSON {type(row).__name__}, not an object")
        return row

    def _passes_filters(self, row: Mapping) -> bool:
        for f in self.spec.filters:
            if f.field not in row:
                raise SkipRecord("missing_field", f"no field {f.field!r} for the filter")
            if not f.keeps(row[f.field]):
                return False
        return True

    def _where(self, index: int, record: int, fmt: str) -> str:
        name = self.location.shard_name(index)
        if fmt in ("jsonl", "jsonl.gz"):
            return f"{name}:{record + 1}"
        if fmt == "text":
            return name
        return f"{name} row {record}"

    def _skip(self, skip: SkipRecord, index: int, record: int) -> None:
        fmt = "hub" if self.location.hub else detect_file_format(self.location.files[index], self.spec.file_format)
        self.skip_at(self._where(index, record, fmt), skip.reason, skip.detail)

    def skip_at(self, where: str, reason: str, detail: str = "") -> None:
        """Count a bad record (strict mode: stop, naming the file and line)."""
        if self.strict:
            raise BadInputError(f"bad input ({reason}) in source {self.spec.name!r} at {where}: {detail}".rstrip(": "))
        self.counters[f"skipped/{reason}"] += 1
