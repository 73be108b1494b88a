"""Interoperability: the authors' released weights (:mod:`~pamm.interop.convert`), ONNX export
(:mod:`~pamm.interop.export`) and sharing (pretrained folders, model cards, the Hugging Face Hub:
:mod:`~pamm.interop.hub`). Modules are imported on use: ``from pamm.interop.export import export_onnx``."""
