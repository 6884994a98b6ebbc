"""adnanny-rl: KL-regularised GRPO with rewards from frozen downstream ads models (paper §4.3, eq. 8).

The top level stays light (no torch at import): the objective, rewards and the recipe live in submodules —
`adnanny_rl.objective` (GRPO's loss, written once), `adnanny_rl.batch_reward` (eq. 8 batching),
`adnanny_rl.rewards` (labels, retrieval, CTR), `adnanny_rl.train` (the recipe behind `adnanny-rl train`) and
`adnanny_rl.service` (the rewards over HTTP).
"""

from adnanny_rl.__about__ import __version__
from adnanny_rl.config import RLConfig, TaskConfig, load_config
from adnanny_rl.errors import AdNannyRLError, RewardError, RLConfigError

__all__ = ["AdNannyRLError", "RLConfig", "RLConfigError", "RewardError", "TaskConfig", "__version__", "load_config"]
