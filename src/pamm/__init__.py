"""PAMM: Parameter Aware Mamba Model for multi-task dense prediction (arXiv 2511.14503)."""

from .config import Config, ConfigError, load_config, preset_names

__version__ = "0.1.0"

__all__ = ["Config", "ConfigError", "load_config", "preset_names", "build_model", "__version__"]


def build_model(cfg: Config, load_backbone_weights: bool = True):
    """Build the model of ``cfg`` (see :func:`pamm.models.build_model`)."""
    from .models import build_model as _build

    return _build(cfg, load_backbone_weights=load_backbone_weights)
