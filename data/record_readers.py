"""Reading one shard's records from a position, and turning a record into a document or a counted skip.

Local files are read by this reader and not by `datasets`: its JSON builder parses a file in chunks and a single
malformed line aborts the whole chunk (or the run), which breaks the rule that bad input is skipped and counted
per record. These readers also give positions that resume in O(1): a byte offset into a .jsonl shard, a row index
into a parquet row group, a line count in a .gz shard (re-decompressed from the start of that one shard).
"""
from __future__ import annotations

import dataclasses
import gzip
import zlib
import os
from typing import Mapping

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


def row_to_document_fields(spec: SourceConfig, row: Mapping, max_chars: int) -> tuple[str | None, list | None]:
    """Validate one row (a dict) -> (text, None) or (None, messages). Raises SkipRecord."""
    if spec.is_chat:
        return None, _row_messages(spec, row, max_chars)
    text = row.get(spec.text_field)
    if not isinstance(text, str):
        raise SkipRecord("missing_field", f"no string field {spec.text_field!r}")
    return _check_text(text, max_chars), None


def _row_messages(spec: SourceConfig, row: Mapping, max_chars: int) -> list:
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


def iter_jsonl(path: str, start_record: int, start_offset: int, max_chars: int):
    with open(path, "rb") as f:
        f.seek(start_offset)
        record, offset = start_record, start_offset
        for line, size in bounded_lines(f, line_limit(max_chars)):
            offset += size
            yield record, line, offset
            record += 1


def iter_jsonl_gz(path: str, start_record: int, _offset, max_chars: int):
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


def iter_text_file(path: str, start_record: int, _offset, max_chars: int):
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


def iter_parquet(path: str, start_record: int, _offset, columns: list[str]):
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


def iter_hub_shard(location, index: int, position: dict | None):
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
