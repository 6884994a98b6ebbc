"""adnanny-rl: KL-regularized GRPO with downstream-model rewards (paper eq. 8).

Not implemented yet: this distribution holds metadata only until its issue is worked.
"""

from adnanny_rl.__about__ import __version__

__all__ = ["__version__"]
