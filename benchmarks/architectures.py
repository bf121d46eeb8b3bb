"""Every workflow on every shipped architecture, random init: the architecture x workflow table
of docs/architectures.md, and latency / size of each architecture against its dense model in
the same run.

    python -m benchmarks.architectures [--size test|bench] [--only NAME ...] [--threads N]

Workflows: prune (global magnitude, 80%, with the per-layer floor), nm (2:4, layers it cannot
take skipped and named), lottery (one round of iterative magnitude pruning with rewinding),
inq (5-bit INQ with retraining, packed into Pow2 modules), int8 (calibrated QDQ, verified in
onnxruntime), sparsify (90% pruned, swapped to sparse kernels where measured faster, outputs
checked against the pruned dense model), export (pruned + power-of-two model to ONNX, verified
in onnxruntime, sequence models with a dynamic sequence length). tests/test_architectures.py
runs the same functions on the `test` sizes and checks what each workflow promises.
"""

import argparse
import contextlib
import copy
import io
import json
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from benchmarks.common import RESULTS, machine_info, markdown_table, write_json
from compressor.data import Dataset
from compressor.export import ExportConfig, to_onnx
from compressor.history import history
from compressor.lottery import LotteryConfig, LotteryRun
from compressor.models import build_model
from compressor.pruning import (
    fold_masks,
    get_masks,
    is_nm_sparse,
    prune_global,
    prune_layerwise,
    prune_nm,
)
from compressor.pruning.selection import compressible_, layer_rates, prunable_parameters
from compressor.quantization import (
    INQConfig,
    Int8Config,
    convert_to_pow2,
    quantize_,
    quantize_int8,
)
from compressor.sparse import SparsifyConfig, sparsify_
from compressor.timing import paired_medians

VOCAB = 64
TOKENS = {"bert", "gpt", "lstm_lm", "onlstm_lm"}  # token inputs (B, T): dynamic T on export
LM = {"gpt", "lstm_lm", "onlstm_lm"}  # targets (B, T): the loss hook's sequence cross-entropy
SIZES = {
    "test": {
        "resnet18": dict(width=8, feature_shape=(3, 32, 32), num_classes=10),
        "resnet50": dict(width=8, blocks=(1, 1, 1, 1), feature_shape=(3, 32, 32),
                         num_classes=10),
        "mobilenet_v2": dict(width_mult=0.1, feature_shape=(3, 16, 16), num_classes=10),
        "vit": dict(feature_shape=(3, 16, 16), patch_size=4, dim=32, depth=2, heads=4,
                    mlp_dim=64, num_classes=10),
        "bert": dict(feature_shape=(10,), vocab_size=VOCAB, dim=32, depth=2, heads=4,
                     mlp_dim=64, num_classes=3),
        "gpt": dict(feature_shape=(10,), num_classes=VOCAB, dim=32, depth=2, heads=4,
                    mlp_dim=64),
        "lstm_lm": dict(feature_shape=(10,), num_classes=VOCAB, embedding=16, hidden=32,
                        layers=1),
        "onlstm_lm": dict(feature_shape=(8,), num_classes=VOCAB, embedding=16, hidden=32,
                          chunk=4, layers=1),
        "conv1d": dict(feature_shape=(1, 40), num_classes=10, width=16),
    },
    "bench": {
        "resnet18": dict(width=32, feature_shape=(3, 64, 64), num_classes=100),
        "resnet50": dict(width=32, feature_shape=(3, 64, 64), num_classes=100),
        "mobilenet_v2": dict(width_mult=0.5, feature_shape=(3, 96, 96), num_classes=100),
        "vit": dict(feature_shape=(3, 64, 64), patch_size=8, dim=192, depth=4, heads=3,
                    mlp_dim=768, num_classes=100),
        "bert": dict(feature_shape=(64,), vocab_size=2000, dim=256, depth=4, heads=4,
                     mlp_dim=1024, num_classes=3),
        "gpt": dict(feature_shape=(64,), num_classes=2000, dim=256, depth=4, heads=4,
                    mlp_dim=1024),
        "lstm_lm": dict(feature_shape=(64,), num_classes=2000, embedding=256, hidden=512),
        "onlstm_lm": dict(feature_shape=(64,), num_classes=2000, embedding=256, hidden=512,
                          chunk=8),
        "conv1d": dict(feature_shape=(8, 256), num_classes=10, width=64),
    },
}
FACTORY = {"conv1d": "conv2"}  # the 1-D CNN is Conv-2 on (C, L) signals
WORKFLOWS = ("prune", "nm", "lottery", "inq", "int8", "sparsify", "export")


def build(name: str, size: str = "test", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(FACTORY.get(name, name), **SIZES[size][name])


def make_data(name: str, size: str = "test", n: int = 64, seed: int = 0) -> Dataset:
    """Random inputs and labels shaped like the architecture's data (tokens for the text
    models, next-token targets (B, T) for the language models)."""
    kwargs = SIZES[size][name]
    shape, classes = tuple(kwargs["feature_shape"]), kwargs["num_classes"]
    gen = torch.Generator().manual_seed(seed)
    if name in TOKENS:
        vocab = kwargs.get("vocab_size", classes)
        x = torch.randint(0, vocab, (n, *shape), generator=gen)
    else:
        x = torch.randn(n, *shape, generator=gen)
    y = torch.randint(0, classes, (n, *shape) if name in LM else (n,), generator=gen)
    split = n * 3 // 4
    return Dataset(name, x[:split], y[:split], x[split:], y[split:])


def example(name: str, data: Dataset, batch: int = 2) -> torch.Tensor:
    """An input for export and timing; sequences shorter than the position table, so a
    dynamic-length export can be checked on a longer one too."""
    x = data.x_test[:batch]
    return x[:, : x.shape[1] - 2] if name in TOKENS else x


def _outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model.eval()(x)
    return out[0] if isinstance(out, tuple) else out


def _kinds(report: dict) -> dict:
    kinds = {}
    for info in report.values():
        kinds[info["action"]] = kinds.get(info["action"], 0) + 1
    return kinds


# ---- the workflows: each returns facts, never asserts ----------------------------------------

def wf_prune(name, model, data, tmp):
    report = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        masks = prune_global(model, 0.8, report=report)
    zeros = sum(int((m == 0).sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    floored = [k for k, v in report.items() if "floor" in v.get("reason", "")]
    out = _outputs(model, example(name, data))
    return {"ok": bool(torch.isfinite(out).all()), "sparsity": zeros / total,
            "min_kept": min(float(m.mean()) for m in masks.values()),
            "floored": floored, "warnings": len(caught), "weights": len(masks),
            "summary": f"{zeros / total:.0%} of {len(masks)} weights, {len(floored)} at floor"}


def wf_nm(name, model, data, tmp):
    report = {}
    masks = prune_nm(model, 2, 4, report=report)
    skipped = {k: v["reason"] for k, v in report.items() if v["action"] != "pruned 2:4"}
    out = _outputs(model, example(name, data))
    valid = all(is_nm_sparse(m, 2, 4) for m in masks.values())
    return {"ok": bool(torch.isfinite(out).all()) and bool(masks) and valid,
            "pruned": sorted(masks), "skipped": skipped,
            "summary": f"{len(masks)} 2:4, {len(skipped)} skipped"}


def wf_lottery(name, model, data, tmp, size="test"):
    cfg = LotteryConfig(rounds=1, steps=2, eval_every=2, batch_size=8, controls=(),
                        rate=0.5, output_rate=None)
    run = LotteryRun(cfg, run_dir=Path(tmp) / "lottery", data=data, progress=False,
                     model_fn=lambda: build(name, size))
    records = run.run()
    ticket = run.build_ticket()
    sparsity = [float((m == 0).float().mean()) for m in get_masks(ticket).values()]
    return {"ok": len(records) == 2, "rounds": len(records),
            "min_sparsity": min(sparsity) if sparsity else 0.0,
            "summary": f"ticket at {sum(sparsity) / max(len(sparsity), 1):.0%} per layer"}


def wf_inq(name, model, data, tmp):
    probe = copy.deepcopy(model)
    compressible_(probe)
    weights = sorted(prunable_parameters(probe))  # every connection weight, attention included
    quantize_(model, INQConfig(bits=5, portions=(0.5, 1.0), steps_per_stage=2, batch_size=8),
              data)
    layers = history(model)[-1]["layers"]
    packed = [n for n, m in model.named_modules() if type(m).__name__.startswith("Pow2")]
    unpacked = [n for n, m in model.named_modules()
                if type(m) in (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding, nn.LSTM)]
    float_storage = sorted(n for n, info in layers.items() if not info.get("packed"))
    out = _outputs(model, example(name, data))
    return {"ok": bool(torch.isfinite(out).all()), "quantized": len(layers),
            "packed": len(packed), "names": sorted(layers), "weights": weights,
            "unpacked_layers": unpacked, "float_storage": float_storage,
            "summary": f"{len(layers)} weights 5-bit, {len(packed)} packed"}


def _calibration(data: Dataset):
    return [data.x_train[i:i + 16] for i in range(0, len(data.x_train), 16)]


def wf_int8(name, model, data, tmp, threads=1, fast=False):
    report = {}
    quantized = quantize_int8(model, _calibration(data), Int8Config(calibration_batches=2),
                              report=report)
    exported = to_onnx(quantized, example(name, data), Path(tmp) / "int8.onnx",
                       ExportConfig(measure_latency=not fast, threads=threads,
                                    random_inputs=1 if fast else 2))
    kept = {k: v["reason"] for k, v in report.items() if v["action"] != "int8"}
    speed = None if fast else exported.dense_ort_latency_s / exported.ort_latency_s
    return {"ok": exported.max_error <= exported.tolerance, "int8": _kinds(report).get("int8", 0),
            "kept_float": kept, "ort_speedup": speed, "size_ratio": exported.size_ratio,
            "summary": f"{_kinds(report).get('int8', 0)} layers" + (
                "" if fast else f", ort {speed:.2f}x fp32")}


def wf_sparsify(name, model, data, tmp):
    prune_layerwise(model, layer_rates(model, 0.9))
    fold_masks(model)
    x = example(name, data)
    dense = copy.deepcopy(model)
    sparsify_(model, SparsifyConfig(), x)
    layers = history(model)[-1]["layers"]
    swapped = [k for k, v in layers.items() if v["action"] == "sparse"]
    want, got = _outputs(dense, x), _outputs(model, x)
    error = float((want - got).abs().max())
    return {"ok": error <= 1e-4 * float(want.abs().max()) + 1e-5, "max_error": error,
            "swapped": swapped, "candidates": len(layers),
            "summary": f"{len(swapped)}/{len(layers)} sparse, err {error:.1g}"}


def wf_export(name, model, data, tmp, fast=False):
    prune_layerwise(model, layer_rates(model, 0.8))
    fold_masks(model)
    convert_to_pow2(model, 5)
    dims = (1,) if name in TOKENS else ()
    exported = to_onnx(model, example(name, data), Path(tmp) / "model.onnx",
                       ExportConfig(measure_latency=False, dynamic_dims=dims,
                                    random_inputs=1 if fast else 2))
    return {"ok": exported.max_error <= exported.tolerance, "size_ratio": exported.size_ratio,
            "dynamic_dims": dims, "summary": f"{exported.size_ratio:.1f}x smaller, verified"}


RUNNERS = {"prune": wf_prune, "nm": wf_nm, "lottery": wf_lottery, "inq": wf_inq,
           "int8": wf_int8, "sparsify": wf_sparsify, "export": wf_export}


def run_workflow(name: str, workflow: str, size: str = "test", fast: bool = False) -> dict:
    """One workflow on a fresh model; errors are caught and returned as facts. `fast`: fewer
    checks of exported files and no onnxruntime timing (the tests)."""
    data, model = make_data(name, size), build(name, size)
    kwargs = {"size": size} if workflow == "lottery" else (
        {"fast": fast} if workflow in ("int8", "export") else {})
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        try:
            return RUNNERS[workflow](name, model, data, tmp, **kwargs)
        except Exception as exc:  # a failing workflow is a table cell, not a crash
            return {"ok": False, "summary": f"{type(exc).__name__}: {exc}"[:300]}


# ---- latency and size against the dense model, same run ------------------------------------

def _tensor_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def latency_and_size(name: str, size: str, threads: int) -> dict:
    """PyTorch: dense vs 90%-pruned-and-sparsified vs 5-bit power-of-two (all weights), batch
    1, interleaved samples. onnxruntime: dense fp32 file vs int8 QDQ and vs the pruned
    power-of-two file, each pair timed in the same run. Sizes: state_dict and ONNX bytes."""
    torch.set_num_threads(threads)
    data = make_data(name, size)
    x = example(name, data, batch=1)
    dense = build(name, size).eval()
    sparse = copy.deepcopy(dense)
    prune_layerwise(sparse, layer_rates(sparse, 0.9))
    fold_masks(sparse)
    sparsify_(sparse, SparsifyConfig(), x)
    pow2 = convert_to_pow2(copy.deepcopy(dense), 5).eval()
    with torch.no_grad():
        timed = paired_medians([lambda: dense(x), lambda: sparse(x), lambda: pow2(x)],
                               repeat=7, min_seconds=0.05)
    row = {"arch": name, "threads": threads, "torch_dense_ms": timed.medians[0] * 1e3,
           "torch_sparse90_x": timed.ratio(0, 1), "torch_pow2_x": timed.ratio(0, 2),
           "state_dict_pow2_x": _tensor_bytes(dense) / _tensor_bytes(pow2)}
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        try:
            int8 = wf_int8(name, build(name, size), data, tmp, threads=threads)
            row.update(ort_int8_x=int8["ort_speedup"], onnx_int8_size_x=int8["size_ratio"])
        except Exception as exc:  # reported in the table, as in the workflow table
            row["ort_int8_x"] = f"failed: {type(exc).__name__}"
        compact = build(name, size)
        prune_layerwise(compact, layer_rates(compact, 0.8))
        fold_masks(compact)
        convert_to_pow2(compact, 5)
        report = to_onnx(compact, x, Path(tmp) / "c.onnx",
                         ExportConfig(measure_latency=True, threads=threads))
        row.update(ort_dense_ms=report.dense_ort_latency_s * 1e3,
                   ort_pruned_pow2_x=report.dense_ort_latency_s / report.ort_latency_s,
                   onnx_dense_kb=report.dense_bytes / 1024,
                   onnx_pruned_pow2_size_x=report.size_ratio,
                   same_ort_graph=report.same_ort_graph_as_dense)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="bench")
    parser.add_argument("--only", nargs="+", choices=sorted(SIZES["test"]))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-workflows", action="store_true", help="latency and size only")
    parser.add_argument("--no-latency", action="store_true", help="the workflow table only")
    parser.add_argument("--append", action="store_true",
                        help="merge into the saved JSON (architectures run again replace theirs)")
    args = parser.parse_args(argv)
    names = args.only or list(SIZES[args.size])
    table, timing = [], []
    for name in names:
        if not args.no_workflows:
            torch.set_num_threads(args.threads)
            cells = {w: run_workflow(name, w, args.size) for w in WORKFLOWS}
            table.append({"arch": name, **{w: ("ok: " if c["ok"] else "FAILED: ") + c["summary"]
                                          for w, c in cells.items()}})
            print(table[-1], flush=True)
        if not args.no_latency:
            timing.append(latency_and_size(name, args.size, args.threads))
            print(timing[-1], flush=True)
    if args.append:
        table, timing = _merged(args.size, table, timing)
    path = write_json(f"architectures_{args.size}", {"size": args.size, "configs": SIZES[
        args.size], "threads": args.threads, "workflows": table, "latency": timing})
    print(f"machine: {machine_info()['cpu']}, {args.threads} threads; wrote {path}")
    if table:
        print(markdown_table(table, ["arch", *WORKFLOWS]))
    if timing:
        print(markdown_table(timing, [k for k in timing[0] if k != "threads"]))
    return 0


def _merged(size: str, table: list, timing: list) -> tuple[list, list]:
    path = RESULTS / f"architectures_{size}.json"
    if not path.exists():
        return table, timing
    old = json.loads(path.read_text())
    order = list(SIZES[size])

    def merge(saved, new):
        rows = {r["arch"]: r for r in saved} | {r["arch"]: r for r in new}
        return [rows[a] for a in order if a in rows]

    return merge(old.get("workflows", []), table), merge(old.get("latency", []), timing)


if __name__ == "__main__":
    raise SystemExit(main())
