"""Errors raised before any training starts: one clear message per problem."""
from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is invalid. The message names the key, the value and what is allowed."""

    def __init__(self, key: str, value, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"config error: {key}={value!r} is invalid; {allowed}")

    @classmethod
    def from_message(cls, message: str) -> "ConfigError":
        """A mistake already described as `key=value: what is allowed` (e.g. from Hydra's composition)."""
        error = cls.__new__(cls)
        error.key = error.value = error.allowed = None
        ValueError.__init__(error, f"config error: {message}")
        return error

    def within(self, context: str) -> "ConfigError":
        """The same error, of the same kind, placed in `context` (a stage, an arm, the evaluation's config):
        `config error: stage 'code': optim.lr=...` or `input error: stage 'code': data.sources...`."""
        kind, _, rest = str(self).partition(": ")
        error = type(self).__new__(type(self))
        error.__dict__.update(self.__dict__)
        ValueError.__init__(error, f"{kind}: {context}: {rest}")
        return error


class InputError(ConfigError):
    """The values are valid, but what one of them points at cannot be used: a glob that matches nothing, a
    checkpoint or data state of another run, a tokenizer without the infilling pieces, a server that refuses,
    a machine without what a setting needs. Raised where the inputs are read, after the value checks (which
    raise ConfigError next to their dataclass or in the command's checks module); handled the same way: one
    line that names the key, the value and why, exit 2."""

    def __init__(self, key: str, value, why: str):
        self.key, self.value, self.allowed = key, value, why
        ValueError.__init__(self, f"input error: {key}={value!r}: {why}")


class InputFileError(ConfigError):
    """A file the user gave cannot be used: the message names the file, the line when there is one, and why."""

    def __init__(self, path, line: int | None, what: str):
        self.path, self.line = str(path), line
        self.key, self.value, self.allowed = None, None, what
        where = f"{path}:{line}" if line is not None else str(path)
        ValueError.__init__(self, f"input error: {where}: {what}")
