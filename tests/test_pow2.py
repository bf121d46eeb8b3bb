"""pow2_linear (packed INQ codes) against decode-then-matmul; packing, modules, errors."""

import contextlib
import io
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compressor.errors import CompressorError
from compressor.formats.pow2_codes import pack_pow2, packed_nbytes, unpack_pow2
from compressor.formats.pow2_levels import pow2_exponents, pow2_quantize
from compressor.nn import Pow2Conv2d, Pow2Linear
from compressor.ops import pow2_linear, reference
from tests.conftest import require_kernel

BITS = [2, 3, 4, 5]
SHAPES = [(1, 1, 1), (1, 5, 13), (1, 33, 200), (3, 17, 70), (7, 9, 130), (5, 40, 1030), (64, 3, 8)]
# CPU paths (csrc/cpu/pow2_linear.cpp): "native" is the best one built (AVX-512 here); the others
# are forced with COMPRESSOR_POW2_ISA and fall back to the best built path where not compiled in.
ISAS = ["native", "avx2", "scalar"]
# Tile remainders of the CPU paths: AVX-512 tiles are 8 (or fewer, balanced) input rows x 3 output
# rows, 1 x 8 for one input row, 128-column blocks; AVX2 uses 64-column blocks and 4-row tiles.
# The last shape spans two K chunks (64 rows x 4224 columns > 1 MiB of input).
TILE_SHAPES = [(m, 11, 300) for m in range(1, 18)] + [
    (1, 1, 129), (2, 1, 64), (9, 8, 128), (8, 3, 257), (1, 17, 1000), (16, 24, 136),
    (24, 7, 1030), (64, 5, 4200)]


@contextlib.contextmanager
def cpu_path(isa: str):
    """Force one CPU path of pow2_linear (read by the kernel on every call)."""
    old = os.environ.pop("COMPRESSOR_POW2_ISA", None)
    if isa != "native":
        os.environ["COMPRESSOR_POW2_ISA"] = isa
    try:
        yield
    finally:
        os.environ.pop("COMPRESSOR_POW2_ISA", None)
        if old is not None:
            os.environ["COMPRESSOR_POW2_ISA"] = old


def packed_layer(n_out, k, bits, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    w = pow2_quantize(torch.randn(n_out, k, generator=gen), bits)
    n1, _ = pow2_exponents(w, bits)
    codes, nonzero = pack_pow2(w, n1, bits)
    return w.to(device), codes.to(device), nonzero.to(device), n1


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("shape", SHAPES)
def test_kernel_matches_decode_then_matmul(device, bits, shape):
    require_kernel("pow2_linear", device)
    m, n_out, k = shape
    w, codes, nonzero, n1 = packed_layer(n_out, k, bits, device=device)
    x = torch.randn(m, k, device=device)
    bias = torch.randn(n_out, device=device)
    got = torch.ops.compressor.pow2_linear(x, codes, nonzero, bias, k, bits, n1)
    want = x.double() @ w.double().T + bias.double()
    torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-5)
    ref = reference.pow2_linear(x, codes, nonzero, bias, k, bits, n1)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-5)
    print(f"bits={bits} {shape}: max err {(got.double() - want).abs().max().item():.2e}")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("shape", TILE_SHAPES, ids=str)
def test_cpu_paths_match_decode_then_matmul(isa, bits, shape):
    require_kernel("pow2_linear", "cpu")
    m, n_out, k = shape
    w, codes, nonzero, n1 = packed_layer(n_out, k, bits, seed=m + k)
    gen = torch.Generator().manual_seed(m * k)
    x = torch.randn(m, k, generator=gen)
    bias = torch.randn(n_out, generator=gen) if m % 2 else None
    with cpu_path(isa):
        got = torch.ops.compressor.pow2_linear(x, codes, nonzero, bias, k, bits, n1)
    want = x.double() @ w.double().T + (0 if bias is None else bias.double())
    torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("bits", [4, 5])
@pytest.mark.parametrize("n1", [-119, 127])
def test_cpu_paths_at_the_ends_of_the_n1_range(isa, bits, n1):
    """Every code at the smallest and largest n1: the kernels build floats from exponent bits."""
    require_kernel("pow2_linear", "cpu")
    gen = torch.Generator().manual_seed(n1 + bits)
    n_out, k = 7, 300
    codes = torch.randint(0, 256, (n_out, 152), dtype=torch.uint8, generator=gen)
    nonzero = (torch.randint(0, 256, (n_out, 38), dtype=torch.uint8, generator=gen) if bits == 5
               else torch.empty(0, dtype=torch.uint8))
    w = unpack_pow2(codes, nonzero, k, bits, n1).double()
    # Products near 1, inputs finite: 4 * 2^(5 - n1) stays below the float32 maximum at n1 = -119.
    x = torch.randn(3, k, generator=gen).clamp(-4, 4) * 2.0 ** (5 - n1)
    with cpu_path(isa):
        got = torch.ops.compressor.pow2_linear(x, codes, nonzero, None, k, bits, n1)
    torch.testing.assert_close(got.double(), x.double() @ w.T, atol=1e-4, rtol=1e-5)


def test_noncontiguous_input_and_leading_dims(device):
    require_kernel("pow2_linear", device)
    w, codes, nonzero, n1 = packed_layer(21, 45, 4, device=device)
    x = torch.randn(45, 2, 6, device=device).permute(1, 2, 0)  # (2, 6, 45), non-contiguous
    assert not x.is_contiguous()
    got = pow2_linear(x, codes, nonzero, None, 45, 4, n1)
    torch.testing.assert_close(got, x @ w.T, atol=1e-4, rtol=1e-5)


def test_zero_rows_and_all_zero_weights(device):
    require_kernel("pow2_linear", device)
    codes = torch.zeros(4, 8, dtype=torch.uint8, device=device)
    empty = torch.empty(0, dtype=torch.uint8, device=device)
    assert torch.ops.compressor.pow2_linear(torch.randn(0, 13, device=device), codes, empty, None,
                                            13, 4, 0).shape == (0, 4)
    out = torch.ops.compressor.pow2_linear(torch.randn(3, 13, device=device), codes, empty, None,
                                           13, 4, 0)
    assert torch.equal(out, torch.zeros(3, 4, device=device))


def test_opcheck(device):
    require_kernel("pow2_linear", device)
    for bits in (4, 5):
        _, codes, nonzero, n1 = packed_layer(6, 19, bits, device=device)
        args = (torch.randn(3, 19, device=device), codes, nonzero, torch.randn(6, device=device),
                19, bits, n1)
        torch.library.opcheck(torch.ops.compressor.pow2_linear.default, args)


@settings(max_examples=60, deadline=None)
@given(m=st.integers(1, 20), n_out=st.integers(1, 20), k=st.integers(1, 300),
       bits=st.sampled_from(BITS), seed=st.integers(0, 1000), isa=st.sampled_from(ISAS))
def test_fuzz_against_reference(m, n_out, k, bits, seed, isa):
    require_kernel("pow2_linear", "cpu")
    w, codes, nonzero, n1 = packed_layer(n_out, k, bits, seed)
    x = torch.randn(m, k)
    with cpu_path(isa):
        got = torch.ops.compressor.pow2_linear(x, codes, nonzero, None, k, bits, n1)
    torch.testing.assert_close(got.double(), x.double() @ w.double().T, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("bits", BITS)
def test_pack_unpack_round_trip(bits):
    w, codes, nonzero, n1 = packed_layer(9, 27, bits)
    assert codes.shape == (9, 16) and codes.dtype == torch.uint8
    assert nonzero.shape == ((9, 4) if bits == 5 else (0,))
    assert torch.equal(unpack_pow2(codes, nonzero, 27, bits, n1), w)


def test_packed_format_by_hand():
    # n1 = 0, 4 bits: levels 1, 1/2, 1/4, 1/8 -> m = 1..4; sign in bit 3; column 0 in the low nibble
    w = torch.tensor([[1.0, -0.5, 0.0, 0.125, -1.0, 0.0, 0.0, 0.25, 0.5]])
    codes, _ = pack_pow2(w, 0, 4)
    assert codes.tolist() == [[0xA1, 0x40, 0x09, 0x30, 0x02, 0, 0, 0]]
    codes5, bitmap = pack_pow2(w, 0, 5)  # 5 bits: m = n1 - e, zero only in the bitmap
    assert codes5.tolist()[0][:5] == [0x90, 0x30, 0x08, 0x20, 0x01]
    assert bitmap.tolist() == [[0b10011011, 0b1]]


def test_five_bits_at_least_six_times_smaller_than_fp32():
    assert 4 * 4096 * 4096 / packed_nbytes(4096, 4096, 5) >= 6.0
    assert 4 * 4096 * 4096 / packed_nbytes(4096, 4096, 4) == 8.0


def test_pack_rejects_weights_off_the_levels():
    with pytest.raises(CompressorError, match="not a 4-bit power-of-two level"):
        pack_pow2(torch.tensor([[0.3]]), 0, 4)
    with pytest.raises(CompressorError, match="not a 4-bit power-of-two level"):
        pack_pow2(torch.tensor([[2.0]]), 0, 4)  # above 2^n1


def test_wrapper_errors():
    _, codes, nonzero, n1 = packed_layer(4, 10, 4)
    x = torch.randn(2, 10)
    with pytest.raises(CompressorError, match="bits must be an integer in 2..5"):
        pow2_linear(x, codes, nonzero, None, 10, 6, n1)
    with pytest.raises(CompressorError, match="codes must be uint8 of shape"):
        pow2_linear(x, codes[:, :3], nonzero, None, 10, 4, n1)
    with pytest.raises(CompressorError, match="codes must be uint8 of shape"):
        pow2_linear(x, codes.to(torch.int32), nonzero, None, 10, 4, n1)
    with pytest.raises(CompressorError, match="nonzero must be uint8 of shape"):
        pow2_linear(x, codes, torch.zeros(4, 1, dtype=torch.uint8), None, 10, 5, n1)
    with pytest.raises(CompressorError, match="input's last dim must be in_features=10"):
        pow2_linear(torch.randn(2, 11), codes, nonzero, None, 10, 4, n1)
    with pytest.raises(CompressorError, match="input must be floating point"):
        pow2_linear(x.long(), codes, nonzero, None, 10, 4, n1)
    with pytest.raises(CompressorError, match="bias must have shape"):
        pow2_linear(x, codes, nonzero, torch.randn(5), 10, 4, n1)
    with pytest.raises(CompressorError, match="n1=500 is outside"):
        pow2_linear(x, codes, nonzero, None, 10, 4, 500)


def test_kernel_rejects_bad_input():
    require_kernel("pow2_linear", "cpu")
    op = torch.ops.compressor.pow2_linear
    _, codes, nonzero, n1 = packed_layer(4, 10, 4)
    x = torch.randn(2, 10)
    with pytest.raises(RuntimeError, match="pow2_linear: bits must be in 2..5"):
        op(x, codes, nonzero, None, 10, 1, n1)
    with pytest.raises(RuntimeError, match="pow2_linear: codes must have 12 columns"):
        op(torch.randn(2, 20), codes, nonzero, None, 20, 4, n1)
    with pytest.raises(RuntimeError, match="pow2_linear: nonzero must have shape"):
        op(x, codes, nonzero, None, 10, 5, n1)
    with pytest.raises(RuntimeError, match="pow2_linear: input must be contiguous"):
        op(torch.randn(10, 2).t(), codes, nonzero, None, 10, 4, n1)
    with cpu_path("avx512"), pytest.raises(RuntimeError,
                                           match="COMPRESSOR_POW2_ISA must be 'avx2' or 'scalar'"):
        op(x, codes, nonzero, None, 10, 4, n1)


@pytest.mark.parametrize("n1", [-120, 128, 5000])
def test_kernel_rejects_n1_outside_the_packable_range(device, n1):
    # CPU op and CUDA binding share this check (csrc/include/compressor/pow2_checks.h).
    require_kernel("pow2_linear", device)
    _, codes, nonzero, _ = packed_layer(4, 10, 4, device=device)
    x = torch.randn(2, 10, device=device)
    with pytest.raises(RuntimeError, match=rf"pow2_linear: n1 must be in -119\.\.127, got {n1}"):
        torch.ops.compressor.pow2_linear(x, codes, nonzero, None, 10, 4, n1)


@pytest.mark.parametrize("bits", BITS)
def test_pow2_linear_module(device, bits):
    lin = torch.nn.Linear(37, 11).to(device)
    mod = Pow2Linear.from_float(lin, bits)
    w = mod.dequantized_weight()
    assert torch.equal(w, pow2_quantize(lin.weight.detach().float(), bits))
    x = torch.randn(3, 4, 37, device=device)
    torch.testing.assert_close(mod(x), torch.nn.functional.linear(x, w, mod.bias), atol=1e-4,
                               rtol=1e-5)
    assert set(mod.state_dict()) == {"codes", "nonzero", "bias", "n1", "bits"}


@pytest.mark.parametrize("groups,stride,padding,dilation",
                         [(1, 1, 0, 1), (2, 2, 1, 1), (1, 1, 2, 2)])
def test_pow2_conv2d_module(device, groups, stride, padding, dilation):
    conv = torch.nn.Conv2d(6, 8, 3, stride, padding, dilation, groups).to(device)
    mod = Pow2Conv2d.from_float(conv, 5)
    assert (mod.kernel_size, mod.stride, mod.groups) == (conv.kernel_size, conv.stride, groups)
    x = torch.randn(2, 6, 11, 9, device=device)
    want = torch.nn.functional.conv2d(x, mod.dequantized_weight(), mod.bias, stride, padding,
                                      dilation, groups)
    torch.testing.assert_close(mod(x), want, atol=1e-4, rtol=1e-5)


def test_state_dict_round_trip_weights_only():
    conv = Pow2Conv2d.from_float(torch.nn.Conv2d(3, 4, 3, padding=1), 4)
    buf = io.BytesIO()
    torch.save(conv.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert int(state["n1"]) == conv.n1 and int(state["bits"]) == 4
    fresh = Pow2Conv2d(3, 4, 3, bits=4, padding=1)
    fresh.load_state_dict(state)
    x = torch.randn(1, 3, 5, 5)
    assert fresh.n1 == conv.n1 and torch.equal(fresh(x), conv(x))
    with pytest.raises(RuntimeError, match="bits is 4 in the checkpoint"):
        Pow2Conv2d(3, 4, 3, bits=5, padding=1).load_state_dict(state)


def test_torch_compile():
    require_kernel("pow2_linear", "cpu")
    mod = Pow2Linear.from_float(torch.nn.Linear(20, 7), 4)
    x = torch.randn(3, 20)
    compiled = torch.compile(mod, fullgraph=True)
    torch.testing.assert_close(compiled(x), mod(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fractional_or_bool_ints_are_rejected(dtype):
    """float64 runs the twin, float32 the kernel: both refuse a non-int n1 / bits / in_features."""
    _, codes, nonzero, n1 = packed_layer(4, 10, 4)
    x = torch.randn(2, 10, dtype=dtype)
    for args, name in [((10, 4, n1 + 0.5), "n1"), ((10, 4, float(n1)), "n1"),
                       ((10, True, n1), "bits"), ((10.0, 4, n1), "in_features")]:
        with pytest.raises(CompressorError, match=f"pow2_linear: {name} must be an int"):
            pow2_linear(x, codes, nonzero, None, *args)
    with pytest.raises(CompressorError, match="pow2_linear: n1 must be an int"):
        reference.pow2_linear(x, codes, nonzero, None, 10, 4, 0.5)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("bits", [4, 5])
def test_nan_and_inf_propagate_on_every_path(isa, bits):
    require_kernel("pow2_linear", "cpu")
    _, codes, nonzero, n1 = packed_layer(9, 300, bits)
    codes[:, 40:60] = 0  # zero weights (for 5 bits: code 0 with a zero bit) meet the NaN
    if bits == 5:
        nonzero[:, 10:15] = 0
    x = torch.randn(3, 300)
    x[0, 85], x[2, 100] = float("nan"), float("inf")
    w = unpack_pow2(codes, nonzero, 300, bits, n1)
    with cpu_path(isa):
        got = torch.ops.compressor.pow2_linear(x, codes, nonzero, None, 300, bits, n1)
    want = torch.nn.functional.linear(x, w)
    assert torch.equal(got.isnan(), want.isnan()) and got[0].isnan().all()
    torch.testing.assert_close(got[1], want[1], atol=1e-4, rtol=1e-5)


def test_zero_in_features_give_the_bias():
    require_kernel("pow2_linear", "cpu")
    codes, empty, bias = torch.zeros(4, 0, dtype=torch.uint8), torch.empty(0, dtype=torch.uint8), \
        torch.randn(4)
    for x in (torch.randn(3, 0), torch.randn(2, 5, 0)):
        got = pow2_linear(x, codes, empty, bias, 0, 4, 0)
        torch.testing.assert_close(got, bias.expand(*x.shape[:-1], 4))
