"""A source's configuration, parsed: SourceConfig (the typed schema) -> SourceSpec (what the readers use),
with every mistake named by its key."""
from __future__ import annotations

import dataclasses
import json
from typing import Mapping

from codellama_recipe.core.config import typed
from codellama_recipe.core.errors import ConfigError
from codellama_recipe.core.schema import SourceConfig

HUB_KEYS = {"path", "name", "split", "data_files", "data_dir", "revision"}
FILE_FORMATS = ("auto", "jsonl", "jsonl.gz", "parquet", "text")


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
