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


class InputFileError(ConfigError):
    """A file the user gave cannot be used: the message names the file, the line when there is one, and why."""

    def __init__(self, path, line: int | None, what: str):
        self.path, self.line = str(path), line
        self.key, self.value, self.allowed = None, None, what
        where = f"{path}:{line}" if line is not None else str(path)
        ValueError.__init__(self, f"input error: {where}: {what}")
