"""The public API is pinned, and importing it stays light."""

from __future__ import annotations

import subprocess
import sys

import adnanny_rl


def test_all_is_pinned() -> None:
    assert set(adnanny_rl.__all__) == {"AdNannyRLError", "RLConfig", "RLConfigError", "RewardError", "TaskConfig",
                                       "__version__", "load_config"}


def test_import_does_not_load_torch() -> None:
    code = "import sys, adnanny_rl; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
