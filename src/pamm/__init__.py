"""PAMM: Parameter Aware Mamba Model for multi-task dense prediction (arXiv 2511.14503)."""

from ._version import __version__
from .config import Config, ConfigError, load_config, preset_names

__all__ = ["Config", "ConfigError", "load_config", "preset_names", "build_model", "load", "__version__"]


def build_model(cfg: Config, load_backbone_weights: bool = True):
    """Build the model of ``cfg`` (see :func:`pamm.models.build_model`)."""
    from .models import build_model as _build

    return _build(cfg, load_backbone_weights=load_backbone_weights)


def __getattr__(name: str):
    """``pamm.load`` (:func:`pamm.inference.load`), imported on first use so that ``import pamm`` stays light."""
    if name == "load":
        from .inference import load

        return load
    raise AttributeError(f"module 'pamm' has no attribute {name!r}")
