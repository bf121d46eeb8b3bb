"""pow2_linear_int8 (int8 activations x exact power-of-two codes) against its twin, on every CPU
path; the twin against the float product it approximates; errors and opcheck."""

import pytest
import torch

from compressor.errors import CompressorError
from compressor.ops import pow2_linear_int8, reference
from tests.conftest import require_kernel
from tests.test_pow2 import cpu_path, packed_layer

# "native" is the VNNI path on an AVX-512 VNNI build; "avx2" and "scalar" run the scalar one.
ISAS = ["native", "avx2", "scalar"]
# Rows 1 (dot tiles of 1 x 8), 2..7 (dot tiles of <= 4 x 3), >= 8 (64-row panels, tiles of <= 6
# rows); columns around the 128-column block and the 64-column panel; K = 0.
SHAPES = [(1, 1, 1), (1, 9, 130), (2, 3, 8), (3, 17, 257), (7, 65, 129), (8, 64, 128),
          (9, 1, 300), (13, 70, 1030), (33, 130, 200), (64, 5, 4200), (128, 66, 77),
          (512, 3, 20), (4, 5, 0)]


def _inputs(m, k, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(m, k, generator=gen) * torch.rand(m, 1, generator=gen) * 4


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_kernel_matches_twin(isa, bits, shape):
    require_kernel("pow2_linear_int8", "cpu")
    m, n_out, k = shape
    _, codes, nonzero, n1 = packed_layer(n_out, k, bits, seed=m + k)
    x = _inputs(m, k, m * n_out + k)
    bias = torch.randn(n_out) if m % 2 else None
    with cpu_path(isa):
        got = torch.ops.compressor.pow2_linear_int8(x, codes, nonzero, bias, k, bits, n1)
    want = reference.pow2_linear_int8(x, codes, nonzero, bias, k, bits, n1)
    # Same integers on every path; only the last rounding of the scale may differ (1 ulp).
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("bits", [3, 4])
def test_twin_is_the_float_product_within_int8_rounding(bits):
    w, codes, nonzero, n1 = packed_layer(40, 300, bits, seed=bits)
    x = _inputs(16, 300, 7)
    got = reference.pow2_linear_int8(x, codes, nonzero, None, 300, bits, n1).double()
    exact = x.double() @ w.double().T
    # Each input is off by at most half a step (amax / 254): |error| <= sum |w| * step / 2.
    bound = w.double().abs().sum(1) * (x.abs().amax(1, keepdim=True).double() / 254)
    assert bool(((got - exact).abs() <= bound + 1e-6).all())
    rel = ((got - exact).norm() / exact.norm()).item()
    print(f"bits={bits}: relative error vs the float product {rel:.2e}")
    assert rel < 0.02


def test_nonfinite_rows_are_nan_and_zero_rows_are_bias():
    require_kernel("pow2_linear_int8", "cpu")
    _, codes, nonzero, n1 = packed_layer(70, 150, 4)
    x = torch.randn(9, 150)
    x[1, 3], x[4, 149], x[6] = float("nan"), float("inf"), 0.0
    x[7] = 1e-38  # 127 / amax overflows: the row counts as zero
    bias = torch.randn(70)
    for isa in ISAS:
        with cpu_path(isa):
            got = torch.ops.compressor.pow2_linear_int8(x, codes, nonzero, bias, 150, 4, n1)
        want = reference.pow2_linear_int8(x, codes, nonzero, bias, 150, 4, n1)
        assert got[[1, 4]].isnan().all() and want[[1, 4]].isnan().all()
        assert torch.equal(got[6], bias) and torch.equal(got[7], bias)
        keep = [0, 2, 3, 5, 8]
        torch.testing.assert_close(got[keep], want[keep], atol=1e-5, rtol=1e-6)


def test_wrapper_leading_dims_noncontiguous_and_dtypes():
    require_kernel("pow2_linear_int8", "cpu")
    _, codes, nonzero, n1 = packed_layer(21, 45, 4)
    x = torch.randn(45, 2, 6).permute(1, 2, 0)  # (2, 6, 45), non-contiguous
    got = pow2_linear_int8(x, codes, nonzero, None, 45, 4, n1)
    want = reference.pow2_linear_int8(x.reshape(12, 45), codes, nonzero, None, 45, 4, n1)
    torch.testing.assert_close(got, want.reshape(2, 6, 21), atol=1e-5, rtol=1e-6)
    got64 = pow2_linear_int8(x.double(), codes, nonzero, None, 45, 4, n1)  # the twin
    assert got64.dtype == torch.float64
    torch.testing.assert_close(got64.float(), got, atol=1e-5, rtol=1e-6)


def test_errors_name_the_argument():
    require_kernel("pow2_linear_int8", "cpu")
    _, codes, nonzero, n1 = packed_layer(4, 10, 4)
    _, codes5, nonzero5, _ = packed_layer(4, 10, 5)
    x = torch.randn(2, 10)
    with pytest.raises(CompressorError, match="pow2_linear_int8: bits must be <= 4"):
        pow2_linear_int8(x, codes5, nonzero5, None, 10, 5, n1)
    with pytest.raises(RuntimeError, match="pow2_linear_int8: bits must be <= 4"):
        torch.ops.compressor.pow2_linear_int8(x, codes5, nonzero5, None, 10, 5, n1)
    with pytest.raises(CompressorError, match="pow2_linear_int8: n1 must be an int"):
        pow2_linear_int8(x, codes, nonzero, None, 10, 4, 1.5)
    with pytest.raises(RuntimeError, match="pow2_linear_int8: codes must have 12 columns"):
        torch.ops.compressor.pow2_linear_int8(torch.randn(2, 20), codes, nonzero, None, 20, 4, n1)
    with pytest.raises(RuntimeError, match="in_features must be <= 131072"):
        big = torch.zeros(1, 131080 // 2, dtype=torch.uint8)
        torch.ops.compressor.pow2_linear_int8(torch.zeros(1, 131073), big, nonzero, None,
                                              131073, 4, 0)


def test_opcheck():
    require_kernel("pow2_linear_int8", "cpu")
    _, codes, nonzero, n1 = packed_layer(70, 19, 4)
    for m in (1, 3, 9):
        args = (torch.randn(m, 19), codes, nonzero, torch.randn(70), 19, 4, n1)
        torch.library.opcheck(torch.ops.compressor.pow2_linear_int8.default, args)
