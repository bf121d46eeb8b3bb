"""Direct sparse convolution / linear: packing, performance model, model conversion.

convert and PerfModel load lazily: compressor.nn imports compressor.sparse.packing, and the
converter imports compressor.nn, so eager imports here would be circular.
"""

import importlib

__all__ = ["Decision", "PerfModel", "convert", "report"]
_HOME = {"Decision": "converter", "convert": "converter", "report": "converter",
         "PerfModel": "perf_model"}


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'compressor.sparse' has no attribute {name!r}")
    return getattr(importlib.import_module(f"compressor.sparse.{_HOME[name]}"), name)
