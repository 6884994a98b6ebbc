"""One error style for adnanny-serve: every failure a user can cause raises a subclass of
:class:`AdNannyServeError` whose message names the parameter (in backticks), the value received and
how to fix it."""

from __future__ import annotations

__all__ = ["AdNannyServeError", "ConfigError", "EngineError", "QuantizeError", "LabelError"]


class AdNannyServeError(Exception):
    """Base class of every error adnanny-serve raises on purpose."""


class ConfigError(AdNannyServeError, ValueError):
    """A configuration value (CLI flag, TOML key, request field) is invalid."""


class EngineError(AdNannyServeError, RuntimeError):
    """An inference engine could not be built or could not generate."""


class QuantizeError(AdNannyServeError, RuntimeError):
    """FP8 export of a checkpoint failed (missing tensor, bad shape, unsupported dtype)."""


class LabelError(AdNannyServeError, RuntimeError):
    """Batch labeling failed (bad input file, missing column, mismatched resume state)."""
