"""Sparse linear against F.linear: batch 1 (SpMV) and larger (SpMM), bad input, opcheck, fuzzing."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from compressor.errors import CompressorError
from compressor.formats.csr import csr_from_dense
from compressor.nn import SparseLinear
from compressor.ops import reference
from tests.conftest import require_kernel


def pruned_linear(k, n, sparsity, device, bias=True):
    lin = torch.nn.Linear(k, n, bias=bias).to(device)
    with torch.no_grad():
        lin.weight.mul_(torch.rand_like(lin.weight) >= sparsity)
    return lin


# 130 and 200 rows: several panels and a part-filled last one for both tile widths (64, 192).
@pytest.mark.parametrize("shape", [(1, 37), (5, 37), (2, 70, 37), (37,), (130, 37), (200, 37)])
@pytest.mark.parametrize("sparsity", [0.0, 0.9, 1.0])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_linear(device, shape, sparsity, bias):
    require_kernel("sparse_linear", device)
    lin = pruned_linear(37, 19, sparsity, device, bias)
    x = torch.randn(shape, device=device)
    with torch.no_grad():
        got, want = SparseLinear.from_dense(lin)(x), lin(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_noncontiguous_twin_to_dense(device):
    require_kernel("sparse_linear", device)
    lin = pruned_linear(33, 17, 0.8, device)
    sl = SparseLinear.from_dense(lin)
    x = torch.randn(33, 6, device=device).t()
    with torch.no_grad():
        torch.testing.assert_close(sl(x), lin(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(reference.sparse_linear(x, sl.values, sl.col_idx, sl.row_ptr,
                                                           sl.bias), lin(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sl.to_dense()(x), lin(x))


def test_opcheck(device):
    require_kernel("sparse_linear", device)
    lin = pruned_linear(20, 9, 0.5, device)
    values, col, row_ptr = csr_from_dense(lin.weight)
    for m in (1, 4):
        x = torch.randn(m, 20, device=device)
        torch.library.opcheck(torch.ops.compressor.sparse_linear.default,
                              (x, values, col, row_ptr, lin.bias.detach()))


def test_kernel_rejects_bad_input():
    require_kernel("sparse_linear", "cpu")
    values, col, row_ptr = csr_from_dense(pruned_linear(20, 9, 0.5, "cpu").weight)
    op = torch.ops.compressor.sparse_linear
    for batch in (1, 2):  # SpMV checks each row as it goes, SpMM all of col_idx up front
        with pytest.raises(RuntimeError, match="sparse_linear: col_idx must lie in \\[0, 10\\)"):
            op(torch.randn(batch, 10), values, col, row_ptr, None)
    neg = col.clone()
    neg[-1] = -1
    with pytest.raises(RuntimeError, match="col_idx must lie in \\[0, 20\\)"):
        op(torch.randn(1, 20), values, neg, row_ptr, None)
    with pytest.raises(RuntimeError, match="input must be Float"):
        op(torch.randn(2, 20).double(), values, col, row_ptr, None)
    with pytest.raises(RuntimeError, match="col_idx must be Int"):
        op(torch.randn(2, 20), values, col.long(), row_ptr, None)
    bad = row_ptr.clone()
    bad[1] = bad[-1]
    with pytest.raises(RuntimeError, match="row_ptr must be non-decreasing"):
        op(torch.randn(2, 20), values, col, bad, None)
    strided_bias = torch.randn(18)[::2]  # 9 entries, but not laid out one after another
    with pytest.raises(RuntimeError, match="sparse_linear: bias must be contiguous"):
        op(torch.randn(2, 20), values, col, row_ptr, strided_bias)
    with pytest.raises(CompressorError, match="expects input \\(..., 20\\)"):
        SparseLinear.from_dense(torch.nn.Linear(20, 3))(torch.randn(2, 21))


@settings(max_examples=30, deadline=None)
@given(m=st.integers(1, 80), k=st.integers(1, 50), n=st.integers(1, 30),
       sparsity=st.floats(0, 1))
def test_fuzz_against_linear(m, k, n, sparsity):
    require_kernel("sparse_linear", "cpu")
    lin = pruned_linear(k, n, sparsity, "cpu")
    x = torch.randn(m, k)
    with torch.no_grad():
        torch.testing.assert_close(SparseLinear.from_dense(lin)(x),
                                   F.linear(x, lin.weight, lin.bias), atol=1e-5, rtol=1e-5)
