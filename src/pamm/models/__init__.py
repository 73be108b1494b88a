"""PAMM and its parts, named after the paper's concepts."""

from .backbone import Backbone, BackboneWeightsError, HierarchicalBackbone, ViTBackbone, build_backbone
from .experts import DualParameterExperts, ParameterExperts, TaskRouters, noisy_top_k
from .heads import StageFusion, TaskHead
from .meta import ModelMeta
from .pame import PAMEStage, TaskPrior
from .pamm import PAMM, build_model
from .shared import SharedStage

__all__ = [
    "PAMM", "ModelMeta", "build_model", "PAMEStage", "SharedStage", "TaskPrior", "ParameterExperts",
    "DualParameterExperts", "TaskRouters", "noisy_top_k", "StageFusion", "TaskHead", "Backbone", "ViTBackbone",
    "HierarchicalBackbone", "build_backbone", "BackboneWeightsError",
]  # fmt: skip
