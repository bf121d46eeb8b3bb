"""Rewrite a dense fp32 ONNX graph into QDQ form from int8 quantization parameters.

Each quantized layer's weight initializer (matched by value: it holds the layer's dequantized
weight, in whichever orientation the exporter chose) becomes int8 codes + per-channel scales feeding
a DequantizeLinear whose output keeps the weight's name, so the consuming Conv/Gemm/MatMul is
unchanged. The layer's activation input gets QuantizeLinear -> DequantizeLinear with its calibrated
uint8 scale and zero point, and so does its output (after the bias Add when the exporter wrote a
Linear as MatMul + Add): onnxruntime fuses DQ -> Gemm/MatMul/Conv -> Q into its int8 kernels
(QGemm, QLinearConv) only when the output is quantized too; without the output Q it runs the
layer in fp32 and dequantizes the weights at every run (measured: slower than the fp32 file).
PyTorch's own fake-quant export rejects symmetric [-127, 127] ranges (checked with torch 2.13),
so we write the nodes ourselves.
"""

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compressor.errors import CompressorError

WEIGHT_OPS = {"Conv", "Gemm", "MatMul"}


@dataclass
class QuantSpec:
    """One quantized layer: int8 weight codes [out, ...], per-out-channel scales, and the uint8
    affine parameters of its input activation."""

    name: str
    weight_int8: np.ndarray
    weight_scale: np.ndarray
    act_scale: float
    act_zero_point: int
    out_scale: float = 0.0  # 0: the layer's output stays float
    out_zero_point: int = 0

    def dequantized(self) -> np.ndarray:
        shape = (-1,) + (1,) * (self.weight_int8.ndim - 1)
        return self.weight_int8.astype(np.float32) * self.weight_scale.reshape(shape)


def _orientation(weight: np.ndarray, spec: QuantSpec) -> int | None:
    """Axis of the output channels of `weight` if it is the spec's dequantized weight (as stored
    by the layer, axis 0, or transposed for MatMul, axis 1); None otherwise."""
    deq = spec.dequantized()
    if weight.shape == deq.shape and np.array_equal(weight, deq):
        return 0
    if deq.ndim == 2 and weight.shape == deq.T.shape and np.array_equal(weight, deq.T):
        return 1
    return None


def _scalar(name: str, value, dtype) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value, dtype=dtype), name)


def _weight_dq(name: str, spec: QuantSpec, axis: int) -> tuple[list, list]:
    codes = spec.weight_int8 if axis == 0 else spec.weight_int8.T
    inits = [numpy_helper.from_array(np.ascontiguousarray(codes), f"{name}_int8"),
             numpy_helper.from_array(spec.weight_scale.astype(np.float32), f"{name}_scale"),
             numpy_helper.from_array(np.zeros_like(spec.weight_scale, dtype=np.int8),
                                     f"{name}_zero_point")]
    node = helper.make_node("DequantizeLinear", [f"{name}_int8", f"{name}_scale",
                                                 f"{name}_zero_point"], [name],
                            name=f"{name}_DequantizeLinear", axis=axis)
    return inits, [node]


def _activation_qdq(tensor: str, spec: QuantSpec, tag: str) -> tuple[list, list, str]:
    scale, zero = f"{tag}_act_scale", f"{tag}_act_zero_point"
    inits = [_scalar(scale, spec.act_scale, np.float32),
             _scalar(zero, spec.act_zero_point, np.uint8)]
    nodes = [helper.make_node("QuantizeLinear", [tensor, scale, zero], [f"{tag}_act_q"],
                              name=f"{tag}_QuantizeLinear"),
             helper.make_node("DequantizeLinear", [f"{tag}_act_q", scale, zero],
                              [f"{tag}_act_dq"], name=f"{tag}_act_DequantizeLinear")]
    return inits, nodes, f"{tag}_act_dq"


def _output_producer(nodes: list, index: int, constants: dict) -> int:
    """Index of the node whose output is the layer's output: nodes[index], or the bias Add that
    is the only consumer of a MatMul's output."""
    node = nodes[index]
    if node.op_type != "MatMul":
        return index
    users = [i for i, n in enumerate(nodes) if node.output[0] in n.input]
    if len(users) == 1:
        add = nodes[users[0]]
        if add.op_type == "Add" and any(i in constants for i in add.input
                                        if i != node.output[0]):
            return users[0]
    return index


def _output_qdq(producer, spec: QuantSpec, tag: str) -> tuple[list, list]:
    """Q -> DQ on the producer's output, which keeps its name (the producer writes to a new
    tensor), so no consumer and no graph output changes."""
    out = producer.output[0]
    producer.output[0] = f"{tag}_out_float"
    scale, zero = f"{tag}_out_scale", f"{tag}_out_zero_point"
    inits = [_scalar(scale, spec.out_scale, np.float32),
             _scalar(zero, spec.out_zero_point, np.uint8)]
    nodes = [helper.make_node("QuantizeLinear", [producer.output[0], scale, zero],
                              [f"{tag}_out_q"], name=f"{tag}_out_QuantizeLinear"),
             helper.make_node("DequantizeLinear", [f"{tag}_out_q", scale, zero], [out],
                              name=f"{tag}_out_DequantizeLinear")]
    return inits, nodes


def insert_qdq(model: onnx.ModelProto, specs: list[QuantSpec]) -> onnx.ModelProto:
    """A QDQ copy of `model`; every spec must match exactly one weight initializer."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    weights = {t.name: t for t in out.graph.initializer}
    constants = dict(weights)
    used, new_inits, before, after = set(), [], {}, {}
    graph_nodes = list(out.graph.node)
    for index, node in enumerate(graph_nodes):
        weight = weights.get(node.input[1]) if node.op_type in WEIGHT_OPS else None
        match = _match(numpy_helper.to_array(weight), specs, used) if weight is not None else None
        if match is None:
            continue
        spec, axis = match
        used.add(spec.name)
        inits, dq = _weight_dq(weight.name, spec, axis)
        del weights[weight.name]
        act_inits, qdq, dq_input = _activation_qdq(node.input[0], spec, weight.name)
        new_inits += inits + act_inits
        before[index] = dq + qdq
        node.input[0] = dq_input
        if spec.out_scale > 0:
            producer = _output_producer(graph_nodes, index, constants)
            out_inits, out_nodes = _output_qdq(graph_nodes[producer], spec, weight.name)
            new_inits += out_inits
            after[producer] = out_nodes
    missing = [s.name for s in specs if s.name not in used]
    if missing:
        raise CompressorError(f"int8 layers {missing} were not found as Conv/Gemm/MatMul weights "
                              "in the exported graph; export them as standard layers")
    nodes = []
    for index, node in enumerate(graph_nodes):
        nodes += [*before.get(index, []), node, *after.get(index, [])]
    del out.graph.initializer[:]
    out.graph.initializer.extend([*weights.values(), *new_inits])
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def _match(weight: np.ndarray, specs: list[QuantSpec], used: set) -> tuple | None:
    for spec in specs:
        if spec.name in used:
            continue
        axis = _orientation(weight, spec)
        if axis is not None:
            return spec, axis
    return None
