"""The package's exception type: every user-facing failure raises :class:`AdNannyMegatronError`."""

from __future__ import annotations

__all__ = ["AdNannyMegatronError", "HangDetected"]


class AdNannyMegatronError(Exception):
    """Base class of adnanny-megatron errors; the message names the key/tensor/file and how to fix it."""


class HangDetected(AdNannyMegatronError):
    """A distributed run did not finish within its timeout (e.g. unmatched MoE collectives, §4.1.3)."""
