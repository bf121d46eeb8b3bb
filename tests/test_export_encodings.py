"""Compact initializer encodings on hand-built ONNX graphs (no PyTorch export): exact decoding,
the choice of the smallest form, and onnxruntime folding the decoders away at load."""

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from compressor.export.encode import (
    ENCODINGS,
    compact_initializers,
    gap_stream,
    pack_bits,
    pow2_bits,
)
from compressor.export.verify import check, decoded_weights, session


def graph_with(weight: np.ndarray) -> onnx.ModelProto:
    """Y = X + W, so running it shows the decoded W."""
    dtype = helper.np_dtype_to_tensor_dtype(weight.dtype)
    graph = helper.make_graph(
        [helper.make_node("Add", ["X", "W"], ["Y"])], "g",
        [helper.make_tensor_value_info("X", dtype, weight.shape)],
        [helper.make_tensor_value_info("Y", dtype, weight.shape)],
        initializer=[numpy_helper.from_array(weight, "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def sparse_array(shape, density, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    values = rng.standard_normal(shape).astype(np.float32)
    if dtype == np.int8:
        values = rng.integers(-127, 128, shape).astype(np.int8)
    return np.where(rng.random(shape) < density, values, 0).astype(dtype)


def roundtrip(weight: np.ndarray, allowed=("dense", *ENCODINGS)):
    compact, chosen = compact_initializers(graph_with(weight), allowed)
    check(compact)
    sess = session(compact)
    zeros = np.zeros_like(weight)
    (out,) = sess.run(None, {"X": zeros})
    return out, chosen[0], compact


@pytest.mark.parametrize("bits", [3, 5, 6, 7])
@pytest.mark.parametrize("count", [1, 7, 9, 64])
def test_pack_bits_stream_layout(bits, count):
    codes = (np.arange(count) * 5) % (2**bits)
    packed = pack_bits(codes, bits)
    assert packed.size == -(-count * bits // 8)
    stream = np.unpackbits(packed, bitorder="little")[: count * bits].reshape(count, bits)
    np.testing.assert_array_equal(stream @ (2 ** np.arange(bits)), codes)


@pytest.mark.parametrize("distinct,bits", [(8, 3), (20, 5), (100, 7)])
def test_codebook_uses_the_narrowest_width(distinct, bits):
    rng = np.random.default_rng(distinct)
    weight = rng.choice(rng.standard_normal(distinct).astype(np.float32), (128, 128))
    out, chosen, _ = roundtrip(weight, ("dense", "codebook"))
    assert chosen.kind == "codebook" and chosen.details["code_bits"] == bits
    np.testing.assert_array_equal(out, weight)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("count", [1, 7, 9, 64])
def test_pack_bits_layout(bits, count):
    codes = np.arange(count) % (2**bits)
    packed = pack_bits(codes, bits)
    per = 8 // bits
    assert packed.size == -(-count // per)
    unpacked = ((packed[:, None] >> (np.arange(per) * bits)) & (2**bits - 1)).ravel()[:count]
    np.testing.assert_array_equal(unpacked, codes)


@pytest.mark.parametrize("density,kind", [(1.0, "dense"), (0.3, "bitmap"), (0.05, "gaps"),
                                          (0.001, "sparse")])
def test_smallest_encoding_is_chosen(density, kind):
    weight = sparse_array((300, 301), density)
    out, chosen, _ = roundtrip(weight)
    assert chosen.kind == kind
    np.testing.assert_array_equal(out, weight)


def test_pow2_weights_use_a_4_bit_codebook_for_5_bit_inq():
    rng = np.random.default_rng(0)
    exponents = rng.integers(-9, -1, (64, 129))  # 8 exponents = 5-bit INQ
    weight = (rng.choice([-1, 1], (64, 129)) * 2.0**exponents).astype(np.float32)
    weight[rng.random(weight.shape) < 0.9] = 0
    out, chosen, _ = roundtrip(weight)
    assert (chosen.kind, chosen.details["code_bits"], chosen.details["pow2_bits"]) == (
        "gaps_codebook", 4, 5)  # at 90% sparsity 1-byte gaps beat the 1-bit-per-element bitmap
    assert np.array_equal(out, weight)
    numel, nnz = weight.size, int((weight != 0).sum())
    positions = min(numel / 8, nnz + numel / 255)  # bitmap, or gaps with their fillers
    assert chosen.nbytes <= positions + nnz / 2 + 16 * 4 + 1500  # + codes, table, decoder


@pytest.mark.parametrize("allowed,density", [(("bitmap",), 0.3), (("sparse",), 0.02),
                                             (("codebook",), 0.3), (("gaps",), 0.05),
                                             (("gaps_codebook",), 0.05)])
def test_each_encoding_alone_decodes_exactly(allowed, density):
    weight = sparse_array((61, 67), density, seed=3)
    weight[weight != 0] = np.round(weight[weight != 0] * 4) / 4 + 0.25  # few distinct values
    out, chosen, compact = roundtrip(weight, ("dense", *allowed))
    assert chosen.kind == allowed[0]
    np.testing.assert_array_equal(out, weight)
    if allowed[0] != "sparse":
        np.testing.assert_array_equal(decoded_weights(compact, {"W": 1})["W"], weight)


def test_int8_codes_are_compacted_and_cast_back():
    weight = sparse_array((128, 130), 0.1, dtype=np.int8)
    out, chosen, _ = roundtrip(weight)
    assert chosen.kind not in ("dense", "sparse") and out.dtype == np.int8
    np.testing.assert_array_equal(out, weight)


@pytest.mark.parametrize("kind,distinct", [("bitmap", 0), ("gaps", 0), ("codebook", 2),
                                           ("codebook", 6), ("gaps_codebook", 2)])
def test_onnxruntime_folds_the_decoder_away(tmp_path, kind, distinct):
    """The decoded graph onnxruntime runs is the dense one: same nodes, so the same speed."""
    import onnxruntime as ort

    weight = sparse_array((256, 256), 0.1)
    if distinct:  # 2 values: 1-bit codes; 6 values: 3-bit codes in a bit stream
        nonzero = weight != 0
        weight[nonzero] = np.arange(nonzero.sum()) % distinct + 1.0
    compact, chosen = compact_initializers(graph_with(weight), ("dense", kind))
    assert chosen[0].kind == kind and len(compact.graph.node) > 8
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(compact.SerializeToString(), options, providers=["CPUExecutionProvider"])
    assert [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node] == ["Add"]


@pytest.mark.parametrize("index,stream", [
    ([0, 1, 5], [1, 1, 4]), ([254], [255]), ([255], [0, 1]), ([600, 601], [0, 0, 91, 1]),
])
def test_gap_stream(index, stream):
    np.testing.assert_array_equal(gap_stream(np.array(index)), stream)


def test_long_gaps_decode_exactly():
    weight = np.zeros((3, 1000), np.float32)
    weight[0, 0], weight[1, 999], weight[2, 500] = 1.5, -2.0, 3.0  # gaps of 1, 1999 and 502
    out, chosen, _ = roundtrip(weight, ("dense", "gaps"))
    assert chosen.kind == "gaps"
    np.testing.assert_array_equal(out, weight)


def test_pow2_bits_rule():
    assert pow2_bits(np.array([0.5, -0.5], np.float32)) == 2
    assert pow2_bits(np.array([0.25, -1.0], np.float32)) == 4  # 3 exponents need 2^(b-2) >= 3
    assert pow2_bits(np.array([2.0**-7, 1.0], np.float32)) == 5
    assert pow2_bits(np.array([0.75], np.float32)) is None


def test_non_finite_and_all_zero_tensors_stay_dense():
    for weight in (np.zeros((20, 20), np.float32), np.full((20, 20), np.nan, np.float32)):
        compact, chosen = compact_initializers(graph_with(weight))
        assert chosen[0].kind == "dense"


@settings(max_examples=15, deadline=None)
@given(rows=st.integers(1, 40), cols=st.integers(2, 70), density=st.floats(0.0, 1.0),
       distinct=st.integers(1, 300), seed=st.integers(0, 100))
def test_fuzz_decoding_is_exact(rows, cols, density, distinct, seed):
    rng = np.random.default_rng(seed)
    table = rng.standard_normal(distinct).astype(np.float32)
    weight = rng.choice(table, (rows, cols)).astype(np.float32)
    weight[rng.random(weight.shape) >= density] = 0
    out, _, _ = roundtrip(weight)
    np.testing.assert_array_equal(out, weight)


def test_graph_inputs_that_are_initializers_are_left_alone():
    model = graph_with(sparse_array((64, 64), 0.05))
    model.graph.input.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, (64, 64)))
    _, chosen = compact_initializers(model)
    assert chosen[0].kind == "dense"


def test_quiet_sessions_do_not_spin(tmp_path):
    """Sessions timed interleaved with other work are made with idle threads that sleep: a
    spinning session's threads slowed the next engine's call 2x on a 2-core machine."""
    path = tmp_path / "m.onnx"
    torch.onnx.export(torch.nn.Linear(3, 2), (torch.randn(1, 3),), str(path), dynamo=False)
    quiet, default = session(str(path), 2, spinning=False), session(str(path), 2)
    key = "session.intra_op.allow_spinning"
    assert quiet.get_session_options().get_session_config_entry(key) == "0"
    with pytest.raises(RuntimeError, match="allow_spinning"):  # unset: onnxruntime's default
        default.get_session_options().get_session_config_entry(key)
