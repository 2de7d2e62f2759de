"""Channel pruning structure: dependency groups, filter ranking, nested levels, prefix permutation, encodings.

The small core API, in the spirit of Torch-Pruning: `find_groups` (dependency graph -> coupled channel
groups), `rank_channels` (importance per group), `plan_levels` (nested keep counts), `permute_to_prefix`
(reorder so every level keeps a prefix), `encode_*` (what differs between architectures).
"""

from revperception.pruning.levels import FULL, PRUNED, Levels, encode_full, encode_level, encodings, plan_levels
from revperception.pruning.ranking import RANKINGS, rank_channels
from revperception.pruning.structure import ChannelGroup, Member, find_groups, permute_to_prefix

__all__ = [
    "FULL", "PRUNED", "RANKINGS", "ChannelGroup", "Levels", "Member", "encode_full", "encode_level", "encodings",
    "find_groups", "permute_to_prefix", "plan_levels", "rank_channels",
]
