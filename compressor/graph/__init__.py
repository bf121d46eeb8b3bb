"""Pattern finding in a torch.fx trace: conv/linear -> BatchNorm -> activation units and residual
blocks, found in the traced graph (not by position in an nn.Sequential)."""

from compressor.graph.patterns import (
    Patterns,
    Residual,
    TraceError,
    Unit,
    find_patterns,
    replace_module,
)

__all__ = ["Patterns", "Residual", "TraceError", "Unit", "find_patterns", "replace_module"]
