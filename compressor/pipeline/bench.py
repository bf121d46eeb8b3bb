"""Latency of a compressed model against its dense original, measured side by side in one run:
whole model and per layer in PyTorch, and the two ONNX files in onnxruntime."""

from pathlib import Path

import torch
from torch import nn

from compressor.export import verify
from compressor.pipeline.modelfile import load_model
from compressor.pruning import fold_masks
from compressor.timing import paired_medians

# Leaf modules whose time is worth a row: the ones holding a layer's weights.
_LAYER_HINTS = ("Conv", "Linear", "Sparse", "Pow2", "Int8", "LSTM", "Attention", "Embedding")


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    out = {}
    for name, module in model.named_modules():
        kind = type(module).__name__
        if name and any(h in kind for h in _LAYER_HINTS) and not any(
                name.startswith(done + ".") for done in out):
            out[name] = module
    return out


def _forward_calls(model: nn.Module, names, x: torch.Tensor) -> tuple[dict[str, tuple], list]:
    """One forward on x: the first inputs of the modules named in `names`, and the names of all
    modules (the root left out) in the order it calls them, repeats kept."""
    wanted, seen, order, handles = set(names), {}, [], []

    def record(name, args):
        order.append(name)
        if name in wanted:
            seen.setdefault(name, args)

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_pre_hook(
                lambda m, args, name=name: record(name, args)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return seen, order


def _dense_chain(name: str, order: list[str], dense_modules: dict, compressed_modules: dict
                 ) -> list[str]:
    """The dense modules a compressed layer stands for: its same-named twin and those right after
    the twin's first call that the compressed model replaced by nn.Identity (a BatchNorm and an
    activation folded into a sparse conv), so that a fused layer is timed against the dense
    computation it replaced, not against the dense conv alone. A residual add is no module: a
    layer that fuses one is timed without it on the dense side. `name` is one the forward that
    recorded `order` called."""
    chain = [name]
    for later in order[order.index(name) + 1:]:
        if later.startswith(name + "."):
            continue  # the twin's own submodules, called inside it
        if not (isinstance(compressed_modules.get(later), nn.Identity)
                and not isinstance(dense_modules[later], nn.Identity)):
            break
        chain.append(later)
    return chain


def _run_chain(modules: list[nn.Module], args: tuple):
    out = modules[0](*args)
    for module in modules[1:]:
        out = module(out)
    return out


def torch_latency(models: dict[str, nn.Module], x: torch.Tensor, repeat: int = 15) -> dict:
    """{name: median seconds} of each model on x, samples interleaved."""
    for model in models.values():
        model.eval()
    with torch.no_grad():
        timed = paired_medians([lambda m=m: m(x) for m in models.values()], warmup=3,
                               repeat=repeat, min_seconds=0.02)
    return {name: {"median_s": med, "spread": spread} for name, med, spread in
            zip(models, timed.medians, timed.spreads, strict=True)}


def layer_latency(dense: nn.Module, compressed: nn.Module, x: torch.Tensor,
                  repeat: int = 9) -> list[dict]:
    """Per layer of the compressed model: its time and the same-named dense layer's time (with
    the dense modules it absorbed: _dense_chain, named in "dense_of"), each on the input it
    receives in its own model's forward. Every layer's samples are interleaved
    with every other's (one round takes one sample of each), so that a stretch of a busy shared
    machine slows all rows alike instead of a few layers' rows wholesale."""
    layers = _layers(compressed)
    got, _ = _forward_calls(compressed, layers, x)
    dense_modules = dict(dense.named_modules())
    compressed_modules = dict(compressed.named_modules())
    dense_in, order = _forward_calls(dense, [n for n in layers if n in dense_modules], x)
    rows, fns = [], []  # fns: (row, "dense_ms" | "compressed_ms", callable)
    for name, module in layers.items():
        if name not in got:
            continue  # not called on this input
        row = {"layer": name, "kind": type(module).__name__}
        if name in dense_modules and name in dense_in:
            chain = _dense_chain(name, order, dense_modules, compressed_modules)
            if len(chain) > 1:
                row["dense_of"] = chain
            fns.append((row, "dense_ms", lambda c=[dense_modules[n] for n in chain],
                        a=dense_in[name]: _run_chain(c, a)))
        fns.append((row, "compressed_ms", lambda m=module, a=got[name]: m(*a)))
        rows.append(row)
    with torch.no_grad():
        timed = paired_medians([fn for _, _, fn in fns], warmup=2, repeat=repeat,
                               min_seconds=0.005)
    for (row, key, _), median in zip(fns, timed.medians, strict=True):
        row[key] = median * 1e3
    for row in rows:
        if "dense_ms" in row:
            row["speedup"] = row["dense_ms"] / max(row["compressed_ms"], 1e-12)
    return rows


def onnx_latency(dense_path: str, compressed_path: str, x: torch.Tensor, threads: int) -> dict:
    """Median seconds of the dense and the compressed ONNX file in onnxruntime, interleaved."""
    sessions = [verify.session(dense_path, threads, spinning=False),
                verify.session(compressed_path, threads, spinning=False)]
    feed = verify.feeds(sessions[1], (x,))
    dense_s, compressed_s = verify.paired_median_latency(sessions, feed)
    return {"dense_s": dense_s, "compressed_s": compressed_s,
            "speedup": dense_s / max(compressed_s, 1e-12)}


def benchmark(run_dir, final_model_path, data, batch_sizes, threads: int | None = None) -> dict:
    """The run's benchmark: PyTorch dense vs final model and onnxruntime dense vs final file at
    every batch size, plus per-layer times at the first batch size; all in this one call."""
    threads = threads or torch.get_num_threads()
    dense, _ = load_model(Path(run_dir) / "dense.pt")
    final, _ = load_model(final_model_path)
    for m in (dense, final):
        fold_masks(m)
    rows = []
    for batch in batch_sizes:
        x = data.x_test[:batch].contiguous()
        t = torch_latency({"dense": dense, "compressed": final}, x)
        o = onnx_latency(str(Path(run_dir) / "dense.onnx"), str(Path(run_dir) / "model.onnx"),
                         x, threads)
        rows.append({"batch": batch, "threads": threads,
                     "torch_dense_ms": t["dense"]["median_s"] * 1e3,
                     "torch_compressed_ms": t["compressed"]["median_s"] * 1e3,
                     "torch_speedup": t["dense"]["median_s"] / t["compressed"]["median_s"],
                     "ort_dense_ms": o["dense_s"] * 1e3,
                     "ort_compressed_ms": o["compressed_s"] * 1e3, "ort_speedup": o["speedup"]})
    layers = layer_latency(dense, final, data.x_test[:batch_sizes[0]].contiguous())
    return {"whole_model": rows, "layers": layers, "layer_batch": batch_sizes[0],
            "threads": threads}
