"""Guided-pruning performance model (Park et al.): does the sparse kernel beat dense for a layer?

Calibrated by measurement on this machine: for a layer signature (shape, input size, batch,
sparsity rounded to 1%, device, threads) it times the dense layer and its sparse twin side by side
and caches the two medians in a JSON file keyed by machine, torch version and the build of the
kernels, so later calls (and later runs) answer without timing again, and a rebuilt (faster or
slower) kernel is measured afresh instead of judged by stale times.
"""

import hashlib
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from compressor import _extension
from compressor.io import cache_dir, read_json_cache, write_json_atomic

# Bump when the sparse kernels change in a way a cached timing should not survive; a rebuilt
# extension file (another size or mtime) also starts a fresh cache.
KERNEL_VERSION = 2


def kernel_build() -> str:
    """Identity of the compiled kernels these timings belong to."""
    if not _extension.load():
        return f"v{KERNEL_VERSION}-none"
    import compressor._C as ext

    stat = os.stat(ext.__file__)
    return f"v{KERNEL_VERSION}-{stat.st_size}-{stat.st_mtime_ns}"


def cache_path() -> Path:
    root = cache_dir()
    machine = f"{platform.node()}-{platform.machine()}-{platform.processor()}"
    machine += f"-torch{torch.__version__}-{kernel_build()}"
    digest = hashlib.sha1(machine.encode()).hexdigest()[:12]
    return root / f"sparse_perf_{digest}.json"


def median_seconds(fn, device: str = "cpu", warmup: int = 2, repeat: int = 5) -> float:
    """Median wall time of fn() after warm-up (the package must not import benchmarks/)."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


class PerfModel:
    """Measured dense vs sparse times per layer signature, cached on disk."""

    def __init__(self, path: Path | None = None):
        self.path = path or cache_path()
        table = read_json_cache(self.path, "timing cache")
        self.table = table if isinstance(table, dict) else {}

    @staticmethod
    def signature(dense: torch.nn.Module, sparse_sparsity: float, x: torch.Tensor) -> str:
        shape = tuple(dense.weight.shape)
        extra = (getattr(dense, "stride", None), getattr(dense, "padding", None),
                 getattr(dense, "dilation", None), getattr(dense, "groups", None))
        return (f"{type(dense).__name__}{shape}{extra}in{tuple(x.shape)}"
                f"s{round(sparse_sparsity, 2)}{x.device.type}t{torch.get_num_threads()}")

    def measure(self, dense, sparse, x: torch.Tensor) -> dict:
        """{'dense_s', 'sparse_s', 'speedup'} for running this layer on x, cached."""
        key = self.signature(dense, sparse.sparsity, x)
        if key not in self.table:
            with torch.no_grad():
                dense_s = median_seconds(lambda: dense(x), x.device.type, repeat=5)
                sparse_s = median_seconds(lambda: sparse(x), x.device.type, repeat=5)
            self.table[key] = {"dense_s": dense_s, "sparse_s": sparse_s,
                               "speedup": dense_s / sparse_s}
            self._save()
        return self.table[key]

    def _save(self) -> None:
        write_json_atomic(self.path, self.table)
