"""Whole pruned networks: PyTorch dense vs compressor (sparse.convert) vs onnxruntime dense
(and DeepSparse when an interpreter with it is given), timed side by side in one run.

python -m benchmarks.e2e_sparse [--quick] [--models resnet50 vgg16 mobilenet_v2]
    [--sparsities 0.8 0.9 0.95] [--batches 1 16] [--threads 1 2] [--json PATH] [--plot]
    [--deepsparse-python PATH]
Models from compressor.models at 224x224, 1000 classes, every conv/linear but the first pruned
by magnitude, layer by layer to the same sparsity, or with one global threshold (--scopes
uniform global; BatchNorm statistics randomised so folding
is not trivial). Per (model, sparsity, batch, threads): the model is converted on its example
input (sparse.convert: per-layer measured decisions, fused BN/activation/residual, whole-model
check), the dense model is exported to ONNX, then every engine is timed with interleaved samples
(compressor.timing.paired_medians); batch_chunk is the chunk the converter runs a batch in
(compressor.nn.chunked), if any, traced_stages how many stages it runs as traced graphs
(compressor.nn.traced) and fused_blocks how many residual blocks as one fused sparse op
(compressor.nn.sparse_block). --quick: ResNet-50 and VGG-16 at 90%, batch 1, 2 threads.
DeepSparse (Neural Magic, pins its own numpy/onnx) runs in its own interpreter:
python -m venv /work/ds-venv && /work/ds-venv/bin/pip install deepsparse==1.8.0, then
--deepsparse-python /work/ds-venv/bin/python. DeepSparse times back-to-back calls in its own
process; compressor and onnxruntime (its default spinning threads) are then also timed that way
("... back-to-back") for the ratios against DeepSparse and onnxruntime. In the interleaved
samples onnxruntime's threads do not spin, which would slow whichever engine runs next.
"""

import argparse
import itertools
import json
import os
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from benchmarks.common import RESULTS, machine_info, markdown_table
from compressor.io import write_json_atomic
from compressor.models import build_model
from compressor.pruning import fold_masks, prune_global
from compressor.sparse import convert
from compressor.timing import median_seconds, paired_medians

MODELS = {"resnet50": "resnet50", "vgg16": "vgg16", "mobilenet_v2": "mobilenet_v2"}
DEEPSPARSE_TIMER = """
import json, sys, time, statistics
import numpy as np
from deepsparse import compile_model
path, batch, threads, repeat = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
engine = compile_model(path, batch_size=batch, num_cores=threads)
x = [np.random.default_rng(0).standard_normal((batch, 3, 224, 224), dtype=np.float32)]
for _ in range(3): engine(x)
samples = []
for _ in range(repeat):
    start = time.perf_counter(); engine(x); samples.append(time.perf_counter() - start)
print(json.dumps({"ms": statistics.median(samples) * 1e3}))
"""


def pruned_model(name: str, sparsity: float, scope: str = "uniform") -> nn.Module:
    """uniform: every layer but the first to `sparsity`; global: one magnitude threshold over
    them (compressor.pruning.prune_global, with its per-layer floor), masks folded."""
    torch.manual_seed(0)
    model = build_model(MODELS[name]).eval()
    names = [f"{n}.weight" for n, m in model.named_modules()
             if isinstance(m, (nn.Conv2d, nn.Linear))][1:]
    if scope == "global":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # floored layers: counted by the pruning report
            prune_global(model, sparsity, names)
        fold_masks(model)
    with torch.no_grad():
        for name_ in names if scope == "uniform" else ():
            weight = model.get_parameter(name_)
            flat = weight.abs().flatten()
            keep = max(1, round(flat.numel() * (1 - sparsity)))
            threshold = flat.kthvalue(flat.numel() - keep + 1).values
            weight.mul_(weight.abs() >= threshold)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return model


def onnx_session(model: nn.Module, x: torch.Tensor, threads: int, path: Path,
                 spinning: bool = True):
    """An onnxruntime session on `model` exported to `path` (once); spinning=False for the
    interleaved samples (compressor.export.verify.session says why)."""
    from compressor.export.verify import session

    if not path.exists():
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17,
                          input_names=["x"])
    return session(str(path), threads, spinning)


def deepsparse_ms(python: str, path: Path, batch: int, threads: int, repeat: int) -> float:
    out = subprocess.run([python, "-c", DEEPSPARSE_TIMER, str(path), str(batch), str(threads),
                          str(repeat)], capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"deepsparse failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["ms"]


def measure(name, sparsity, batch, threads, args, scope="uniform") -> list[dict]:
    torch.set_num_threads(threads)
    model = pruned_model(name, sparsity, scope)
    x = torch.randn(batch, 3, 224, 224)
    converted, decisions = convert(model, (x,))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.onnx"
        # Interleaved with the other engines, onnxruntime must not spin (see onnx_session).
        quiet = onnx_session(model, x, threads, path, spinning=False)
        feed = {"x": x.numpy()}
        with torch.no_grad():
            err = (converted(x) - model(x)).abs().max().item()
            timed = paired_medians([lambda: model(x), lambda: converted(x),
                                    lambda: quiet.run(None, feed)], warmup=2, repeat=args.repeat)
        engines = {"pytorch dense": timed.medians[0], "compressor": timed.medians[1],
                   "onnxruntime dense": timed.medians[2]}
        spreads = dict(zip(engines, timed.spreads, strict=True))
        best = dict(zip(engines, (min(s) for s in timed.samples), strict=True))
        quiet = None  # its threads go with it
        # Back to back, each engine alone: onnxruntime with its default (spinning) threads and,
        # as DeepSparse times itself (alone in its process, calls back to back, weights left in
        # cache), compressor, for the ratios against those two.
        spinning = onnx_session(model, x, threads, path)
        with torch.no_grad():
            engines["onnxruntime back-to-back"] = median_seconds(
                lambda: spinning.run(None, feed), warmup=3, repeat=args.repeat)
            spinning = None  # no spinning threads beside compressor's calls
            engines["compressor back-to-back"] = median_seconds(
                lambda: converted(x), warmup=3, repeat=args.repeat)
        if args.deepsparse_python:
            engines["deepsparse"] = deepsparse_ms(args.deepsparse_python, path, batch, threads,
                                                  args.repeat) / 1e3
        for engine in ("onnxruntime back-to-back", "compressor back-to-back", "deepsparse"):
            spreads[engine] = best[engine] = None
    swapped = sum(d.converted for d in decisions)
    base = engines["pytorch dense"]
    return [{"model": name, "sparsity": sparsity, "scope": scope, "batch": batch,
             "threads": threads,
             "engine": engine, "ms": secs * 1e3, "spread": spreads[engine],
             "best_ms": None if best[engine] is None else best[engine] * 1e3,
             "load_avg": os.getloadavg()[0],
             "speedup_vs_pytorch": base / secs, "layers_sparse": swapped,
             "layers": len(decisions), "max_abs_err": err,
             "batch_chunk": (decisions.chunks or {}).get("chunk"),
             "traced_stages": len((decisions.traced or {}).get("stages", [])),
             "fused_blocks": len((decisions.blocks or {}).get("blocks", []))}
            for engine, secs in engines.items()]


def plot(rows, path: str) -> None:
    import matplotlib.pyplot as plt

    configs = sorted({(r["model"], r["sparsity"], r.get("scope", "uniform"), r["batch"],
                       r["threads"]) for r in rows})
    engines = list(dict.fromkeys(r["engine"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(configs)), 4.5))
    width = 0.8 / len(engines)
    for i, engine in enumerate(engines):
        ms = [next((r["ms"] for r in rows if (r["model"], r["sparsity"], r.get("scope", "uniform"),
                                              r["batch"], r["threads"]) == c
                    and r["engine"] == engine), 0) for c in configs]
        ax.bar([j + i * width for j in range(len(configs))], ms, width, label=engine)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(configs))],
                  [f"{m}\n{s:.0%} {sc[0]} b{b} t{t}" for m, s, sc, b, t in configs], fontsize=7)
    ax.set(ylabel="ms per batch (lower is better)", yscale="log")
    ax.legend(fontsize=7)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="ResNet-50 and VGG-16 at 90%%, batch 1, 2 threads")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.8, 0.9, 0.95])
    parser.add_argument("--scopes", nargs="+", choices=("uniform", "global"),
                        default=["uniform"], help="layer by layer, or one global threshold")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeat", type=int, default=7, help="interleaved samples per engine")
    parser.add_argument("--json", type=Path, default=RESULTS / "e2e_sparse.json")
    parser.add_argument("--plot", action="store_true", help="docs/img/e2e_sparse.png")
    parser.add_argument("--deepsparse-python", help="interpreter with deepsparse installed")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.sparsities, args.batches, args.threads = (["resnet50", "vgg16"], [0.9],
                                                                    [1], [2])
    bad = [s for s in args.sparsities if not 0 <= s < 1]
    if bad or min(args.batches) < 1 or min(args.threads) < 1 or args.repeat < 1:
        parser.error("sparsities must be in [0, 1); batches, threads and --repeat >= 1")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    rows = []
    for name in args.models:
        for sparsity, scope in itertools.product(args.sparsities, args.scopes):
            for batch, threads in itertools.product(args.batches, args.threads):
                for row in measure(name, sparsity, batch, threads, args, scope):
                    rows.append(row)
                    print(row, flush=True)
    write_json_atomic(args.json, {"machine": machine_info(), "rows": rows})
    print(markdown_table(rows, ["model", "sparsity", "scope", "batch", "threads", "engine", "ms",
                                "best_ms", "spread", "speedup_vs_pytorch", "layers_sparse",
                                "layers", "batch_chunk", "traced_stages", "fused_blocks",
                                "load_avg"]))
    print(f"wrote {args.json}")
    if args.plot:
        plot(rows, "docs/img/e2e_sparse.png")


if __name__ == "__main__":
    main()
