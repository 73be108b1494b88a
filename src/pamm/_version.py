"""The package version (one place: ``pamm.__version__``, written into checkpoints, pretrained folders and ONNX
metadata; it imports nothing, so that any layer may read it)."""

__version__ = "0.1.0"
