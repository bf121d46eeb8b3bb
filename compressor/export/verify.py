"""Checks run on every export: onnx.checker, exact weight decoding, onnxruntime against PyTorch,
and onnxruntime latency of the compact file against the dense fp32 file in the same run."""

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper, numpy_helper

from compressor.errors import CompressorError
from compressor.timing import paired_medians


def densified(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with sparse initializers written as dense ones (what onnxruntime does on load), so
    strict shape inference can type-check the graph: the ONNX checker types a sparse initializer
    as sparse_tensor, which no operator accepts."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for sparse in out.graph.sparse_initializer:
        values, index = numpy_helper.to_array(sparse.values), numpy_helper.to_array(sparse.indices)
        dense = np.zeros(int(np.prod(sparse.dims)), dtype=values.dtype)
        dense[index] = values
        out.graph.initializer.append(
            numpy_helper.from_array(dense.reshape(tuple(sparse.dims)), sparse.values.name))
    del out.graph.sparse_initializer[:]
    return out


def check(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model)
    onnx.checker.check_model(densified(model), full_check=True)


def session(model: onnx.ModelProto | str, threads: int = 1,
            spinning: bool = True) -> ort.InferenceSession:
    """An onnxruntime CPU session. spinning=False: its idle threads sleep instead of spinning,
    for sessions timed interleaved with other work. (Spinning is onnxruntime's default and its
    fastest alone, but measured on a 2-core machine, the next call of another engine right after
    a run took 46.6 ms instead of 22.4 while its threads spun.)"""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def feeds(sess: ort.InferenceSession, inputs: tuple) -> dict:
    names = [i.name for i in sess.get_inputs()]
    if len(names) != len(inputs):
        raise CompressorError(f"the ONNX graph takes {len(names)} inputs but {len(inputs)} "
                              "example inputs were given (inputs that do not change the "
                              "output are dropped by the exporter)")
    return {name: t.detach().cpu().numpy() for name, t in zip(names, inputs, strict=True)}


def flatten_outputs(out) -> list[torch.Tensor]:
    """PyTorch outputs in the order the exporter flattens them (nested tuples/lists/dicts)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for item in out for t in flatten_outputs(item)]
    return []


def max_error(reference: list[torch.Tensor], got: list[np.ndarray]) -> tuple[float, float]:
    """(max |ort - torch|, max |torch|) over all outputs."""
    if len(reference) != len(got):
        raise CompressorError(f"onnxruntime returned {len(got)} outputs, PyTorch {len(reference)}")
    err = scale = 0.0
    for ref, out in zip(reference, got, strict=True):
        ref = ref.detach().float().cpu().numpy()
        if ref.shape != out.shape:
            raise CompressorError(f"output shape {out.shape} from onnxruntime != PyTorch's "
                                  f"{ref.shape}")
        if ref.size:
            err = max(err, float(np.max(np.abs(out.astype(np.float64) - ref))))
            scale = max(scale, float(np.max(np.abs(ref))))
    return err, scale


def random_like(example: torch.Tensor, gen: torch.Generator, grow: tuple[int, ...] = ()
                ) -> torch.Tensor:
    """A random input of the example's dtype, in its value range, of its shape with each dim
    in `grow` changed (to exercise dynamic dims): the batch (dim 0) one longer, other dims one
    shorter (a sequence may not outgrow a model's position table), or longer when of size 1."""
    for dim in grow:
        if dim >= example.dim():
            continue
        if dim > 0 and example.shape[dim] > 1:
            example = example.narrow(dim, 0, example.shape[dim] - 1)
        else:
            example = torch.cat([example, example.narrow(dim, 0, 1)], dim=dim)
    if example.is_floating_point():
        spread = float(example.float().std()) if example.numel() > 1 else 1.0
        noise = torch.randn(example.shape, generator=gen) * max(spread, 1e-3)
        return (noise + float(example.float().mean())).to(example.dtype)
    if example.dtype == torch.bool:
        return torch.randint(0, 2, example.shape, generator=gen).bool()
    low, high = int(example.min()), int(example.max())
    return torch.randint(low, high + 1, example.shape, generator=gen).to(example.dtype)


def _producers(model: onnx.ModelProto, outputs: list[str]) -> list:
    """The nodes needed to compute `outputs`, in graph order."""
    nodes = list(model.graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    needed, stack = set(), list(outputs)
    while stack:
        index = producer.get(stack.pop())
        if index is not None and index not in needed:
            needed.add(index)
            stack.extend(nodes[index].input)
    return [nodes[i] for i in sorted(needed)]


def decoded_weights(model: onnx.ModelProto, names: dict[str, int]) -> dict[str, np.ndarray]:
    """Run only the decode nodes of a compact model in onnxruntime: {name: onnx dtype} ->
    {name: dense array}."""
    if not names:
        return {}
    graph = helper.make_graph(
        _producers(model, list(names)),
        "decode", [], [helper.make_tensor_value_info(n, dtype, None)
                       for n, dtype in names.items()],
        initializer=list(model.graph.initializer),
        sparse_initializer=list(model.graph.sparse_initializer))
    decoder = helper.make_model(graph, opset_imports=list(model.opset_import),
                                ir_version=model.ir_version)
    values = session(decoder).run(list(names), {})
    return dict(zip(names, values, strict=True))


def optimized_ops(path: str) -> list[str]:
    """Operator types of the graph onnxruntime runs after its basic (constant-folding) passes:
    equal lists for the compact and the dense file mean the decoders were folded away at load."""
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        return [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]


def paired_median_latency(sessions: list, feed: dict, repeat: int = 15,
                          min_seconds: float = 0.01) -> list[float]:
    """Median seconds per run of each session after warm-up, samples interleaved between the
    sessions (compressor.timing), so a machine that gets busier slows all of them alike. Make the
    sessions with spinning=False, or each one's idle threads slow the next one's run."""
    timed = paired_medians([lambda s=s: s.run(None, feed) for s in sessions], warmup=3,
                           repeat=repeat, min_seconds=min_seconds)
    return timed.medians
