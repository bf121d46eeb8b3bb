"""ONNX export of compressed models: compact standard encodings, verified in onnxruntime."""

from compressor.export.api import ExportConfig, ExportReport, to_onnx

__all__ = ["ExportConfig", "ExportReport", "to_onnx"]
