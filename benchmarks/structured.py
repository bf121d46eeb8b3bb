"""Structured pruning: size, MACs and latency vs dense, and accuracy by criterion.

    python -m benchmarks.structured [--quick] [--json PATH] [--only resnet50 ...] [--part latency
        accuracy] [--threads 2] [--seeds 3]

latency: every shipped architecture (shipped sizes; VGG at 112 px) at 30/50/70% of channels
removed (layerwise L1, round_to 8): parameters, MACs, PyTorch and onnxruntime latency at batch 1
and 16, each ratio timed interleaved with its dense model in the same run (compressor.timing).
With torch-pruning installed, the same CNNs pruned by it (L1, same ratio) are timed alongside.
robustness: the layer-robustness measures (Zhang et al.) of an MLP (3 x 256) on MNIST-1D and
of resnet_small on `shapes`, with their heatmaps (PNG beside the JSON).
accuracy: resnet_small on `shapes`: train dense, then prune 50% by Taylor, L1 and random
(iterative, Molchanov: rounds of pruning + fine-tuning, then a final fine-tune; equal steps and
equal FLOPs for all three, as layerwise ratios give the same widths), per seed.
Run timings under `flock -x /tmp/compressor-cpu.lock` (docs/structured.md says so).
"""

import os

# Under contention (this 2-core machine is shared) spinning OpenMP threads make 2-thread
# timings erratic (measured: ResNet-50 spread 2.4 vs 0.36 with PASSIVE); set before torch loads
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from benchmarks.common import RESULTS, machine_info, markdown_table, write_json
from compressor.data import load_dataset
from compressor.export import ExportConfig, to_onnx
from compressor.io import write_json_atomic
from compressor.models import build_model
from compressor.robustness import (
    RobustnessConfig,
    budgets,
    heatmap,
    layer_robustness,
    train_with_checkpoints,
)
from compressor.structured import StructuredConfig, macs, prune_channels_
from compressor.timing import paired_medians
from compressor.train import TrainConfig, evaluate, fit

try:  # optional: the reference implementation side by side
    import torch_pruning as tp
except ImportError:
    tp = None

ARCHS = {  # name: (factory kwargs, example input shape without batch, token ids?)
    "resnet18": ({}, (3, 224, 224), False),
    "resnet50": ({}, (3, 224, 224), False),
    "vgg16_bn": ({"feature_shape": (3, 112, 112)}, (3, 112, 112), False),
    "mobilenet_v2": ({}, (3, 224, 224), False),
    "resnet_small": ({"feature_shape": (3, 16, 16)}, (3, 16, 16), False),
    "vit": ({"feature_shape": (3, 224, 224), "patch_size": 16, "dim": 192, "depth": 12,
             "heads": 3, "mlp_dim": 768, "num_classes": 1000}, (3, 224, 224), False),
    "bert": ({"feature_shape": (128,), "vocab_size": 1000, "dim": 256, "depth": 4, "heads": 4,
              "mlp_dim": 1024}, (128,), True),
    "gpt": ({"feature_shape": (128,), "num_classes": 1000, "dim": 256, "depth": 4, "heads": 4,
             "mlp_dim": 1024}, (128,), True),
    "lstm_lm": ({"feature_shape": (64,), "num_classes": 1000, "embedding": 256, "hidden": 512,
                 "dropout": 0.0}, (64,), True),
    "onlstm_lm": ({"feature_shape": (64,), "num_classes": 1000, "embedding": 128, "hidden": 256,
                   "chunk": 8, "dropout": 0.0, "dropconnect": 0.0}, (64,), True),
}
QUICK = ["resnet18", "resnet50", "mobilenet_v2", "gpt"]
TP_ARCHS = {"resnet18", "resnet50", "vgg16_bn", "mobilenet_v2", "resnet_small"}


def _inputs(name: str, batch: int) -> torch.Tensor:
    _, shape, tokens = ARCHS[name]
    gen = torch.Generator().manual_seed(batch)
    if tokens:
        return torch.randint(0, 1000, (batch, *shape), generator=gen)
    return torch.rand(batch, *shape, generator=gen)


def _dense(name: str) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, **ARCHS[name][0]).eval()


def _ours(dense: nn.Module, ratio: float, x: torch.Tensor) -> nn.Module:
    model = copy.deepcopy(dense)
    return prune_channels_(model, StructuredConfig(ratio=ratio, round_to=8), x).eval()


def _theirs(dense: nn.Module, ratio: float, x: torch.Tensor) -> nn.Module:
    model = copy.deepcopy(dense)
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=ratio, ignored_layers=[last], round_to=8)
    pruner.step()
    return model.eval()


def _session(model: nn.Module, x: torch.Tensor, folder: Path, tag: str, threads: int):
    path = folder / f"{tag}.onnx"
    to_onnx(model, x, path, ExportConfig(exporter="torchscript", dynamic_batch=True,
                                         measure_latency=False, random_inputs=1, encodings=()))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    # idle sessions must not spin: their threads would steal the cores from the one being timed
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: batch.numpy()})


def _times(fns, repeat: int) -> list[float]:
    return paired_medians(fns, warmup=3, repeat=repeat, min_seconds=0.2).medians


def _put(rows, runtime: str, batch: str, times: list[float]) -> None:
    for row, t in zip(rows, times, strict=True):
        row[f"{runtime}_{batch}_ms"] = t * 1e3
        row[f"{runtime}_{batch}_speedup"] = times[0] / t


def measure_arch(name: str, ratios, threads: int, repeat: int, use_tp: bool) -> list[dict]:
    torch.set_num_threads(threads)
    dense = _dense(name)
    x1, x16 = _inputs(name, 1), _inputs(name, 16)
    variants = [("dense", 0.0, dense)]
    for r in ratios:
        variants.append(("compressor", r, _ours(dense, r, x1)))
        if use_tp and tp is not None and name in TP_ARCHS:
            variants.append(("torch-pruning", r, _theirs(dense, r, x1)))
    rows = [{"arch": name, "impl": impl, "ratio": r,
             "params": sum(p.numel() for p in m.parameters()), "macs": macs(m, x1)}
            for impl, r, m in variants]
    batches = (("b1", x1), ("b16", x16))
    with torch.no_grad():  # PyTorch first, while no onnxruntime session exists
        for batch, x in batches:
            times = _times([lambda m=m, x=x: m(x) for _, _, m in variants], repeat)
            _put(rows, "torch", batch, times)
    with tempfile.TemporaryDirectory() as tmp:
        runs = [_session(m, x1, Path(tmp), f"v{k}", threads) for k, (_, _, m) in
                enumerate(variants)]
        for batch, x in batches:
            _put(rows, "ort", batch, _times([lambda f=f, x=x: f(x) for f in runs], repeat))
    for row in rows:
        row["threads"] = threads
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()},
              flush=True)
    return rows


def accuracy_seed(seed: int, dense_steps: int, rounds: int, round_steps: int,
                  final_steps: int, data) -> list[dict]:
    torch.manual_seed(seed)
    dense = build_model("resnet_small", feature_shape=data.feature_shape,
                        num_classes=data.num_classes)
    fit(dense, data, TrainConfig(steps=dense_steps, batch_size=32, lr=2e-3, seed=seed,
                                 eval_every=0))
    rows = [{"seed": seed, "criterion": "dense", "test_acc": evaluate(dense, data.x_test,
                                                                      data.y_test),
             "macs": macs(dense, data.x_test[:1])}]
    for criterion in ("taylor", "l1", "random"):
        model = copy.deepcopy(dense)
        cfg = StructuredConfig(ratio=0.5, criterion=criterion, iterations=rounds,
                               finetune_steps=round_steps, batch_size=32, lr=1e-3,
                               taylor_batches=8, seed=seed)
        start = time.perf_counter()
        prune_channels_(model, cfg, data.x_test[:1], data=data)
        one_pass = copy.deepcopy(model)
        fit(model, data, TrainConfig(steps=final_steps, batch_size=32, lr=1e-3, seed=seed + 99,
                                     eval_every=0))
        rows.append({"seed": seed, "criterion": criterion,
                     "acc_after_rounds": evaluate(one_pass, data.x_test, data.y_test),
                     "test_acc": evaluate(model, data.x_test, data.y_test),
                     "macs": macs(model, data.x_test[:1]),
                     "seconds": time.perf_counter() - start})
        print(rows[-1], flush=True)
    return rows


def robustness_study(name: str, data, steps: int, checkpoints, out_dir: Path) -> dict:
    """The paper's two measures per layer of a trained model, and its heatmap PNG."""
    def fresh(seed):
        torch.manual_seed(seed)
        return build_model(name, feature_shape=data.feature_shape, num_classes=data.num_classes)

    model = fresh(0)
    saved = train_with_checkpoints(model, data, TrainConfig(steps=steps, batch_size=32, lr=2e-3,
                                                            eval_every=0), checkpoints)
    result = layer_robustness(model, saved, data, RobustnessConfig(checkpoints=checkpoints,
                                                                   trials=3), init_fn=fresh)
    png = heatmap(result, out_dir / f"robustness_{name}.png",
                  f"{name} on {data.name}: test error after resetting one layer "
                  f"(trained {result.base_error:.3f})")
    for layer, row, rand in zip(result.layers, result.reinit, result.rerandom, strict=True):
        print(f"{name} {layer}: reinit {[round(e, 3) for e in row]} rerandom {rand:.3f}")
    return {**result.to_dict(), "heatmap": png, "steps_trained": steps,
            "channel_budgets": budgets(result, "channels")}


def summarise_accuracy(rows: list[dict]) -> list[dict]:
    out = []
    for criterion in ("dense", "taylor", "l1", "random"):
        accs = [r["test_acc"] for r in rows if r["criterion"] == criterion]
        if accs:
            out.append({"criterion": criterion, "mean_acc": statistics.mean(accs),
                        "spread": (max(accs) - min(accs)) / 2, "seeds": len(accs),
                        "macs": next(r["macs"] for r in rows if r["criterion"] == criterion)})
    return out


def accuracy_part(args) -> dict:
    torch.set_num_threads(args.threads)
    data = load_dataset("shapes")
    seeds = args.seeds or (1 if args.quick else 3)
    steps = (150, 2, 25, 50) if args.quick else (300, 4, 25, 100)
    rows = [r for s in range(seeds) for r in accuracy_seed(s, *steps, data)]
    out = {"rows": rows, "summary": summarise_accuracy(rows), "dense_steps": steps[0],
           "rounds": steps[1], "round_steps": steps[2], "final_steps": steps[3]}
    print(markdown_table(out["summary"], ["criterion", "mean_acc", "spread", "seeds", "macs"]))
    return out


def robustness_part(args) -> dict:
    torch.set_num_threads(args.threads)
    out_dir = args.json.parent if args.json else RESULTS
    mlp_steps = (0, 10, 100) if args.quick else (0, 1, 10, 100, 1000)
    return {"mlp": robustness_study("mlp", load_dataset("mnist1d"), 500 if args.quick else 3000,
                                    mlp_steps, out_dir),
            "resnet_small": robustness_study("resnet_small", load_dataset("shapes"),
                                             150 if args.quick else 300, (0, 1, 10, 100),
                                             out_dir)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a subset in a few minutes")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--only", nargs="+", choices=sorted(ARCHS), help="these architectures")
    parser.add_argument("--part", nargs="+", choices=("latency", "accuracy", "robustness"),
                        default=["latency", "accuracy", "robustness"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=None, help="accuracy seeds (default 3)")
    parser.add_argument("--no-torch-pruning", action="store_true")
    args = parser.parse_args(argv)
    ratios = (0.5,) if args.quick else (0.3, 0.5, 0.7)
    payload = {"machine": machine_info(), "threads": args.threads, "ratios": ratios,
               "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
               "torch_pruning": getattr(tp, "__version__", None)}
    if "latency" in args.part:
        names = args.only or (QUICK if args.quick else list(ARCHS))
        rows = []
        for name in names:
            rows += measure_arch(name, ratios, args.threads, 5 if args.quick else 7,
                                 not args.no_torch_pruning)
        payload["latency"] = rows
        print(markdown_table(rows, ["arch", "impl", "ratio", "params", "macs", "torch_b1_speedup",
                                    "ort_b1_speedup", "torch_b16_speedup", "ort_b16_speedup"]))
    if "accuracy" in args.part:
        payload["accuracy"] = accuracy_part(args)
    if "robustness" in args.part:
        payload["robustness"] = robustness_part(args)
    path = write_json_atomic(args.json, payload) if args.json else write_json(
        "structured", {k: v for k, v in payload.items() if k != "machine"})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    raise SystemExit(main())
