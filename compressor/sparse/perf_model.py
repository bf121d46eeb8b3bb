"""Guided-pruning performance model (Park et al.): does the sparse kernel beat dense for a layer?

Calibrated by measurement on this machine: for a layer signature (shape, input size, batch,
sparsity rounded to 1%, what the sparse layer fuses, device, threads) it times the dense layer
and its sparse twin with interleaved samples (compressor.timing.paired_medians), so a machine
that gets busier during the measurement slows both alike, and compares the fastest samples
(other work only ever adds time). When the samples spread widely, or the measured ratio lies
within their spread of the caller's threshold, the verdict is unsure: it is measured again,
with more samples pooled, and an entry that stays unsure is not trusted by a later run (it is
measured afresh). Entries live in a JSON file keyed by machine, torch version and the build of
the kernels, so a rebuilt kernel is measured afresh instead of judged by stale times.
"""

import hashlib
import math
import os
import platform
import statistics
from pathlib import Path

import torch

from compressor import _extension
from compressor.io import cache_dir, read_json_cache, write_json_atomic
from compressor.timing import paired_medians

# Bump when the sparse kernels change in a way a cached timing should not survive; a rebuilt
# extension file (another size or mtime) also starts a fresh cache.
KERNEL_VERSION = 4
ROUNDS = 3  # measurements of one unsure layer at most


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


def _spread(samples: list[float]) -> float:
    if len(samples) < 4:
        return 0.0
    q = statistics.quantiles(samples, n=4)
    return (q[2] - q[0]) / max(statistics.median(samples), 1e-12)


MAX_SPREAD = 0.5  # samples spread wider than this were taken on a machine too busy to trust


def sure(entry: dict, threshold: float) -> bool:
    """The samples were steady and the threshold lies outside their noise band around the
    measured speedup."""
    if threshold <= 0:
        return True
    spread = entry.get("spread", 0.0)
    margin = abs(math.log(max(entry["speedup"], 1e-12) / threshold))
    return spread <= MAX_SPREAD and margin > math.log1p(spread)


class PerfModel:
    """Measured dense vs sparse times per layer signature, cached on disk."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path is not None else cache_path()
        table = read_json_cache(self.path, "timing cache")
        self.table = table if isinstance(table, dict) else {}

    @staticmethod
    def signature(dense: torch.nn.Module, sparse_sparsity: float, x: torch.Tensor,
                  fused: str = "") -> str:
        shape = tuple(dense.weight.shape)
        extra = (getattr(dense, "stride", None), getattr(dense, "padding", None),
                 getattr(dense, "dilation", None), getattr(dense, "groups", None))
        return (f"{type(dense).__name__}{shape}{extra}in{tuple(x.shape)}"
                f"s{round(sparse_sparsity, 2)}{fused}{x.device.type}t{torch.get_num_threads()}")

    def measure(self, key: str, dense_fn, sparse_fn, device: str = "cpu",
                threshold: float = 1.0) -> dict:
        """{'dense_s', 'sparse_s', 'speedup', 'spread'} of dense_fn() vs sparse_fn(), cached
        under `key`; re-measured while unsure about `threshold` (pooling samples)."""
        entry = self.table.get(key)
        if entry is not None and "dense_s" in entry and sure(entry, threshold):
            return entry
        dense, sparse = [], []
        for round_ in range(ROUNDS):
            with torch.no_grad():
                paired = paired_medians([dense_fn, sparse_fn], device, warmup=2 if round_ == 0
                                        else 0, repeat=7, min_seconds=0.002)
            dense += paired.samples[0]
            sparse += paired.samples[1]
            # Other work can only add time to a sample, so the fastest interleaved samples are
            # the layers' own cost; the medians are kept for the record.
            entry = {"dense_s": min(dense), "sparse_s": min(sparse),
                     "dense_median_s": statistics.median(dense),
                     "sparse_median_s": statistics.median(sparse),
                     "spread": max(_spread(dense), _spread(sparse)), "samples": len(dense)}
            entry["speedup"] = entry["dense_s"] / max(entry["sparse_s"], 1e-12)
            if sure(entry, threshold):
                break
        self.table[key] = entry
        self._save()
        return entry

    def _save(self) -> None:
        write_json_atomic(self.path, self.table)
