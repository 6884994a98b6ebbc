"""AdNanny: the cook -> train -> align -> quantize -> label -> distill flow.

The flow and its CLI land with the integration issue; until then this package only
anchors the composed distribution and its version.
"""

from adnanny.__about__ import __version__

__all__ = ["__version__"]
