"""The one timing helper: medians of repeated wall-clock samples after warm-up.

Used by the sparse performance model, the converter, export verification and every benchmark, so
"faster" means the same thing everywhere. `paired_medians` interleaves the candidates sample by
sample, so a machine that gets busier during the measurement slows all of them alike, and reports
the spread so a caller can tell a clear decision from a disturbed one.
"""

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _inner_count(fn: Callable[[], object], device: str, min_seconds: float) -> int:
    """How many calls one sample needs to last `min_seconds` (timer resolution)."""
    if min_seconds <= 0:
        return 1
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    once = max(time.perf_counter() - start, 1e-7)
    return max(1, int(min_seconds / once))


def _sample(fn: Callable[[], object], device: str, inner: int) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / inner


def median_seconds(fn: Callable[[], object], device: str = "cpu", warmup: int = 2,
                   repeat: int = 5, min_seconds: float = 0.0) -> float:
    """Median seconds per call of fn() after `warmup` calls. Each sample repeats fn until it
    lasts at least `min_seconds`, so sub-millisecond kernels are not timer noise."""
    return paired_medians([fn], device, warmup, repeat, min_seconds).medians[0]


@dataclass
class Paired:
    """Medians of interleaved samples, and each candidate's relative spread (IQR / median)."""

    medians: list[float]
    spreads: list[float]
    samples: list[list[float]]

    def ratio(self, baseline: int = 0, candidate: int = 1) -> float:
        """median[baseline] / median[candidate]: > 1 means the candidate is faster."""
        return self.medians[baseline] / max(self.medians[candidate], 1e-12)


def _spread(samples: list[float]) -> float:
    if len(samples) < 4:
        return 0.0
    q = statistics.quantiles(samples, n=4)
    return (q[2] - q[0]) / max(statistics.median(samples), 1e-12)


def paired_medians(fns: Sequence[Callable[[], object]], device: str = "cpu", warmup: int = 2,
                   repeat: int = 5, min_seconds: float = 0.0) -> Paired:
    """Time several candidates with their samples interleaved (A B A B ...)."""
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    for fn in fns:
        for _ in range(warmup):
            fn()
    inners = [_inner_count(fn, device, min_seconds) for fn in fns]
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, inner, out in zip(fns, inners, samples, strict=True):
            out.append(_sample(fn, device, inner))
    return Paired([statistics.median(s) for s in samples], [_spread(s) for s in samples],
                  samples)
