"""docs/reference.md, the page of every configuration key, generated from the schema (core/schema.py).

    python -m codellama_recipe.core.config_reference            # print the page
    python -m codellama_recipe.core.config_reference --write    # write docs/reference.md
    python -m codellama_recipe.core.config_reference --check    # exit 1 when docs/reference.md is stale

Per command, one row per key path: its type, the dataclass default, the value the shipped YAML composes to
when that differs (with the conf/ file that sets it) and its meaning. The meaning is the field's comment in
core/schema.py (a trailing `# …`, continued on deeper-indented comment lines below, or else the comment lines
directly above the field), read with tokenize, so the page never says something the schema does not.
A comment that starts with `a | b | c` lists the allowed values; the type column shows them.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import re
import sys
import textwrap
import tokenize
import typing
from pathlib import Path

from codellama_recipe.core import schema

REFERENCE_PATH = Path(__file__).resolve().parent.parent / "docs" / "reference.md"
REGENERATE = "python -m codellama_recipe.core.config_reference --write"

# (command, conf/<name>.yaml, root dataclass): the roots of core/schema.py's SCHEMAS, one per command.
COMMANDS = [
    ("codellama-train", "train", schema.TrainConfig),
    ("codellama-pipeline", "run_pipeline", schema.PipelineRunConfig),
    ("codellama-eval", "eval", schema.EvalConfig),
    ("codellama-ablate", "ablate", schema.AblateConfig),
    ("codellama-selfinstruct", "selfinstruct", schema.SelfInstructConfig),
    ("codellama-prepare", "prepare", schema.PrepareConfig),
]
NOTES = {
    "codellama-train": "`codellama-preview` composes the same configuration. The shipped YAML column is the "
                       "default composition (`model=tiny stage=code deepspeed=zero1`); other groups "
                       "([configuration.md](configuration.md#composing-one-stage-conftrainyaml)) change it.",
    "codellama-pipeline": "`stages.<name>` holds, per stage, `groups` and any `codellama-train` key of the "
                          "table above; they are checked against that schema when the stage is composed.",
}

# Mappings typed Dict[str, Any] whose values are checked against a dataclass by the code that reads them
# (a typed value would refuse entries added on the command line before their keys could be named).
ENTRY_SCHEMAS = {(schema.AblateConfig, "arms"): schema.AblateArm}

ALLOWED = re.compile(r"^(?:OPEN: )?([\w.-]+(?: \| [\w.-]+)+)(?=$|[\s:,;(])")
MAX_INLINE = 72


# ------------------------------------------------------------------ meanings from the source
def _comments_of(cls) -> dict[str, str]:
    """{field: meaning} for the fields that `cls` itself declares."""
    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    comments = {tok.start[0]: (tok.start[1], tok.string.lstrip("#").strip())
                for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}

    def alone(n: int):
        """The column of line n's comment when the line holds nothing else, else None."""
        if n in comments and not lines[n - 1][:comments[n][0]].strip():
            return comments[n][0]
        return None

    meanings = {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        first, last, indent = node.lineno, node.end_lineno, node.col_offset
        said = [comments[n][1] for n in range(first, last + 1) if n in comments and alone(n) is None]
        if said:
            n = last + 1
            while (alone(n) or 0) > indent:       # continued on comment lines indented deeper than the field
                said.append(comments[n][1])
                n += 1
        else:
            n = first - 1
            while alone(n) == indent:             # or said on comment lines directly above it
                said.insert(0, comments[n][1])
                n -= 1
        if said:
            meanings[node.target.id] = " ".join(said)
    return meanings


_CACHE: dict[type, dict[str, str]] = {}


def meaning(cls, name: str) -> str:
    """The comment of field `name` of dataclass `cls` (inherited fields: the declaring class's); '' if none."""
    for klass in cls.__mro__:
        if name in klass.__dict__.get("__annotations__", {}):
            if klass not in _CACHE:
                _CACHE[klass] = _comments_of(klass)
            return _CACHE[klass].get(name, "")
    return ""


def schema_dataclasses() -> list[type]:
    return [obj for obj in vars(schema).values()
            if inspect.isclass(obj) and dataclasses.is_dataclass(obj) and obj.__module__ == schema.__name__]


def fields_without_meaning() -> list[str]:
    """`Class.field` for every field of core/schema.py that has no comment."""
    return [f"{cls.__name__}.{f.name}" for cls in schema_dataclasses() for f in dataclasses.fields(cls)
            if f.name in cls.__dict__.get("__annotations__", {}) and not meaning(cls, f.name)]


# ------------------------------------------------------------------ rows
@dataclasses.dataclass
class Row:
    key: str
    type: str
    default: str
    meaning: str
    kind: str = "leaf"            # leaf | node (a dataclass) | mapping (of dataclasses) | entry (a field of one)
    value: object = None          # the dataclass default
    composed: str = ""


def _type_name(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is typing.Any:
        return "any"
    if origin is typing.Union:
        rest = [a for a in args if a is not type(None)]
        return " | ".join(_type_name(a) for a in rest) + (" | None" if len(rest) < len(args) else "")
    if origin in (list, dict):
        inner = ", ".join(_type_name(a) for a in args)
        return f"{origin.__name__}[{inner}]" if args else origin.__name__
    if isinstance(tp, type):
        return tp.__name__
    return str(tp)


def _node_of(tp):
    """(dataclass, is a mapping of them) for a field that holds dataclasses, else (None, False)."""
    if dataclasses.is_dataclass(tp):
        return tp, False
    if typing.get_origin(tp) is dict and dataclasses.is_dataclass(typing.get_args(tp)[1]):
        return typing.get_args(tp)[1], True
    return None, False


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return schema.MISSING


def _inline(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value) if (not value or "\n" in value or value != value.strip()) else value
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_inline(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_inline(v)}" for k, v in value.items()) + "}"
    return repr(value) if isinstance(value, float) else str(value)


def _show(value) -> str:
    if isinstance(value, str) and value == schema.MISSING:
        return "required"
    text = _inline(value)
    return f"`{text}`" if len(text) <= MAX_INLINE else f"`{text[:MAX_INLINE - 5]} …`"


def rows(cls, prefix: str = "", in_entry: bool = False) -> list[Row]:
    """One row per key under `cls`, depth first, in the schema's field order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        key, tp, text = prefix + f.name, hints[f.name], meaning(cls, f.name)
        node, mapping = _node_of(tp)
        entry = ENTRY_SCHEMAS.get((cls, f.name))
        type_name = _type_name(tp) if entry is None else f"dict[str, {entry.__name__}]"
        type_cell = f"`{type_name}`"
        allowed = ALLOWED.match(text)
        if allowed:
            type_cell += ": " + ", ".join(f"`{v}`" for v in allowed.group(1).split(" | "))
        if node is not None and not mapping:
            required = isinstance(f.default, str) and f.default == schema.MISSING
            out.append(Row(key, type_cell, "required" if required else "", text, "node"))
            out.extend(rows(node, key + ".", in_entry))
        elif node is not None or entry is not None:
            value = _default(f)
            out.append(Row(key, type_cell, _show(value), text, "mapping", value))
            out.extend(rows(node or entry, key + ".<name>.", True))
        else:
            value = _default(f)
            out.append(Row(key, type_cell, _show(value), text, "entry" if in_entry else "leaf", value))
    return out


# ------------------------------------------------------------------ what the shipped YAML composes to
def _flat_keys(node, prefix: str, out: set):
    if isinstance(node, dict):
        for k, v in node.items():
            key = f"{prefix}{k}"
            out.add(key)
            _flat_keys(v, key + ".", out)


def composed_files(config_name: str, choices: dict) -> list[tuple[str, set]]:
    """[(conf/ file, the dotted keys it sets)] in Hydra's composition order (later files win)."""
    import yaml

    from codellama_recipe.core.config import conf_dir

    root, order = conf_dir(), []

    def walk(rel: str, package: str):
        text = (root / rel).read_text(encoding="utf-8")
        body = yaml.safe_load(text) or {}
        if "# @package _global_" in text.splitlines()[:2]:
            package = ""
        keys: set = set()
        _flat_keys({k: v for k, v in body.items() if k not in ("defaults", "hydra")}, package and package + ".",
                   keys)
        if package and keys:
            keys.add(package)
        own = (f"conf/{rel}", keys)
        entries, self_placed = body.get("defaults", []), False
        for entry in entries:
            if entry == "_self_":
                order.append(own)
                self_placed = True
            elif isinstance(entry, dict):
                (group, option), = entry.items()
                if group.startswith(("override ", "hydra")):
                    continue
                group = group[1:] if group.startswith("/") else (
                    f"{rel.rpartition('/')[0]}/{group}" if "/" in rel else group)
                walk(f"{group}/{choices.get(group, option)}.yaml", group.replace("/", "."))
        if not self_placed:
            order.append(own)

    walk(f"{config_name}.yaml", "")
    return order


def compose_shipped(config_name: str):
    """(the composed configuration as plain containers, interpolations kept; a resolver of one dotted key
    that returns None where the value depends on the environment; the conf/ files in composition order)."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from codellama_recipe.core.config import CONF_PACKAGE, register_resolvers, register_schemas

    register_resolvers()
    register_schemas()
    with initialize_config_module(config_module=CONF_PACKAGE, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=[], return_hydra_config=True)
    choices = {k: v for k, v in OmegaConf.to_container(cfg.hydra.runtime.choices).items()
               if not k.startswith("hydra")}
    raw = OmegaConf.to_container(cfg, resolve=False)
    del raw["hydra"]

    # Values read from the environment (cache_dir) would make the page differ between machines: they, and
    # everything that interpolates them, are shown as written.
    neutral = OmegaConf.create(raw)
    sentinel = "\0environment"

    def neutralise(node, path):
        for k, v in (node.items() if isinstance(node, dict) else enumerate(node)):
            if isinstance(v, (dict, list)):
                neutralise(v, f"{path}{k}.")
            elif isinstance(v, str) and "oc.env" in v:
                OmegaConf.update(neutral, f"{path}{k}", sentinel, merge=False)

    neutralise(raw, "")

    def resolved(key: str):
        try:
            value = OmegaConf.select(neutral, key, throw_on_missing=False)
        except OmegaConfBaseException:    # an interpolation that cannot be resolved here: shown as written
            return None
        if value is None or OmegaConf.is_config(value) or sentinel in str(value):
            return None
        return value

    return raw, resolved, composed_files(config_name, choices)


def _lookup(raw, key: str):
    node = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return dataclasses.MISSING
        node = node[part]
    return node


def _count(value) -> str:
    noun = ("entry", "entries") if isinstance(value, dict) else ("item", "items")
    return f"{len(value)} {noun[len(value) != 1]}"


def _set_by(files, key: str) -> str:
    """` (conf/<file>)` for the last file in composition order that sets `key`."""
    for name, keys in reversed(files):
        if key in keys:
            return f" ([{name}](../{name}))"
    return ""


def add_shipped(table: list[Row], config_name: str) -> list[str]:
    """Fill Row.composed where the shipped YAML composes to another value than the dataclass default;
    returns the conf/ files of the composition, in order."""
    raw, resolved, files = compose_shipped(config_name)
    for row in table:
        if row.kind == "node":
            continue
        if row.kind == "entry":
            head, _, name = row.key.partition(".<name>.")
            entries = _lookup(raw, head)
            if "." in name or not isinstance(entries, dict):
                continue
            differing = {e: v[name] for e, v in entries.items()
                         if isinstance(v, dict) and name in v and v[name] != row.value}
            if differing:
                cells = ", ".join(f"{e}: {_inline(v)}" for e, v in differing.items())
                shown = f"`{cells}`" if len(cells) <= MAX_INLINE else f"set in {_count(differing)}"
                row.composed = shown + _set_by(files, f"{head}.{next(iter(differing))}.{name}")
            continue
        value = _lookup(raw, row.key)
        if value is dataclasses.MISSING:
            continue
        if row.kind == "mapping":
            if isinstance(value, dict) and list(value) != list(row.value or {}):
                first = f"{row.key}.{next(iter(value))}" if value else row.key
                row.composed = "entries " + ", ".join(f"`{k}`" for k in value) + _set_by(files, first)
            continue
        if value == row.value and isinstance(value, bool) == isinstance(row.value, bool):
            continue
        text = _inline(value)
        if len(text) > MAX_INLINE:
            if isinstance(value, dict):
                cell = "entries " + ", ".join(f"`{k}`" for k in value)
            else:
                cell = _count(value) if isinstance(value, list) else f"`{text[:MAX_INLINE - 5]} …`"
        else:
            cell = f"`{text}`"
            result = resolved(row.key) if isinstance(value, str) and "${" in value else None
            if result is not None:
                cell += f" = `{_inline(result)}`"
        row.composed = cell + _set_by(files, row.key)
    return [name for name, _ in files]


# ------------------------------------------------------------------ the page
def _cell(text: str) -> str:
    """Markdown table cell: `|` escaped; `<`, `>` and `*` escaped outside code spans."""
    pieces = text.split("`")
    for i in range(0, len(pieces), 2):
        pieces[i] = pieces[i].replace("<", "&lt;").replace(">", "&gt;").replace("*", r"\*")
    return "`".join(pieces).replace("|", r"\|")


def render() -> str:
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated from core/schema.py by core/config_reference.py; do not edit. Regenerate with",
        f"     {REGENERATE}   (tests/test_config_reference.py fails when this page is stale) -->",
        "",
        "Every key of every command, generated from the typed schema (`core/schema.py`): the type, the",
        "dataclass default, the value the shipped YAML in `conf/` composes to where it differs (and the file",
        "that sets it), and the meaning, which is the field's comment in the schema. `<name>` stands for the",
        "name of an entry of a mapping (`data.sources.code.weight`). \"required\" marks a value without a",
        "default (`???`). How composition and overrides work: [configuration.md](configuration.md).",
        "",
    ]
    for command, config_name, root in COMMANDS:
        out.append(f"- [`{command}`](#{command}) (`conf/{config_name}.yaml`, `{root.__name__}`)")
    out.append("")
    for command, config_name, root in COMMANDS:
        table = rows(root)
        files = add_shipped(table, config_name)
        out += [f"## {command}", ""]
        intro = f"Schema `{root.__name__}`"
        if files:
            intro += "; the shipped YAML is composed from " + ", ".join(f"[{f}](../{f})" for f in files)
        out.append(intro + ".")
        if command in NOTES:
            out += ["", NOTES[command]]
        out += ["", "| key | type | default | shipped YAML | meaning |", "|---|---|---|---|---|"]
        for r in table:
            out.append(f"| `{r.key}` | {_cell(r.type)} | {_cell(r.default)} | {_cell(r.composed)} | "
                       f"{_cell(r.meaning)} |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    page = render()
    if "--write" in argv:
        REFERENCE_PATH.write_text(page, encoding="utf-8")
        print(f"wrote {REFERENCE_PATH}")
    elif "--check" in argv:
        current = REFERENCE_PATH.read_text(encoding="utf-8") if REFERENCE_PATH.exists() else ""
        if current != page:
            print(f"docs/reference.md is stale: run {REGENERATE}", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
