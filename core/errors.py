"""Errors raised before any training starts: one clear message per problem."""


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
