"""CVR model library: the behaviour-graph model family, the contrastive branch, export."""

from cvr.models.config import load_model_config, validate_model_config
from cvr.models.export import SCORING_COLUMNS, export_scoring_module
from cvr.models.graph import BehaviourGraph, BehaviourGraphModel, ModelOutput, build_model

__all__ = [
    "SCORING_COLUMNS",
    "BehaviourGraph",
    "BehaviourGraphModel",
    "ModelOutput",
    "build_model",
    "export_scoring_module",
    "load_model_config",
    "validate_model_config",
]
