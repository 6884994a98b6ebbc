"""adnanny-serve (work in progress: see the package README)."""

from adnanny_serve.__about__ import __version__

__all__ = ["__version__"]
