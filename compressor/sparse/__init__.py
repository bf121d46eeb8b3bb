"""Direct sparse convolution / linear for whole models: the measured performance model and the
conversion that swaps pruned layers for sparse ones only where they were measured faster."""

from compressor.sparse.api import SparsifyConfig, sparsify_
from compressor.sparse.converter import Decision, convert, report
from compressor.sparse.perf_model import PerfModel

__all__ = ["Decision", "PerfModel", "SparsifyConfig", "convert", "report", "sparsify_"]
