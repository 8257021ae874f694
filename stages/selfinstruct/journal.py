"""Append-only step files: one JSON line per finished item, flushed and fsynced as it is written, so a killed
run keeps every item it finished and redoes none. A line cut short by the kill is dropped when the file is
reopened (the item is simply done again)."""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path


class Journal:
    def __init__(self, path: Path, key: Sequence[str]):
        self.path, self.key = Path(path), tuple(key)
        self.rows: dict[tuple, dict] = {}
        if self.path.exists():
            data = self.path.read_bytes()
            complete = data[:data.rfind(b"\n") + 1]
            if len(complete) != len(data):            # a partial last line from a kill: cut it off
                with open(self.path, "r+b") as f:
                    f.truncate(len(complete))
            for line in complete.decode("utf-8").splitlines():
                if line.strip():
                    row = json.loads(line)
                    self.rows[self._key_of(row)] = row
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")

    def _key_of(self, row: dict) -> tuple:
        return tuple(row[k] for k in self.key)

    def __contains__(self, key: tuple) -> bool:
        return key in self.rows

    def get(self, key: tuple) -> dict | None:
        return self.rows.get(key)

    def append(self, row: dict) -> None:
        self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.rows[self._key_of(row)] = row

    def close(self) -> None:
        self._file.close()
