"""Compact encodings of fp32 weight initializers in an exported ONNX graph.

Each large float32 initializer is re-encoded in the smallest of these forms (sizes measured as
serialized protobuf bytes, per tensor):

- ``dense``: left as it is.
- ``sparse``: an ONNX sparse initializer (fp32 values + int64 linear indices); onnxruntime turns it
  into a dense tensor when it loads the model.
- ``bitmap``: a 1-bit-per-element bitmap of the nonzeros plus the fp32 nonzero values.
- ``codebook``: the nonzeros as 1/2/4/8-bit indices into a table of their distinct values (with the
  bitmap when there are zeros). INQ / power-of-two weights land here: a 5-bit INQ layer has at most
  16 distinct nonzeros, so 4 bits each, and the table holds the exact powers of two.

The bitmap and codebook forms are rebuilt by a short chain of standard operators (Cast, Div, Floor,
Mod, CumSum, Gather, Where, Reshape) whose inputs are all initializers, so onnxruntime's constant
folding turns them back into the dense fp32 weight once, at session creation: the file is small and
inference runs the same graph as the dense model. Decoding is exact: unpacking bytes uses small
integers that float32 holds exactly and values come from a table of the original floats.
"""

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MIN_ELEMENTS = 64  # smaller tensors (biases, shapes) stay dense: a decoder would cost more bytes
CODE_BITS = tuple(range(1, 9))
BYTE_ALIGNED = (1, 2, 4, 8)  # widths whose codes never straddle a byte: the shortest decoder
ENCODABLE = (TensorProto.FLOAT, TensorProto.INT8)  # fp32 weights; int8 codes of QDQ weights
ENCODINGS = ("sparse", "bitmap", "gaps", "codebook", "gaps_codebook")


@dataclass
class Encoding:
    """How one initializer is stored: the tensors, sparse tensors and decoder that replace it."""

    name: str
    kind: str
    initializers: list = field(default_factory=list)
    sparse: list = field(default_factory=list)
    nodes: list = field(default_factory=list)
    details: dict = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        parts = [*self.initializers, *self.sparse, *self.nodes]
        return sum(len(p.SerializeToString()) for p in parts)


def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned codes (< 2**bits) little-end first into uint8 bytes: for 1/2/4/8 bits,
    8/bits codes per byte; for other widths a continuous bit stream (codes straddle bytes)."""
    if bits not in BYTE_ALIGNED:
        stream = (codes.ravel()[:, None].astype(np.uint16) >> np.arange(bits)) & 1
        return np.packbits(stream.astype(np.uint8).ravel(), bitorder="little")
    per_byte = 8 // bits
    padded = np.zeros(-(-codes.size // per_byte) * per_byte, dtype=np.uint16)
    padded[:codes.size] = codes.ravel()
    shifts = (np.arange(per_byte, dtype=np.uint16) * bits)[None, :]
    return (padded.reshape(-1, per_byte) << shifts).sum(axis=1).astype(np.uint8)


class _Builder:
    """Collects the initializers and nodes of one tensor's decoder under a unique name prefix.
    Names are short and nodes unnamed (names are optional in ONNX): with the weight's full name
    in every intermediate, names alone cost ~2 KB per tensor."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.initializers: list = []
        self.nodes: list = []
        self.count = 0

    def const(self, array: np.ndarray, tag: str) -> str:
        name = f"{self.prefix}_{tag}"
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op: str, inputs: list, output: str | None = None, **attrs) -> str:
        self.count += 1
        output = output or f"{self.prefix}_t{self.count}"
        self.nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    def unpack(self, packed: np.ndarray, bits: int, count: int, tag: str) -> str:
        """Float32 tensor [count] of the `bits`-wide codes in `packed` (exact small integers)."""
        if bits not in BYTE_ALIGNED:  # unpack the bit stream, then weigh each group of bits
            stream = self.unpack(packed, 1, count * bits, f"{tag}_b")
            grouped = self.node("Reshape", [stream, self.const(
                np.array([count, bits], np.int64), f"{tag}_g")])
            weights = (2.0 ** np.arange(bits)).astype(np.float32).reshape(bits, 1)
            codes = self.node("MatMul", [grouped, self.const(weights, f"{tag}_w")])
            return self.node("Reshape", [codes, self.const(np.array([count], np.int64),
                                                           f"{tag}_c")])
        per_byte = 8 // bits
        data = self.node("Cast", [self.const(packed, tag)], to=TensorProto.FLOAT)
        column = self.node("Unsqueeze", [data, self.const(np.array([1], np.int64), f"{tag}_ax")])
        divisors = (2.0 ** (np.arange(per_byte) * bits)).astype(np.float32)
        shifted = self.node("Floor", [self.node("Div", [column, self.const(divisors, f"{tag}_d")])])
        modulus = self.const(np.array(2.0 ** bits, np.float32), f"{tag}_m")
        codes = self.node("Mod", [shifted, modulus], fmod=1)
        flat = self.node("Reshape", [codes, self.const(np.array([-1], np.int64), f"{tag}_flat")])
        return self.node("Slice", [flat, self.const(np.array([0], np.int64), f"{tag}_s0"),
                                   self.const(np.array([count], np.int64), f"{tag}_s1")])

    def scatter(self, values: str, mask: np.ndarray, shape: tuple, output: str,
                positions: str) -> str:
        """Dense tensor of `shape`: the nonzero `values` in row-major order where `mask` is set;
        the positions are stored as a bitmap or as gaps."""
        shape_name = self.const(np.array(shape, np.int64), "shape")
        if mask.all():
            return self.node("Reshape", [values, shape_name], output)
        if positions == "gaps":
            return self.node("Reshape", [self.scatter_gaps(values, mask), shape_name], output)
        bitmap = self.unpack(pack_bits(mask.astype(np.uint8), 1), 1, mask.size, "bits")
        counts = self.node("CumSum", [self.node("Cast", [bitmap], to=TensorProto.INT64),
                                      self.const(np.array(0, np.int64), "axis")])
        # zeros before the first nonzero get index -1 (Gather wraps it); Where drops them anyway
        index = self.node("Sub", [counts, self.const(np.array(1, np.int64), "one")])
        gathered = self.node("Gather", [values, index])
        keep = self.node("Cast", [bitmap], to=TensorProto.BOOL)
        dense = self.node("Where", [keep, gathered, self.const(np.array(0, np.float32), "zero")])
        return self.node("Reshape", [dense, shape_name], output)

    def scatter_gaps(self, values: str, mask: np.ndarray) -> str:
        """Flat dense tensor from uint8 gaps between nonzero positions (a 0 gap advances 255 and
        writes a zero, for longer gaps): 1 byte per nonzero, less than a bitmap below 1/8
        density. Positions strictly increase, so ScatterElements never sees a duplicate."""
        gaps = self.node("Cast", [self.const(gap_stream(np.flatnonzero(mask)), "gaps")],
                         to=TensorProto.INT64)
        filler = self.node("Equal", [gaps, self.const(np.array(0, np.int64), "z")])
        steps = self.node("Where", [filler, self.const(np.array(255, np.int64), "max"), gaps])
        axis, one = self.const(np.array(0, np.int64), "axis"), self.const(np.array(1, np.int64),
                                                                          "one")
        index = self.node("Sub", [self.node("CumSum", [steps, axis]), one])
        real = self.node("Cast", [self.node("Not", [filler])], to=TensorProto.INT64)
        which = self.node("Sub", [self.node("CumSum", [real, axis]), one])  # -1 wraps; dropped
        aligned = self.node("Where", [filler, self.const(np.array(0, np.float32), "zero"),
                                      self.node("Gather", [values, which])])
        zeros = self.node("ConstantOfShape", [self.const(np.array([mask.size], np.int64), "n")],
                          value=numpy_helper.from_array(np.zeros(1, np.float32)))
        return self.node("ScatterElements", [zeros, index, aligned], axis=0)

    def finish(self, values: str, mask: np.ndarray, shape: tuple, name: str, dtype,
               positions: str) -> None:
        """Scatter the float `values` into the dense tensor `name`, cast to int8 if it was int8
        (its codes feed a DequantizeLinear; the cast of small integers is exact)."""
        if dtype == np.float32:
            self.scatter(values, mask, shape, name, positions)
        else:
            dense = self.scatter(values, mask, shape, f"{self.prefix}_float", positions)
            self.node("Cast", [dense], name, to=TensorProto.INT8)

    def encoding(self, name: str, kind: str, **details) -> Encoding:
        return Encoding(name, kind, self.initializers, [], self.nodes, details)


def gap_stream(index: np.ndarray) -> np.ndarray:
    """uint8 gaps between successive positions (the first from -1); a gap over 255 becomes
    zeros (each advancing 255) followed by the rest."""
    gaps = np.diff(index, prepend=-1)
    fillers = (gaps - 1) // 255
    rest = gaps - 255 * fillers
    out = np.zeros(int(fillers.sum()) + gaps.size, np.uint8)
    out[np.cumsum(fillers + 1) - 1] = rest
    return out


def encode_values(name: str, array: np.ndarray, prefix: str = "enc",
                  positions: str = "bitmap") -> Encoding:
    """fp32 (or int8) nonzeros placed by a bitmap ('bitmap') or by gaps ('gaps')."""
    mask = array.ravel() != 0
    b = _Builder(prefix)
    values = b.const(array.ravel()[mask].astype(np.float32), "values")
    b.finish(values, mask, array.shape, name, array.dtype, positions)
    return b.encoding(name, positions, nonzeros=int(mask.sum()))


def pow2_bits(table: np.ndarray) -> int | None:
    """INQ bit width (DESIGN §3: 2^(b-2) exponents, a sign and zero) of a table of nonzero values
    that are all ±2^k; None when some value is not a power of two."""
    mantissa, exponent = np.frexp(np.abs(table.astype(np.float64)))
    if table.size == 0 or not np.all(mantissa == 0.5):
        return None
    span = int(exponent.max() - exponent.min()) + 1
    return 2 + int(np.ceil(np.log2(span)))


def encode_codebook(name: str, array: np.ndarray, prefix: str = "enc",
                    positions: str = "bitmap") -> Encoding | None:
    """Nonzeros as k-bit indices into a table of their distinct values, placed by `positions`."""
    flat = array.ravel()
    mask = flat != 0
    table, codes = np.unique(flat[mask], return_inverse=True)
    bits = next((k for k in CODE_BITS if table.size <= 2**k), None)
    if bits is None:
        return None
    b = _Builder(prefix)
    index = b.node("Cast", [b.unpack(pack_bits(codes, bits), bits, codes.size, "codes")],
                   to=TensorProto.INT64)
    values = b.node("Gather", [b.const(table.astype(np.float32), "table"), index])
    b.finish(values, mask, array.shape, name, array.dtype, positions)
    kind = "codebook" if positions == "bitmap" else "gaps_codebook"
    return b.encoding(name, kind, nonzeros=int(mask.sum()), code_bits=bits,
                      distinct=int(table.size), pow2_bits=pow2_bits(table))


def encode_sparse(name: str, array: np.ndarray) -> Encoding:
    flat = array.ravel()
    index = np.flatnonzero(flat).astype(np.int64)
    values = numpy_helper.from_array(flat[index], name)
    sparse = helper.make_sparse_tensor(values, numpy_helper.from_array(index, f"{name}__idx"),
                                       list(array.shape))
    return Encoding(name, "sparse", [], [sparse], [], {"nonzeros": int(index.size)})


def candidates(tensor: TensorProto, prefix: str = "enc") -> list[Encoding]:
    """Every encoding that fits this initializer, the dense original first; decoder tensors are
    named `prefix`_*."""
    found = [Encoding(tensor.name, "dense", [tensor])]
    array = numpy_helper.to_array(tensor)
    if tensor.data_type not in ENCODABLE or array.size < MIN_ELEMENTS:
        return found
    if not np.isfinite(array).all() or not array.any():
        return found
    found.append(encode_sparse(tensor.name, array))
    for positions in ("bitmap", "gaps"):
        found.append(encode_values(tensor.name, array, prefix, positions))
        codebook = encode_codebook(tensor.name, array, prefix, positions)
        found += [codebook] if codebook else []
    for encoding in found:
        encoding.details["dtype"] = tensor.data_type
    return found


def compact_initializers(model: onnx.ModelProto,
                         allowed: tuple = ("dense", *ENCODINGS),
                         ) -> tuple[onnx.ModelProto, list[Encoding]]:
    """A copy of `model` whose initializers use their smallest allowed encoding; decode nodes go
    first in the graph. Returns the model and the chosen encoding of every initializer."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph_inputs = {i.name for i in out.graph.input}
    chosen = []
    taken = {t.name for t in out.graph.initializer} | {o for n in out.graph.node for o in n.output}
    for index, tensor in enumerate(out.graph.initializer):
        prefix = f"enc{index}"
        while any(name.startswith(prefix) for name in taken):
            prefix = "_" + prefix  # never collide with a name the graph already uses
        options = [c for c in candidates(tensor, prefix) if c.kind in allowed or c.kind == "dense"]
        if tensor.name in graph_inputs:  # an overridable input must stay a plain initializer
            options = options[:1]
        chosen.append(min(options, key=lambda c: c.nbytes))
    decode_nodes = [n for c in chosen for n in c.nodes]
    del out.graph.initializer[:]
    out.graph.initializer.extend(t for c in chosen for t in c.initializers)
    out.graph.sparse_initializer.extend(s for c in chosen for s in c.sparse)
    nodes = [*decode_nodes, *out.graph.node]
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out, chosen
