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
from compressor.ops._dispatch import has_kernel
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


@pytest.mark.parametrize("batch", [1, 5, 130])
def test_nonfinite_inputs_spread_as_in_linear(device, batch):
    """A NaN or inf meets the pruned zeros in F.linear, so its whole output row is non-finite."""
    require_kernel("sparse_linear", device)
    lin = pruned_linear(37, 19, 0.9, device)
    x = torch.randn(batch, 37, device=device)
    x[0, 3] = float("nan")
    x[-1, 36] = float("inf")
    with torch.no_grad():
        got, want = SparseLinear.from_dense(lin)(x), lin(x)
    assert torch.equal(got.isfinite(), want.isfinite())
    assert not got[0].isfinite().any() and not got[-1].isfinite().any()
    rows = slice(1, batch - 1)
    torch.testing.assert_close(got[rows], want[rows], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(3, 0), (2, 4, 0), (0,)])
def test_zero_in_features_give_the_bias(device, shape):
    require_kernel("sparse_linear", device)
    lin = torch.nn.Linear(0, 6).to(device)
    x = torch.randn(shape, device=device)
    with torch.no_grad():
        torch.testing.assert_close(SparseLinear.from_dense(lin)(x), lin(x))
        flat = torch.randn(3, 0, device=device)
        torch.testing.assert_close(reference.sparse_linear(flat, *csr_from_dense(lin.weight),
                                                           lin.bias), lin(flat))


def _bad_weights():
    values, col, row_ptr = csr_from_dense(pruned_linear(20, 9, 0.5, "cpu").weight)
    neg, high, back, start = col.clone(), col.clone(), row_ptr.clone(), row_ptr.clone()
    neg[0], high[-1] = -1, 20
    back[2], back[3] = back[3], back[2] - 1
    start[0] = 1
    return [("col_idx entries must lie in \\[0, 20\\)", (values, neg, row_ptr)),
            ("col_idx entries must lie in \\[0, 20\\)", (values, high, row_ptr)),
            ("row_ptr must be non-decreasing", (values, col, back)),
            ("row_ptr must run from 0", (values, col, start)),
            ("col_idx and row_ptr must be int32", (values, col.long(), row_ptr)),
            ("col_idx has \\d+ entries but values has", (values[1:], col, row_ptr))]


@pytest.mark.parametrize("case", range(6))
def test_twin_checks_the_kernel_contract(case):
    message, (values, col, row_ptr) = _bad_weights()[case]
    x = torch.randn(3, 20, dtype=torch.float64)  # float64: the twin's path in the wrapper
    with pytest.raises(CompressorError, match=f"sparse_linear: {message}"):
        reference.sparse_linear(x, values, col, row_ptr, None)
    if case < 3 and has_kernel("sparse_linear", "cpu"):  # the kernel's own message, same cause
        with pytest.raises(RuntimeError, match="sparse_linear: (col_idx|row_ptr)"):
            torch.ops.compressor.sparse_linear(x.float(), values, col, row_ptr, None)
