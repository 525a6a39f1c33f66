"""Reading feature tables for training: shard planning, Petastorm streaming, batches -> tensors."""

from cvr.data.layout import FeatureLayout
from cvr.data.sharding import ShardPlan, plan_shards

__all__ = ["FeatureLayout", "ShardPlan", "plan_shards"]
