"""The front end of every Hydra command: a bad configuration is refused in one line with exit 2.

    exit_code = run_hydra_command("codellama-train", "train", task, check=check_config)

Before Hydra runs the task, every configuration the command line asks for (each job of a `-m` sweep) is
composed against the typed schema (core/schema.py) and given to `check` (the command's cross-field checks:
they need no process group). Any mistake prints `<prog>: config error: <key>=<value>: <what is allowed>`
(or `<prog>: input error: <key>=<value>: <why>` when what a valid value points at cannot be used) on stderr
and the command exits 2, before a process group, a model or a data loader exists. Hydra's own
flags work as usual: --help, --cfg job|hydra|all, --resolve, --package, -m/--multirun, --info.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import sys
from typing import Callable

from codellama_recipe.core.config import HYDRA_CONFIG_PATH, allowed_keys, compose, register_resolvers, register_schemas
from codellama_recipe.core.errors import ConfigError
from codellama_recipe.core.schema import SCHEMAS

EXIT_CONFIG = 2
MAX_SWEEP_CHECKS = 256
_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--info", "--config-path", "-cp", "--config-name", "-cn",
                     "--config-dir", "-cd", "--experimental-rerun"}
_INFO_FLAGS = {"--help", "-h", "--hydra-help", "--version", "--shell-completion", "-sc"}
SCHEMA_OF = {"train": "train_schema", "run_pipeline": "pipeline_schema", "eval": "eval_schema",
             "ablate": "ablate_schema", "selfinstruct": "selfinstruct_schema",
             "prepare": "prepare_schema"}


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """(Hydra flags with their values, overrides)."""
    flags, overrides, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("-"):
            flags.append(arg)
            name = arg.split("=", 1)[0]
            if name in _FLAGS_WITH_VALUE and "=" not in arg and i + 1 < len(argv) and not (
                    name == "--info" and "=" in argv[i + 1]):
                flags.append(argv[i + 1])
                i += 1
        else:
            overrides.append(arg)
        i += 1
    return flags, overrides


def expand_sweeps(overrides: list[str], multirun: bool) -> list[list[str]]:
    """Every job's overrides: one list, or the cartesian product of the sweeps with -m."""
    if not multirun:
        return [overrides]
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = []
    for override in parsed:
        if override.is_sweep_override():
            key = override.get_key_element()
            choices.append([f"{key}={v}" for v in override.sweep_string_iterator()])
        else:
            choices.append([override.input_line])
    return [list(job) for job in itertools.islice(itertools.product(*choices), MAX_SWEEP_CHECKS)]


# --------------------------------------------------------------------------------------------------------
# One line per mistake
# --------------------------------------------------------------------------------------------------------

def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _override_value(overrides: list[str], key: str) -> str:
    for o in overrides:
        k, sep, v = o.lstrip("+~").partition("=")
        if sep and k == key:
            return v
    return "?"


def describe_composition_error(exc: BaseException, overrides: list[str], schema) -> str:
    """A Hydra / OmegaConf composition failure as `key=value: what is allowed`."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

    if isinstance(exc, MissingConfigException):
        options = list(exc.options or [])
        missing = exc.missing_cfg_file or ""
        group, _, name = missing.rpartition("/")
        if group and options:
            return f"{group}={name}: no such option; available: {', '.join(sorted(options))}"
        return _first_line(exc)
    if isinstance(exc, OverrideParseException):
        return f"cannot parse override: {_first_line(exc)}"
    cause = exc.__cause__ if isinstance(exc.__cause__, OmegaConfBaseException) else exc
    key = getattr(cause, "full_key", None) or ""
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and key:
        return f"{key}={_override_value(overrides, key)}: {allowed_keys(schema, key)}"
    if isinstance(cause, ValidationError) and key:
        return f"{key}={_override_value(overrides, key)}: {_first_line(cause)}"
    message = _first_line(exc)
    if message.startswith("Ambiguous value for argument"):
        return f"{message}: a list is key=[a,b], a string key='a,b', a sweep needs -m"
    if cause is not exc:
        message += f" ({_first_line(cause)})"
    return message


def check_against_schema(cfg, schema) -> None:
    """Refuse keys the schema does not have. Hydra lets `+key=value` add keys to typed nodes; nothing would
    read them, so they are refused here like any misspelt key."""
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError, ValidationError

    plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("hydra", None)
    try:
        OmegaConf.merge(OmegaConf.structured(schema), plain)
    except (ConfigKeyError, ValidationError) as e:
        key = getattr(e, "full_key", "") or "?"
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        raise ConfigError.from_message(f"{key}={value}: {allowed_keys(schema, key)}") from None


def compose_checked(config_name: str, overrides: list[str]):
    """Compose conf/<config_name>.yaml with overrides and check it against its schema; ConfigError on any
    mistake."""
    schema = SCHEMAS[SCHEMA_OF[config_name]]
    try:
        cfg = compose(config_name, overrides)
    except Exception as e:  # Hydra and OmegaConf raise many types; all of them are a configuration mistake here
        if isinstance(e, ConfigError):
            raise
        raise ConfigError.from_message(describe_composition_error(e, overrides, schema)) from None
    check_against_schema(cfg, schema)
    return cfg


# --------------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class ComposedCommandLine:
    """What a command composed with the compose API (codellama-pipeline, codellama-ablate) reads from its
    arguments: Hydra-style overrides, and --cfg job [--resolve] to print the composed config instead of running."""
    overrides: list[str]
    show_config: bool
    resolve: bool

    def print_config(self, cfg) -> None:
        from omegaconf import OmegaConf

        try:
            print(OmegaConf.to_yaml(cfg, resolve=self.resolve), flush=True)
        except BrokenPipeError:   # `--cfg job | head`: the reader stopped early, which is not an error
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def read_composed_command_line(prog: str, argv: list[str], usage: Callable[[], str],
                               one_run: str) -> ComposedCommandLine | int:
    """The command's overrides and flags, or its exit code: --help prints usage() (0); -m is refused with
    `one_run` (such a command runs once, it does not sweep) and any other flag is refused by name (2)."""
    flags, overrides = split_argv(argv)
    names = {f.split("=", 1)[0] for f in flags}
    if names & {"-h", "--help"}:
        print(usage())
        return 0
    if names & {"-m", "--multirun"}:
        return refuse(prog, f"config error: -m: {one_run}")
    unknown = [f for f in flags if f not in ("--cfg", "-c", "job", "all", "--resolve")]
    if unknown:
        return refuse(prog, f"config error: unknown flag {unknown[0]}; allowed: --help, --cfg job, --resolve")
    return ComposedCommandLine(overrides, bool(names & {"--cfg", "-c"}), "--resolve" in names)


def refuse(prog: str, message: str) -> int:
    print(f"{prog}: {message}", file=sys.stderr, flush=True)
    return EXIT_CONFIG


def preflight(prog: str, config_name: str, overrides: list[str], multirun: bool,
              check: Callable | None) -> int | list:
    """Every job's composed configuration when each composes and passes `check`; else the exit code of the
    one-line refusal (2)."""
    try:
        jobs = expand_sweeps(overrides, multirun)
    except Exception as e:
        return refuse(prog, f"config error: cannot parse overrides: {_first_line(e)}")
    composed = []
    for job in jobs:
        try:
            cfg = compose_checked(config_name, job)
            if check is not None:
                check(cfg)
        except ConfigError as e:
            return refuse(prog, str(e))
        composed.append(cfg)
    return composed


def run_hydra_command(prog: str, config_name: str, task: Callable, *, check: Callable | None = None,
                      argv: list[str] | None = None) -> int:
    """Compose and check every job (the preflight), then run `task(cfg) -> exit code`: a single run with the
    configuration the preflight composed (composed once); a -m sweep through @hydra.main and its launcher, which
    compose each job again; Hydra's printing flags (--cfg, --info, ...) through @hydra.main. Returns the worst
    exit code of all jobs."""
    import hydra

    argv = sys.argv[1:] if argv is None else list(argv)
    flags, overrides = split_argv(argv)
    names = {f.split("=", 1)[0] for f in flags}
    register_resolvers()
    register_schemas()
    multirun = bool(names & {"-m", "--multirun"})
    if not names & _INFO_FLAGS:
        printing_only = bool(names & {"--cfg", "-c"})   # the schema still applies; files need not exist yet
        composed = preflight(prog, config_name, overrides, multirun=multirun, check=None if printing_only else check)
        if isinstance(composed, int):
            return composed
        if not (multirun or flags):
            return int(task(composed[0]) or 0)
    worst = 0

    @hydra.main(config_path=HYDRA_CONFIG_PATH, config_name=config_name, version_base="1.3")
    def _main(cfg) -> None:
        nonlocal worst
        worst = max(worst, int(task(cfg) or 0))

    saved = sys.argv
    sys.argv = [prog, *argv]
    try:
        _main()
    finally:
        sys.argv = saved
    return worst
