"""Reading documents from configured sources, sharded over (rank, worker) streams, with exact positions.

A source is local files (globs of .jsonl / .jsonl.gz / .parquet / plain text) or a hub dataset id: its
configuration is checked by core/schema.py::SourceConfig.validate, its shards are listed in source_files.py,
and one shard is read from a position by record_readers.py. Hub ids go through
`datasets.load_dataset(..., streaming=True)`, one datasets shard at a time, and resume with that shard's
`state_dict()`. No shuffle buffer anywhere: its content is not part of any saved state.

Sharding: with S = world_size * num_workers logical streams, stream s reads, in epoch e,
- files perm_e[s::S] when the source has at least S files (perm_e: a permutation seeded by
  (seed, source, e), so every epoch reshuffles the file order), or
- every file in perm_e order but only the records whose index within the epoch is s mod S.
Either way every record is read by exactly one stream per epoch. Each document carries a key
(epoch, file index in the sorted file list, record index in the file) that does not depend on S:
the FIM decisions are a pure function of (seed, source, key).
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import Iterator, Mapping

import numpy as np

from codellama_recipe.core.errors import InputError
from codellama_recipe.data.record_readers import (BadInputError, Document, SkipRecord, iter_hub_shard, iter_jsonl,
                                                  iter_jsonl_gz, iter_parquet, iter_text_file,
                                                  row_to_document_fields)
from codellama_recipe.core.schema import SourceConfig
from codellama_recipe.data.source_files import Location, detect_file_format


def stable_seed(*parts) -> int:
    """A 64-bit integer that is a pure function of `parts` (no Python hash randomisation)."""
    digest = hashlib.blake2b(repr(parts).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little")



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

    def __init__(self, spec: SourceConfig, location: Location, *, seed: int, stream: int, num_streams: int,
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
            raise InputError(location.hub_key, spec.name, "has no shards")

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
            return iter_hub_shard(self.location, index, st["hub"])
        path = self.location.files[index]
        fmt = detect_file_format(path, self.spec.file_format)
        if fmt == "jsonl":
            return iter_jsonl(path, st["record"], st["offset"], self.max_doc_chars)
        if fmt == "jsonl.gz":
            return iter_jsonl_gz(path, st["record"], None, self.max_doc_chars)
        if fmt == "parquet":
            return iter_parquet(path, st["record"], None, self._columns)
        return iter_text_file(path, st["record"], None, self.max_doc_chars)

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
