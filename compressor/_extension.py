"""Loads compressor._C once. Never raises and never initialises CUDA.

When the extension is missing, every op runs on its PyTorch twin in compressor.ops.reference and
one warning says why; `compressor info` repeats the reason.
"""

import importlib
import os
import warnings

_loaded: bool | None = None
_error: str | None = None


def load() -> bool:
    """Import compressor._C (registering torch.ops.compressor.*); True when it is there."""
    global _loaded, _error
    if _loaded is None:
        if os.environ.get("COMPRESSOR_DISABLE_EXTENSION", "") == "1":
            _loaded, _error = False, "disabled by COMPRESSOR_DISABLE_EXTENSION=1"
        else:
            try:
                importlib.import_module("compressor._C")
                _loaded = True
            except ImportError as exc:  # missing or built against another torch
                _loaded, _error = False, f"{type(exc).__name__}: {exc}"
        if not _loaded:
            warnings.warn(
                f"compressor: C++/CUDA extension not available ({_error}); ops fall back to "
                "their PyTorch reference implementations. Build it with "
                "`pip install --no-build-isolation -e .`",
                RuntimeWarning,
                stacklevel=2,
            )
    return _loaded


def error() -> str | None:
    """Why the extension is not loaded, or None when it is."""
    load()
    return _error
