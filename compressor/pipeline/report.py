"""report.md, metrics.json and the plots of a `compressor run` directory, from what the stages
measured (state) and the files they wrote (sizes are measured here, from the files)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402

from compressor.io import write_json_atomic, write_text_atomic  # noqa: E402
from compressor.sparse.converter import whole_model_lines  # noqa: E402

MODEL_FILES = ("dense.pt", "pruned.pt", "quantized.pt", "sparse.pt", "dense.onnx", "model.onnx")
ACCURACY_STAGES = ("train", "prune", "quantize", "sparsify")


def sizes(run_dir: Path) -> dict[str, int]:
    return {name: (run_dir / name).stat().st_size for name in MODEL_FILES
            if (run_dir / name).exists()}


def _bar(path: Path, labels, values, ylabel: str, title: str, fmt: str) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.2))
    bars = ax.bar(labels, values, color="C0")
    ax.bar_label(bars, [fmt.format(v) for v in values], fontsize=8)
    ax.tick_params(axis="x", labelsize=8, labelrotation=20)  # file names would overlap
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _latency_plot(path: Path, bench: dict) -> Path:
    rows = bench["whole_model"]
    fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 3.2), squeeze=False)
    for ax, row in zip(axes[0], rows, strict=True):
        labels = ["PyTorch\ndense", "PyTorch\nours", "ORT\ndense", "ORT\nours"]
        values = [row["torch_dense_ms"], row["torch_compressed_ms"], row["ort_dense_ms"],
                  row["ort_compressed_ms"]]
        bars = ax.bar(labels, values, color=["C7", "C0", "C7", "C2"])
        ax.bar_label(bars, [f"{v:.2f}" for v in values], fontsize=7)
        ax.set_title(f"batch {row['batch']}, {row['threads']} threads", fontsize=9)
        ax.set_ylabel("ms (median)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# What the converter's per-layer figures are (compressor.sparse.perf_model): other work only
# ever adds time, so it compares the fastest of the interleaved samples.
_DECISION_STAT = "fastest of interleaved samples"


def _layer_rows(bench: dict, sparsify: dict | None) -> tuple[list[dict], str]:
    """Per layer, dense against compressed ms, and which statistic they are: the sparse
    converter's own measurements when the run sparsified (they cover every candidate, fused
    blocks included, which the per-layer PyTorch timing cannot name), else the PyTorch per-layer
    timing (medians)."""
    if sparsify:
        # a layer kept dense runs as dense: that is its compressed time
        rows = [{"layer": n, "kind": r["action"] + (f", {r['fused']}" if r.get("fused") else ""),
                 "dense_ms": r["dense_ms"],
                 "compressed_ms": r["sparse_ms"] if r["action"] == "sparse" else r["dense_ms"]}
                for n, r in sparsify.items() if "dense_ms" in r and "sparse_ms" in r]
        return rows, _DECISION_STAT
    return [r for r in bench["layers"] if "dense_ms" in r], "median"


def _layer_plot(path: Path, rows: list[dict], statistic: str) -> Path:
    fig, ax = plt.subplots(figsize=(6.5, 0.28 * len(rows) + 1.2))
    y = range(len(rows))
    ax.barh([i + 0.2 for i in y], [r["dense_ms"] for r in rows], 0.4, label="dense", color="C7")
    ax.barh([i - 0.2 for i in y], [r["compressed_ms"] for r in rows], 0.4, label="compressed",
            color="C0")
    ax.set_yticks(list(y), [f"{r['layer']} ({r['kind']})" for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"ms per call ({statistic})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _table(rows: list[list], header: list[str]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def write_report(run_dir: Path, state: dict, config: dict) -> Path:
    run_dir = Path(run_dir)
    done = state["stages"]
    files = sizes(run_dir)
    accuracy = [(s, done[s]["metrics"]["test_acc"]) for s in ACCURACY_STAGES
                if s in done and "test_acc" in done[s]["metrics"]]
    metrics = {"stages": {k: v["metrics"] for k, v in done.items()}, "sizes": files,
               "accuracy": dict(accuracy), "config": config}
    write_json_atomic(run_dir / "metrics.json", metrics)
    plots = [_bar(run_dir / "accuracy.png", [a for a, _ in accuracy], [v for _, v in accuracy],
                  "test accuracy", "accuracy after each stage", "{:.3f}"),
             _bar(run_dir / "size.png", list(files), [b / 1024 for b in files.values()], "KiB",
                  "size of each stage's file", "{:.0f}")]
    source = config["data"]["data"] or config["data"]["dataset"]
    lines = [f"# compressor run `{config['name']}`", "",
             f"Model `{config['model']['model']}` on `{source}`; "
             f"pruning: {config['prune']}, quantization: {config['quantize']}.", "",
             "## Accuracy per stage", ""]
    lines += _table([[s, f"{a:.4f}"] for s, a in accuracy], ["stage", "test accuracy"])
    lines += ["", "## Size per file", ""]
    dense = files.get("dense.pt")
    lines += _table([[n, f"{b:,}", f"{dense / b:.2f}x" if dense and n.endswith(".pt") else
                      (f"{files['dense.onnx'] / b:.2f}x" if "dense.onnx" in files else "")]
                     for n, b in files.items()], ["file", "bytes", "smaller than dense by"])
    if dense and files.get("pruned.pt", 0) > dense:
        lines += ["", "`pruned.pt` is larger than `dense.pt`: it keeps each pruned weight dense "
                  "beside its mask, so later fine-tuning holds the zeros. The size drops where "
                  "the weights are stored compactly: power-of-two codes (`quantized.pt`), "
                  "sparse kernels (`sparse.pt`) and the ONNX file."]
    bench = done.get("bench", {}).get("metrics")
    sparsify = done.get("sparsify", {}).get("metrics", {}).get("layers")
    if bench:
        plots.append(_latency_plot(run_dir / "latency.png", bench))
        lines += ["", "## Latency, whole model (measured side by side in this run)", ""]
        lines += _table([[r["batch"], r["threads"], f"{r['torch_dense_ms']:.3f}",
                          f"{r['torch_compressed_ms']:.3f}", f"{r['torch_speedup']:.2f}x",
                          f"{r['ort_dense_ms']:.3f}", f"{r['ort_compressed_ms']:.3f}",
                          f"{r['ort_speedup']:.2f}x"] for r in bench["whole_model"]],
                        ["batch", "threads", "PyTorch dense ms", "PyTorch ours ms", "speedup",
                         "ORT dense ms", "ORT ours ms", "speedup"])
        rows, statistic = _layer_rows(bench, sparsify)
        if rows:
            plots.append(_layer_plot(run_dir / "layers.png", rows, statistic))
        if bench["layers"]:
            lines += ["", f"## Latency per layer (PyTorch, batch {bench['layer_batch']})", ""]
            lines += ["A sparse layer that absorbed its BatchNorm and activation is timed "
                      "against the dense modules it replaced, named beside it (a residual add is "
                      "no module: it is left out on the dense side). The convs of a fused block "
                      "(`...main.0`) have no dense module of their name; the decisions below "
                      "time every candidate, fused blocks included, both ways.", ""]
            lines += _table([[r["layer"] + (f" (dense: {' + '.join(r['dense_of'])})"
                                            if r.get("dense_of") else ""), r["kind"],
                              f"{r['dense_ms']:.3f}" if "dense_ms" in r else "-",
                              f"{r['compressed_ms']:.3f}",
                              f"{r['speedup']:.2f}x" if "speedup" in r else "-"]
                             for r in bench["layers"]],
                            ["layer", "runs as", "dense ms", "ours ms", "speedup"])
    if sparsify:
        lines += ["", "## Sparse-kernel decisions (measured on this machine)", "",
                  f"Dense and sparse ms: the {_DECISION_STAT} of each (other work only ever "
                  "adds time), as the converter decides.", ""]
        lines += _table([[n, f"{r['sparsity']:.2f}", r.get("fused") or "-",
                          f"{r['dense_ms']:.3f}" if "dense_ms" in r else "-",
                          f"{r['sparse_ms']:.3f}" if "sparse_ms" in r else "-",
                          f"{r['speedup']:.2f}x", r["action"]]
                         for n, r in sparsify.items()],
                        ["layer", "sparsity", "fused", "dense ms", "sparse ms", "speedup",
                         "decision"])
        whole = done.get("sparsify", {}).get("metrics", {}).get("whole_model") or {}
        facts = whole_model_lines(whole)
        lines += ["", *(f"- {fact}" for fact in facts)] if facts else []
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    lines += ["", "Files: " + ", ".join(f"`{n}`" for n in files) + ", `metrics.json`."]
    return write_text_atomic(run_dir / "report.md", "\n".join(lines) + "\n")
