"""Loads compressor._C once. Never raises and never initialises CUDA.

When the extension is missing, every op runs on its PyTorch twin in compressor.ops.reference and
one warning says why; `compressor info` repeats the reason.
"""

import importlib
import os
import warnings

# Every op csrc/ops.cpp defines. A compressor._C built from older sources lacks some: it is then
# treated as missing (ops run on their twins) instead of failing the import.
OP_NAMES = (
    "cumax", "cumax_backward",
    "sparse_conv2d", "sparse_bottleneck", "sparse_linear", "max_pool2d",
    "pow2_linear", "pow2_linear_int8",
    "onlstm_cell", "onlstm_cell_backward", "onlstm_sequence", "onlstm_sequence_backward",
)

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
                _loaded, _error = _check_ops()
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


def _check_ops() -> tuple[bool, str | None]:
    import torch

    missing = [op for op in OP_NAMES if not torch._C._dispatch_has_kernel(f"compressor::{op}")]
    if missing:
        return False, (f"compressor._C is stale: it lacks {', '.join(missing)} (rebuild it with "
                       "`pip install --no-build-isolation -e .`)")
    return True, None


def error() -> str | None:
    """Why the extension is not loaded, or None when it is."""
    load()
    return _error
