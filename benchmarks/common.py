"""Timing, machine facts and JSON output shared by every benchmark script.

Rules (DESIGN §4): ratios against a baseline timed in the same run, medians after warm-up, thread
count pinned and recorded. Nothing here asserts a speed.
"""

import argparse
import json
import os
import platform
from pathlib import Path

import torch

from compressor import timing
from compressor.io import write_json_atomic

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


def median_seconds(fn, device: str = "cpu", warmup: int = 3, repeat: int = 15,
                   min_seconds: float = 0.05) -> float:
    """compressor.timing's median, with the benchmarks' defaults (longer samples, more of them)."""
    return timing.median_seconds(fn, device, warmup, repeat, min_seconds)


def write_json(name: str, payload: dict) -> Path:
    """benchmarks/results/<name>.json, with the machine facts added; written atomically."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    write_json_atomic(path, {"machine": machine_info(), **payload})
    return path


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """A GitHub table of `columns` from dict rows, floats to 3 significant digits."""
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


# ---- sweeps over (device, threads) x cases, shared by the sparse benchmarks ----

def sweep_parser(doc: str, groups: str) -> argparse.ArgumentParser:
    """--quick / --plot, plus what lets a long sweep run in pieces: --threads, --only, --append."""
    parser = argparse.ArgumentParser(description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the small subset (2 threads)")
    parser.add_argument("--plot", action="store_true", help="draw the plot from the JSON rows")
    parser.add_argument("--threads", type=int, nargs="+", help="CPU thread counts (default 1 2)")
    parser.add_argument("--only", nargs="+", metavar="PREFIX", help=f"only these {groups}")
    parser.add_argument("--append", action="store_true",
                        help="merge into the existing JSON (same case re-measured replaces)")
    parser.add_argument("--replot", action="store_true",
                        help="measure nothing: tables (and --plot) from the saved JSON")
    return parser


def cpu_configs(args) -> list[tuple[str, int]]:
    """(device, threads) to run: CPU at the chosen thread counts, then CUDA when present."""
    threads = args.threads or ((2,) if args.quick else (1, 2))
    configs = [("cpu", t) for t in threads]
    if torch.cuda.is_available():
        configs.append(("cuda", torch.get_num_threads()))
    return configs


def run_sweep(configs, cases, measure) -> list[dict]:
    """measure(*case, device, threads) -> list of rows, for every config and case, printed as
    they come so a long sweep shows progress."""
    rows = []
    for device, threads in configs:
        torch.set_num_threads(threads)
        for case in cases:
            for row in measure(*case, device, threads):
                rows.append(row)
                print(row, flush=True)
    return rows


def save_rows(name: str, rows: list[dict], key: tuple[str, ...], append: bool,
              **extra) -> tuple[Path, list[dict]]:
    """Write rows to results/<name>.json; with `append`, rows already there whose `key` fields
    differ from every new row are kept. Returns the path and all rows written."""
    path = RESULTS / f"{name}.json"
    if append and path.exists():
        new = {tuple(r[k] for k in key) for r in rows}
        old = [r for r in json.loads(path.read_text())["rows"]
               if tuple(r[k] for k in key) not in new]
        rows = old + rows
    return write_json(name, {"rows": rows, **extra}), rows


def plot_lines(rows: list[dict], series: tuple[str, ...], y: str, path: str, ylabel: str,
               log: bool = False, fontsize: int = 6) -> None:
    """One line per distinct `series` tuple: sparsity on x, rows[y] on y; saved to `path`."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for key in sorted({tuple(r[s] for s in series) for r in rows}):
        pts = sorted((r for r in rows if tuple(r[s] for s in series) == key),
                     key=lambda r: r["sparsity"])
        ax.plot([r["sparsity"] for r in pts], [r[y] for r in pts], marker="o", linewidth=0.8,
                markersize=3, label=" ".join(map(str, key)))
    ax.axhline(1.0, color="k", linewidth=0.8)
    ax.set(xlabel="sparsity", ylabel=ylabel, yscale="log" if log else "linear")
    ax.legend(fontsize=fontsize, ncol=2)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
