"""CUDA sparse conv2d / linear kernels against dense F.conv2d / F.linear in float64 on the CPU.

The CSR tensors are built here with plain torch ops, following the op contract in csrc/ops.cpp, so
these tests do not depend on compressor.formats.csr. Every test skips without a CUDA device.
"""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import compressor.ops.sparse  # noqa: F401  (registers the fake kernels opcheck needs)
from compressor.ops import reference
from tests.conftest import require_kernel

pytestmark = pytest.mark.cuda
ops = torch.ops.compressor


def sparse_weight(shape, sparsity: float, zero_rows=(), seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(shape, generator=gen, dtype=torch.float64)
    weight[torch.rand(shape, generator=gen) < sparsity] = 0
    weight[list(zero_rows)] = 0
    return weight


def csr_rows(matrix: torch.Tensor):
    """(rows, cols, row_ptr int32) of the nonzeros of a 2-D tensor, row-major order."""
    rows, cols = matrix.nonzero(as_tuple=True)
    row_ptr = torch.zeros(matrix.shape[0] + 1, dtype=torch.int32)
    row_ptr[1:] = torch.cumsum(torch.bincount(rows, minlength=matrix.shape[0]), 0)
    return rows, cols, row_ptr


def pack_conv(weight, device="cuda"):
    """values, col_idx = c_local*kh*kw + r*kw + s (sorted per row), row_ptr (all on device)."""
    flat = weight.reshape(weight.shape[0], -1)
    rows, cols, row_ptr = csr_rows(flat)
    return (flat[rows, cols].float().to(device), cols.int().to(device), row_ptr.to(device))


def pack_linear(weight, device="cuda"):
    rows, cols, row_ptr = csr_rows(weight)
    return weight[rows, cols].float().to(device), cols.int().to(device), row_ptr.to(device)


def run_conv(x, weight, bias, stride, padding, dilation, groups, dtype=torch.float32,
             residual=None, activation="none"):
    """(ours on CUDA as float64 on CPU, dense float64 reference)."""
    pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
    stride, padding, dilation = pair(stride), pair(padding), pair(dilation)
    values, cols, row_ptr = pack_conv(weight)
    b = None if bias is None else bias.float().cuda()
    res = None if residual is None else residual.to("cuda", dtype)
    got = ops.sparse_conv2d(x.to("cuda", dtype), values, cols, row_ptr, b,
                            tuple(weight.shape[-2:]), stride, padding, dilation, groups, res,
                            activation)
    want = F.conv2d(x.double(), weight, None if bias is None else bias.double(), stride, padding,
                    dilation, groups)
    want = want if residual is None else want + residual.double()
    return got.cpu().double(), reference.activate(want, activation)


CONV_CASES = {
    # name: (N, Cin, Cout, H, W, k, stride, padding, dilation, groups, sparsity)
    "3x3_odd": (1, 7, 9, 13, 11, 3, 1, 1, 1, 1, 0.9),
    "1x1": (1, 33, 17, 9, 10, 1, 1, 0, 1, 1, 0.8),
    "5x5_pad2": (2, 5, 6, 17, 19, 5, 1, 2, 1, 1, 0.7),
    "7x7_stride2": (1, 3, 16, 29, 31, 7, 2, 3, 1, 1, 0.6),
    "dilation2": (1, 8, 12, 21, 15, 3, 1, 2, 2, 1, 0.8),
    "groups4": (1, 12, 20, 14, 14, 3, 1, 1, 1, 4, 0.5),
    "depthwise": (2, 10, 10, 9, 9, 3, 1, 1, 1, 10, 0.3),
    "batch16": (16, 16, 24, 14, 14, 3, 1, 1, 1, 1, 0.9),
    "dense": (1, 6, 10, 12, 12, 3, 1, 1, 1, 1, 0.0),
    "empty": (2, 6, 10, 12, 12, 3, 1, 1, 1, 1, 1.0),
    "large_spatial": (1, 8, 16, 112, 112, 3, 1, 1, 1, 1, 0.9),
    "many_channel_chunks": (1, 300, 40, 56, 56, 3, 1, 1, 1, 1, 0.95),
    "no_padding_stride3": (1, 4, 5, 23, 26, 4, 3, 0, 1, 1, 0.5),
    "asymmetric": (1, 5, 7, 16, 20, (3, 5), (1, 2), (1, 2), (2, 1), 1, 0.5),
    "wide_1_row": (1, 4, 4, 1, 75, (1, 3), 1, (0, 1), 1, 1, 0.5),
    "tall_1_col": (2, 4, 4, 70, 1, (3, 1), 1, (1, 0), 1, 1, 0.5),
    # the patch of one channel exceeds shared memory: every nonzero takes the global path
    "huge_dilation": (1, 2, 3, 130, 130, 3, 1, 60, 60, 1, 0.3),
    # size-1 dims: one pixel, one input channel; a 1x1 input whose output comes through padding
    "single_pixel": (1, 1, 2, 1, 1, 1, 1, 0, 1, 1, 0.0),
    "1x1_input_padded": (3, 2, 3, 1, 1, 3, 1, 1, 1, 1, 0.0),
}


@pytest.mark.parametrize("case", CONV_CASES.values(), ids=CONV_CASES.keys())
@pytest.mark.parametrize("with_bias", [True, False])
def test_conv_matches_dense(case, with_bias):
    require_kernel("sparse_conv2d", "cuda")
    n, cin, cout, h, w, k, stride, padding, dilation, groups, sparsity = case
    k = (k, k) if isinstance(k, int) else k
    weight = sparse_weight((cout, cin // groups, *k), sparsity, zero_rows=range(0, cout, 5))
    x = torch.randn(n, cin, h, w, dtype=torch.float64)
    bias = torch.randn(cout, dtype=torch.float64) if with_bias else None
    got, want = run_conv(x, weight, bias, stride, padding, dilation, groups)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    print(f"max err {(got - want).abs().max().item():.2e}")


def conv_fixture():
    weight = sparse_weight((24, 40, 3, 3), 0.8)
    x = torch.randn(1, 40, 20, 20, dtype=torch.float64)
    args = ((3, 3), (1, 1), (1, 1), (1, 1), 1)
    return weight, x, pack_conv(weight), args


@pytest.mark.parametrize("activation", ["none", "relu", "relu6", "silu"])
def test_conv_fused_epilogue(activation):
    require_kernel("sparse_conv2d", "cuda")
    weight = sparse_weight((12, 7, 3, 3), 0.8)
    x = torch.randn(2, 7, 13, 11, dtype=torch.float64)
    residual = torch.randn(2, 12, 7, 6, dtype=torch.float64)
    got, want = run_conv(x, weight, torch.randn(12), 2, 1, 1, 1, residual=residual,
                         activation=activation)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_conv_nonfinite_input_propagates_like_dense():
    require_kernel("sparse_conv2d", "cuda")
    weight = sparse_weight((6, 5, 3, 3), 0.9)
    x = torch.randn(1, 5, 9, 9, dtype=torch.float64)
    x[0, 1, 4, 4], x[0, 3, 0, 8] = float("nan"), float("inf")
    got, want = run_conv(x, weight, None, 1, 1, 1, 1)
    assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.isinf(), want.isinf())


def test_conv_rejects_bad_csr_content():
    """Checked on the first call with a tensor, and again after any in-place change to it."""
    require_kernel("sparse_conv2d", "cuda")
    _, x, (values, cols, row_ptr), args = conv_fixture()
    x = x.float().cuda()
    ops.sparse_conv2d(x, values, cols, row_ptr, None, *args)  # valid: checked and cached
    cols[-1] = 40 * 9  # one channel past the input's: a weight packed for more channels
    with pytest.raises(RuntimeError, match=r"sparse_conv2d: col_idx entries must be in "
                                           r"\[0, 360\), got \[\d+, 360\]"):
        ops.sparse_conv2d(x, values, cols, row_ptr, None, *args)
    with pytest.raises(RuntimeError, match="sparse_conv2d: col_idx entries must be in"):
        ops.sparse_conv2d(x, values, cols.clone().fill_(-1), row_ptr, None, *args)
    cols[-1] = cols[-2]  # a duplicate column
    with pytest.raises(RuntimeError, match="col_idx must strictly increase within a row"):
        ops.sparse_conv2d(x, values, cols, row_ptr, None, *args)
    bad_rows = row_ptr.clone()
    bad_rows[3] = bad_rows[4] + 1
    with pytest.raises(RuntimeError, match="sparse_conv2d: row_ptr must be non-decreasing"):
        ops.sparse_conv2d(x, values, cols, bad_rows, None, *args)
    with pytest.raises(RuntimeError, match="sparse_conv2d: row_ptr must run from 0 to nnz="):
        ops.sparse_conv2d(x, values[1:], cols[1:], row_ptr, None, *args)


def test_conv_kernel_stays_in_bounds_on_unchecked_content():
    """Content changed behind the version counter skips the check; the kernel must still read
    nothing out of bounds: bad columns count as zero and row_ptr is clamped to [0, nnz]."""
    require_kernel("sparse_conv2d", "cuda")
    weight, x, (values, cols, row_ptr), args = conv_fixture()
    x = x.float().cuda()
    ops.sparse_conv2d(x, values, cols, row_ptr, None, *args)  # checked and cached
    cols.data[::7] = 2**31 - 1
    cols.data[1::7] = -5
    row_ptr.data[3], row_ptr.data[-1] = 10**9, 2  # past nnz, and a last entry below the others
    out = ops.sparse_conv2d(x, values, cols, row_ptr, None, *args)
    torch.cuda.synchronize()
    assert torch.isfinite(out).all()


def test_conv_many_group_tiles_exceed_grid_y():
    """groups * channel tiles > 65535 blocks in y: the kernel strides over them."""
    require_kernel("sparse_conv2d", "cuda")
    channels = 70_000
    weight = sparse_weight((channels, 1, 1, 1), 0.3)
    x = torch.randn(1, channels, 1, 1, dtype=torch.float64)
    got, want = run_conv(x, weight, None, 1, 0, 1, channels)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_conv_half_inputs_accumulate_in_float(dtype):
    require_kernel("sparse_conv2d", "cuda")
    weight = sparse_weight((16, 32, 3, 3), 0.9)
    x = torch.randn(2, 32, 15, 15, dtype=torch.float64).to(dtype).double()
    got, want = run_conv(x, weight, None, 1, 1, 1, 1, dtype=dtype)
    tol = 2e-2 if dtype == torch.float16 else 8e-2  # output rounding only: inputs are exact
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)


def test_conv_noncontiguous_input_through_wrapper():
    require_kernel("sparse_conv2d", "cuda")
    from compressor.ops.sparse import sparse_conv2d

    weight = sparse_weight((8, 6, 3, 3), 0.7)
    x = torch.randn(2, 13, 11, 6, dtype=torch.float64).permute(0, 3, 2, 1)  # (2, 6, 11, 13)
    values, cols, row_ptr = pack_conv(weight)
    xc = x.float().cuda()
    assert not xc.is_contiguous()
    got = sparse_conv2d(xc, values, cols, row_ptr, kernel_size=3, padding=1)
    torch.testing.assert_close(got.cpu().double(), F.conv2d(x, weight, None, 1, 1),
                               atol=1e-4, rtol=1e-4)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 3), cin_g=st.integers(1, 9), cout_g=st.integers(1, 9),
       groups=st.integers(1, 3), h=st.integers(1, 20), w=st.integers(1, 40),
       k=st.integers(1, 5), stride=st.integers(1, 3), pad=st.integers(0, 3),
       dil=st.integers(1, 3), sparsity=st.sampled_from([0.0, 0.5, 0.9, 1.0]))
def test_conv_fuzz(n, cin_g, cout_g, groups, h, w, k, stride, pad, dil, sparsity):
    require_kernel("sparse_conv2d", "cuda")
    if h + 2 * pad < dil * (k - 1) + 1 or w + 2 * pad < dil * (k - 1) + 1:
        return  # F.conv2d rejects it too
    weight = sparse_weight((cout_g * groups, cin_g, k, k), sparsity)
    x = torch.randn(n, cin_g * groups, h, w, dtype=torch.float64)
    got, want = run_conv(x, weight, torch.randn(cout_g * groups), stride, pad, dil, groups)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


LINEAR_CASES = [(1, 4096, 1000, 0.9), (1, 37, 53, 0.5), (2, 64, 33, 0.0), (3, 100, 7, 1.0),
                (5, 257, 129, 0.95), (16, 300, 200, 0.8), (33, 70, 90, 0.7)]


@pytest.mark.parametrize("m,k,n,sparsity", LINEAR_CASES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_matches_dense(m, k, n, sparsity, with_bias):
    require_kernel("sparse_linear", "cuda")
    weight = sparse_weight((n, k), sparsity, zero_rows=range(0, n, 4))
    x = torch.randn(m, k, dtype=torch.float64)
    bias = torch.randn(n, dtype=torch.float64) if with_bias else None
    values, cols, row_ptr = pack_linear(weight)
    got = ops.sparse_linear(x.float().cuda(), values, cols, row_ptr,
                            None if bias is None else bias.float().cuda())
    torch.testing.assert_close(got.cpu().double(), F.linear(x, weight, bias), atol=1e-4,
                               rtol=1e-4)


def offset_view(x: torch.Tensor, dtype) -> torch.Tensor:
    """x on CUDA in `dtype`, one element into its storage: contiguous, but only 2-byte aligned."""
    store = torch.empty(x.numel() + 1, dtype=dtype, device="cuda")
    view = store[1:].view(x.shape)
    view.copy_(x)
    assert view.is_contiguous() and view.data_ptr() % 4 != 0
    return view


@pytest.mark.parametrize("rows", [1, 3, 9])
def test_linear_input_at_odd_offset(rows):
    require_kernel("sparse_linear", "cuda")
    weight = sparse_weight((37, 45), 0.6)
    x = torch.randn(rows, 45, dtype=torch.float64).half().double()
    values, cols, row_ptr = pack_linear(weight)
    got = ops.sparse_linear(offset_view(x, torch.float16), values, cols, row_ptr, None)
    torch.testing.assert_close(got.cpu().double(), F.linear(x, weight), atol=2e-2, rtol=2e-2)


def test_conv_input_at_odd_offset():
    require_kernel("sparse_conv2d", "cuda")
    weight = sparse_weight((6, 5, 3, 3), 0.6)
    x = torch.randn(2, 5, 9, 11, dtype=torch.float64).half().double()
    values, cols, row_ptr = pack_conv(weight)
    got = ops.sparse_conv2d(offset_view(x, torch.float16), values, cols, row_ptr, None, (3, 3),
                            (1, 1), (1, 1), (1, 1), 1)
    torch.testing.assert_close(got.cpu().double(), F.conv2d(x, weight, None, 1, 1), atol=2e-2,
                               rtol=2e-2)


def test_linear_zero_in_features():
    """No input features and no nonzeros: every output is its bias."""
    require_kernel("sparse_linear", "cuda")
    bias = torch.randn(5, device="cuda")
    row_ptr = torch.zeros(6, dtype=torch.int32, device="cuda")
    empty_values = torch.empty(0, device="cuda")
    empty_cols = torch.empty(0, dtype=torch.int32, device="cuda")
    got = ops.sparse_linear(torch.empty(4, 0, device="cuda"), empty_values, empty_cols, row_ptr,
                            bias)
    torch.testing.assert_close(got, bias.expand(4, 5))


def test_linear_many_row_tiles():
    require_kernel("sparse_linear", "cuda")
    weight = sparse_weight((3, 2), 0.0)
    x = torch.randn(600_000, 2, dtype=torch.float64)  # > 65535 tiles of 8 rows
    values, cols, row_ptr = pack_linear(weight)
    got = ops.sparse_linear(x.float().cuda(), values, cols, row_ptr, None)
    torch.testing.assert_close(got.cpu().double(), F.linear(x, weight), atol=1e-5, rtol=1e-5)


def test_linear_bad_columns():
    require_kernel("sparse_linear", "cuda")
    weight = sparse_weight((3, 4), 0.0)
    x = torch.randn(9, 4, dtype=torch.float64)
    values, cols, row_ptr = pack_linear(weight)
    xc = x.float().cuda()
    bad = cols.clone()
    bad[1] = 4
    with pytest.raises(RuntimeError, match=r"sparse_linear: col_idx entries must be in \[0, 4\)"):
        ops.sparse_linear(xc, values, bad, row_ptr, None)
    ops.sparse_linear(xc, values, cols, row_ptr, None)  # checked and cached
    cols.data[0], cols.data[1] = 4, -1  # unchecked (no version bump): these count as zero
    weight[0, 0] = weight[0, 1] = 0
    got = ops.sparse_linear(xc, values, cols, row_ptr, None)
    torch.testing.assert_close(got.cpu().double(), F.linear(x, weight), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_linear_half_inputs(dtype):
    require_kernel("sparse_linear", "cuda")
    weight = sparse_weight((40, 300), 0.8)
    x = torch.randn(3, 300, dtype=torch.float64).to(dtype).double()
    values, cols, row_ptr = pack_linear(weight)
    got = ops.sparse_linear(x.to("cuda", dtype), values, cols, row_ptr, None)
    assert got.dtype == dtype
    tol = 2e-2 if dtype == torch.float16 else 8e-2
    torch.testing.assert_close(got.cpu().double(), F.linear(x, weight), atol=tol, rtol=tol)


def test_linear_noncontiguous_3d_input_through_wrapper():
    require_kernel("sparse_linear", "cuda")
    from compressor.ops.sparse import sparse_linear

    weight = sparse_weight((21, 19), 0.6)
    x = torch.randn(19, 4, 3, dtype=torch.float64).permute(2, 1, 0)  # (3, 4, 19)
    values, cols, row_ptr = pack_linear(weight)
    got = sparse_linear(x.float().cuda(), values, cols, row_ptr)
    torch.testing.assert_close(got.cpu().double(), F.linear(x, weight), atol=1e-4, rtol=1e-4)


def test_opcheck():
    require_kernel("sparse_conv2d", "cuda")
    require_kernel("sparse_linear", "cuda")
    weight = sparse_weight((6, 4, 3, 3), 0.5)
    values, cols, row_ptr = pack_conv(weight)
    x = torch.randn(2, 4, 9, 8, device="cuda")
    for residual, act in ((None, "none"), (torch.randn(2, 6, 9, 8, device="cuda"), "relu")):
        torch.library.opcheck(ops.sparse_conv2d.default,
                              (x, values, cols, row_ptr, torch.randn(6, device="cuda"), (3, 3),
                               (1, 1), (1, 1), (1, 1), 1, residual, act))
    lin = pack_linear(sparse_weight((5, 7), 0.5))
    torch.library.opcheck(ops.sparse_linear.default, (torch.randn(3, 7, device="cuda"), *lin, None))


def conv_args(**change):
    """Valid sparse_conv2d arguments on CUDA, with some replaced."""
    values, cols, row_ptr = pack_conv(sparse_weight((6, 4, 3, 3), 0.5))
    args = dict(input=torch.randn(1, 4, 9, 8, device="cuda"), values=values, col_idx=cols,
                row_ptr=row_ptr, bias=None, kernel_size=(3, 3), stride=(1, 1),
                padding=(1, 1), dilation=(1, 1), groups=1, residual=None, activation="none")
    args.update(change)
    return tuple(args.values())


def cuda_zeros(*shape, dtype=torch.float32):
    return torch.zeros(shape, dtype=dtype, device="cuda")


# name: (the arguments to change, built lazily so importing needs no GPU; the expected message)
BAD_CONV = {
    "values dtype": (lambda: dict(values=cuda_zeros(3, dtype=torch.float64)),
                     "sparse_conv2d: values must be Float"),
    "col_idx dtype": (lambda: dict(col_idx=cuda_zeros(3, dtype=torch.int64)),
                      "sparse_conv2d: col_idx must be Int"),
    "lengths": (lambda: dict(col_idx=cuda_zeros(1, dtype=torch.int32)),
                "sparse_conv2d: col_idx has 1 entries but values has"),
    "values device": (lambda: dict(values=conv_args()[1].cpu()),
                      "sparse_conv2d: values must be on cuda"),
    "input dtype": (lambda: dict(input=cuda_zeros(1, 4, 9, 8, dtype=torch.float64)),
                    "sparse_conv2d: input must be float32, float16 or bfloat16"),
    "input contiguity": (lambda: dict(input=cuda_zeros(1, 4, 8, 9).transpose(2, 3)),
                         "sparse_conv2d: input must be contiguous"),
    "input dims": (lambda: dict(input=cuda_zeros(4, 9, 8)),
                   "sparse_conv2d: input must have 4 dims"),
    "activation": (lambda: dict(activation="gelu"), "sparse_conv2d: activation must be one of"),
    "residual shape": (lambda: dict(residual=cuda_zeros(1, 6, 9, 9)),
                       "sparse_conv2d: residual must have the output's shape"),
    "groups": (lambda: dict(groups=3),
               "sparse_conv2d: input has 4 channels, not divisible by groups=3"),
    "bias shape": (lambda: dict(bias=cuda_zeros(5)),
                   "sparse_conv2d: bias must have shape \\(6\\)"),
    "stride": (lambda: dict(stride=(0, 1)), "sparse_conv2d: stride entries must be in"),
    "kernel too big": (lambda: dict(kernel_size=(13, 3)),
                       "sparse_conv2d: kernel extent 13 exceeds"),
    "row_ptr empty": (lambda: dict(row_ptr=cuda_zeros(0, dtype=torch.int32)),
                      "sparse_conv2d: row_ptr must have rows \\+ 1 >= 1 entries"),
}


@pytest.mark.parametrize("change,message", BAD_CONV.values(), ids=BAD_CONV.keys())
def test_conv_rejects_bad_input(change, message):
    require_kernel("sparse_conv2d", "cuda")
    with pytest.raises(RuntimeError, match=message):
        ops.sparse_conv2d(*conv_args(**change()))


def test_empty_batch():
    require_kernel("sparse_conv2d", "cuda")
    require_kernel("sparse_linear", "cuda")
    out = ops.sparse_conv2d(*conv_args(input=cuda_zeros(0, 4, 9, 8)))
    assert out.shape == (0, 6, 9, 8)
    values, cols, row_ptr = pack_linear(sparse_weight((5, 7), 0.5))
    assert ops.sparse_linear(cuda_zeros(0, 7), values, cols, row_ptr, None).shape == (0, 5)


def test_linear_rejects_bad_input():
    require_kernel("sparse_linear", "cuda")
    values, cols, row_ptr = pack_linear(sparse_weight((5, 7), 0.5))
    x = torch.randn(3, 7, device="cuda")
    with pytest.raises(RuntimeError, match="sparse_linear: input must have 2 dims"):
        ops.sparse_linear(x[None], values, cols, row_ptr, None)
    with pytest.raises(RuntimeError, match="sparse_linear: col_idx must be Int"):
        ops.sparse_linear(x, values, cols.long(), row_ptr, None)
    with pytest.raises(RuntimeError, match="sparse_linear: row_ptr must be on cuda"):
        ops.sparse_linear(x, values, cols, row_ptr.cpu(), None)
    with pytest.raises(RuntimeError, match="sparse_linear: input must be contiguous"):
        ops.sparse_linear(torch.randn(7, 3, device="cuda").t(), values, cols, row_ptr, None)
    with pytest.raises(RuntimeError, match="sparse_linear: bias must have shape"):
        ops.sparse_linear(x, values, cols, row_ptr, torch.zeros(4, device="cuda"))
