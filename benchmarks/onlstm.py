"""ON-LSTM speed: fused kernels vs the plain-PyTorch reference vs nn.LSTM of the same hidden size.

Per sequence (batch x bptt tokens), forward (no grad) and forward+backward (a training step without
the optimiser), at the AWD/ON-LSTM PTB configuration (3 layers, embedding 400, hidden 1150,
chunk 10, batch 20, bptt 70) and a 1-layer version of it. CPU at 2 and 1 threads; CUDA (cuDNN
LSTM) when a GPU is present. Ratios are against baselines timed in the same run.

    python -m benchmarks.onlstm [--quick] [--plot] [--device cpu|cuda|all] [--repeat N]
"""

import argparse
from pathlib import Path

import torch

from benchmarks.common import markdown_table, median_seconds, write_json
from compressor.nn import ONLSTM
from compressor.ops._dispatch import has_kernel

CONFIGS = {
    "1 layer": dict(layers=1, embedding=400, hidden=1150, chunk=10, batch=20, bptt=70),
    "PTB (3 layers)": dict(layers=3, embedding=400, hidden=1150, chunk=10, batch=20, bptt=70),
}


def _models(cfg, device):
    torch.manual_seed(0)
    onlstm = ONLSTM(cfg["embedding"], cfg["hidden"], cfg["layers"], chunk_size=cfg["chunk"])
    lstm = torch.nn.LSTM(cfg["embedding"], cfg["hidden"], cfg["layers"])
    return onlstm.to(device), lstm.to(device)


def _step_fns(model, x, fused=None):
    """(forward, forward+backward) closures; `fused` picks the ONLSTM path."""
    def forward():
        if fused is not None:
            model.use_fused_kernels = fused
        with torch.no_grad():
            model(x)

    def train_step():
        if fused is not None:
            model.use_fused_kernels = fused
        model(x)[0].sum().backward()

    return forward, train_step


def time_config(name, cfg, device, repeat):
    onlstm, lstm = _models(cfg, device)
    x = torch.randn(cfg["bptt"], cfg["batch"], cfg["embedding"], device=device)
    variants = {"fused": _step_fns(onlstm, x, True), "reference": _step_fns(onlstm, x, False),
                "nn.LSTM": _step_fns(lstm, x)}
    if not has_kernel("onlstm_sequence", device):
        print(f"note: no fused kernel on {device}; 'fused' runs the reference twin")
    row = {"config": name, "device": device, "threads": torch.get_num_threads()}
    for variant, (forward, train_step) in variants.items():
        for kind, fn in (("fwd", forward), ("fwd+bwd", train_step)):
            secs = median_seconds(fn, device, warmup=1, repeat=repeat, min_seconds=0.0)
            row[f"{variant} {kind} ms"] = secs * 1e3
            print(f"  {name} {device} t={row['threads']} {variant} {kind}: {secs * 1e3:.1f} ms")
    for kind in ("fwd", "fwd+bwd"):
        fused = row[f"fused {kind} ms"]
        row[f"ref/fused {kind}"] = row[f"reference {kind} ms"] / fused
        row[f"fused/LSTM {kind}"] = fused / row[f"nn.LSTM {kind} ms"]
    return row


def plot(rows, path="docs/img/onlstm.png"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['config']}\n{r['device']} t={r['threads']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(rows)), 4))
    width = 0.27
    for i, variant in enumerate(("fused", "reference", "nn.LSTM")):
        ax.bar([k + (i - 1) * width for k in range(len(rows))],
               [r[f"{variant} fwd+bwd ms"] for r in rows], width, label=variant)
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set_ylabel("forward+backward per sequence (ms)")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("ON-LSTM training step: fused vs reference vs nn.LSTM")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the 1-layer configuration")
    parser.add_argument("--plot", action="store_true", help="draw docs/img/onlstm.png")
    parser.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1], help="CPU thread counts")
    parser.add_argument("--repeat", type=int, default=5, help="timed samples per measurement")
    args = parser.parse_args(argv)
    configs = {k: v for k, v in CONFIGS.items() if not args.quick or k == "1 layer"}
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    rows = []
    for device in devices:
        if device == "cuda" and not torch.cuda.is_available():
            print("no CUDA device: skipping GPU timings")
            continue
        for threads in args.threads if device == "cpu" else [torch.get_num_threads()]:
            torch.set_num_threads(threads)
            rows += [time_config(name, cfg, device, args.repeat) for name, cfg in configs.items()]
    columns = ["config", "device", "threads", "fused fwd+bwd ms", "reference fwd+bwd ms",
               "nn.LSTM fwd+bwd ms", "ref/fused fwd+bwd", "fused/LSTM fwd+bwd", "fused fwd ms",
               "reference fwd ms", "nn.LSTM fwd ms", "ref/fused fwd", "fused/LSTM fwd"]
    print(markdown_table(rows, columns))
    path = write_json("onlstm", {"configs": configs, "rows": rows,
                                 "targets": {"cpu": "ref/fused >= 2, fused/LSTM <= 1.25",
                                             "cuda": "ref/fused >= 5, fused/LSTM <= 1.5"}})
    print(f"wrote {path}")
    if args.plot and rows:
        plot(rows)


if __name__ == "__main__":
    main()
