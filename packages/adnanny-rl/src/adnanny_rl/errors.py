"""One error style for adnanny-rl: a base class, and subclasses that say which input was wrong."""

from __future__ import annotations

__all__ = ["AdNannyRLError", "RLConfigError", "RewardError"]


class AdNannyRLError(Exception):
    """Base of every adnanny-rl error."""


class RLConfigError(AdNannyRLError, ValueError):
    """A config key or argument has a wrong value; the message names it."""


class RewardError(AdNannyRLError, RuntimeError):
    """A reward callable failed or returned something unusable; the message names the task and row."""
