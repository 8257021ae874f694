"""Where the configuration tree lives and how it is composed.

conf/ ships inside the package (``codellama_recipe.conf``) and is located through importlib.resources, so an
installed wheel works from any folder. The OmegaConf resolvers the YAML files use are registered here, once,
by every entry point that composes a configuration.
"""
from __future__ import annotations

import importlib.resources
from pathlib import Path

CONF_PACKAGE = "codellama_recipe.conf"
HYDRA_CONFIG_PATH = f"pkg://{CONF_PACKAGE}"   # for @hydra.main(config_path=...)


def conf_dir() -> Path:
    """The folder of the shipped YAML files (a real folder: wheels install unzipped)."""
    return Path(str(importlib.resources.files(CONF_PACKAGE)))


def _ceil_div(a, b) -> int:
    a, b = int(float(a)), int(float(b))
    return -(-a // b)


def register_resolvers() -> None:
    """``${ceil_div:${stage.token_budget},${trainer.batch_tokens}}`` turns a token budget into a step count."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("ceil_div"):
        OmegaConf.register_new_resolver("ceil_div", _ceil_div)


def compose(config_name: str, overrides: list[str]):
    """conf/<config_name>.yaml with Hydra overrides applied, as the command line would."""
    from hydra import compose as hydra_compose, initialize_config_module

    register_resolvers()
    with initialize_config_module(config_module=CONF_PACKAGE, version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides)
