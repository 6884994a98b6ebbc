"""Rewards for GRPO, each a plain callable with one signature (see `adnanny_rl.rewards.base`).

* `LabelReward` — labeling tasks: agreement of parsed labels with gold per field, plus a format term.
* `RetrievalReward` — query generation, eq. (8): recall@K of held-out clicked queries with vs without the
  generated queries injected into a frozen retriever's ad documents.
* `CTRReward` — profiles and rewrites, eq. (8): predicted-CTR uplift from a frozen CTR model, with guards.
"""

from adnanny_rl.rewards.base import Reward, RewardOutput
from adnanny_rl.rewards.labels import LabelReward

__all__ = ["LabelReward", "Reward", "RewardOutput"]
