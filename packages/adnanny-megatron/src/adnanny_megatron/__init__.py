"""adnanny-megatron (work in progress: see the package README)."""

from adnanny_megatron.__about__ import __version__

__all__ = ["__version__"]
