"""Timing, machine facts and JSON output shared by every benchmark script.

Rules (DESIGN §4): ratios against a baseline timed in the same run, medians after warm-up, thread
count pinned and recorded. Nothing here asserts a speed.
"""

import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """What a reader needs to judge the numbers: CPU, cores, threads, versions, GPU."""
    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_seconds(fn, device: str = "cpu", warmup: int = 3, repeat: int = 15,
                   min_seconds: float = 0.05) -> float:
    """Median wall time of fn() after warm-up. Each sample runs fn enough times to last at least
    `min_seconds`, so sub-millisecond kernels are not dominated by timer resolution."""
    for _ in range(warmup):
        fn()
    _sync(device)
    inner, start = 1, time.perf_counter()
    fn()
    _sync(device)
    once = max(time.perf_counter() - start, 1e-7)
    inner = max(1, int(min_seconds / once))
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        _sync(device)
        samples.append((time.perf_counter() - start) / inner)
    return statistics.median(samples)


def write_json(name: str, payload: dict) -> Path:
    """benchmarks/results/<name>.json, with the machine facts added; written atomically."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"machine": machine_info(), **payload}, indent=2))
    os.replace(tmp, path)
    return path


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """A GitHub table of `columns` from dict rows, floats to 3 significant digits."""
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
