"""Where the configuration tree lives and how it is composed.

conf/ ships inside the package (``codellama_recipe.conf``) and is located through importlib.resources, so an
installed wheel works from any folder. The OmegaConf resolvers the YAML files use are registered here, once,
by every entry point that composes a configuration.
"""
from __future__ import annotations

import dataclasses
import importlib.resources
import typing
from pathlib import Path

from codellama_recipe.core.errors import ConfigError

CONF_PACKAGE = "codellama_recipe.conf"
HYDRA_CONFIG_PATH = f"pkg://{CONF_PACKAGE}"   # for @hydra.main(config_path=...)


def conf_dir() -> Path:
    """The folder of the shipped YAML files (a real folder: wheels install unzipped)."""
    return Path(str(importlib.resources.files(CONF_PACKAGE)))


def _ceil_div(a, b) -> int:
    a, b = int(float(a)), int(float(b))
    return -(-a // b)


def register_schemas() -> None:
    from codellama_recipe.core.schema import register_schemas as register

    register()


def _mul(a, b) -> int:
    return int(float(a)) * int(float(b))


def register_resolvers() -> None:
    """``${ceil_div:${stage.token_budget},${trainer.batch_tokens}}`` turns a token budget into a step count;
    ``${mul:${scale.seq_len},${scale.long_factor}}`` scales a length."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("ceil_div"):
        OmegaConf.register_new_resolver("ceil_div", _ceil_div)
    if not OmegaConf.has_resolver("mul"):
        OmegaConf.register_new_resolver("mul", _mul)


def compose(config_name: str, overrides: list[str]):
    """conf/<config_name>.yaml with Hydra overrides applied, as the command line would."""
    from hydra import compose as hydra_compose, initialize_config_module

    register_resolvers()
    register_schemas()
    with initialize_config_module(config_module=CONF_PACKAGE, version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides)


# --------------------------------------------------------------------------------------------------------
# Typed objects from mappings, with the mistakes named
# --------------------------------------------------------------------------------------------------------

def _schema_node(schema, dotted: str):
    """The dataclass (or None) that a dotted key's parent has in the schema; the names of dict entries
    (data.sources.<name>, corpus.<name>) are stepped over."""
    node, entry_name_next = schema, False
    for part in dotted.split(".")[:-1]:
        if entry_name_next:
            entry_name_next = False
            continue
        if not dataclasses.is_dataclass(node):
            return None
        node = typing.get_type_hints(node).get(part)
        origin = typing.get_origin(node)
        if origin is dict:
            node, entry_name_next = typing.get_args(node)[1], True
        elif origin is typing.Union:
            node = next((a for a in typing.get_args(node) if a is not type(None)), None)
    return node if dataclasses.is_dataclass(node) and not entry_name_next else None


def allowed_keys(schema, dotted: str, root: str = "") -> str:
    """What to say about an unknown key: the keys its parent node has. `root` names where `schema` sits."""
    node = _schema_node(schema, dotted)
    if node is None:
        return "unknown key"
    names = [f.name for f in dataclasses.fields(node)]
    parent = ".".join(p for p in (root, dotted.rpartition(".")[0]) if p) or "the top level"
    return f"unknown key; {parent} has: {', '.join(names)}"


def typed(schema, node, where: str):
    """`node` (a mapping or an OmegaConf node, interpolations resolved) as an instance of the schema
    dataclass `schema`; a wrong key or type is a ConfigError that names `<where>.<key>`."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(node, schema):
        return node
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    if node is not None and not isinstance(node, typing.Mapping):
        raise ConfigError(where, node, f"expected a mapping with the keys of {schema.__name__}")
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), node or {}))
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or ""
        value = OmegaConf.select(OmegaConf.create(node or {}), key, default="?") if key else "?"
        full = f"{where}.{key}" if key else where
        reason = allowed_keys(schema, key, where) if "not in" in str(e) or "not in struct" in str(e) else \
            str(e).strip().splitlines()[0]
        raise ConfigError.from_message(f"{full}={value}: {reason}") from None
