"""compressor: PyTorch model compression whose results are real (faster, smaller, exportable).

Importing never fails for a missing extension and never initialises CUDA.
"""

from compressor import _extension
from compressor.info import info

__version__ = "0.1.0"

_extension.load()

__all__ = ["__version__", "info"]
