"""Where a source's records are: the ordered list of "shards" (files, or datasets shards) of one source split,
their format, and a look at their first records to tell an unknown field from a few bad rows."""
from __future__ import annotations

import glob
import gzip
import zlib
import hashlib
import json
import os

from codellama_recipe.core.errors import InputError
from codellama_recipe.data.record_readers import bounded_lines
from codellama_recipe.core.schema import SourceConfig

TEXT_EXTENSIONS_JSONL = (".jsonl", ".json", ".ndjson")
PEEK_RECORDS = 200          # records looked at, at start-up, to tell an unknown field from a few bad rows


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
            raise InputError(key, pattern, "matches no file; point it at existing files (globs allowed), "
                                            "or build the embedded corpus with `codellama-corpus`")
        files.extend(matched)
    return sorted(set(os.path.abspath(f) for f in files))


class Location:
    """The shards of one source split, in a fixed (sorted) order, plus how to read each one."""

    def __init__(self, spec: SourceConfig, split: str = "train"):
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
                raise InputError(self.hub_key, dict(h), f"datasets could not open it: {exc}") from None
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
                    raise InputError(f"{self.fields_key}.format", "chat", f"{path} is a plain text file; chat sources need jsonl/parquet rows")
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
                    raise InputError(self.paths_key, path, f"no readable parquet file among {len(self.files)} "
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
            raise InputError(f"{self.fields_key}.{field_key}", missing[0], f"no such field in {where} (fields seen: {sorted(seen)})")


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
