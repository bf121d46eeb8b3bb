"""Reference models sized for the built-in datasets."""

from compressor.models.nets import MODELS, ConvNet1d, DigitsCNN, build_model, lenet_300_100

__all__ = ["MODELS", "ConvNet1d", "DigitsCNN", "build_model", "lenet_300_100"]
