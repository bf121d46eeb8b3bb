"""Fast modules: Pow2Linear / Pow2Conv2d (packed power-of-two weights)."""

from compressor.nn.pow2 import Pow2Conv2d, Pow2Linear

__all__ = ["Pow2Conv2d", "Pow2Linear"]
