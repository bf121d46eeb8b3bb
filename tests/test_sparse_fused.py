"""Fused sparse conv blocks (BN folded, residual add, activation in the epilogue) against the
unfused dense modules; inf/NaN propagation; the CSR contract on every path (kernel, twin,
to_dense)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from compressor.errors import CompressorError
from compressor.formats.csr import csr_from_dense, dense_from_csr
from compressor.nn import SparseConv2d
from compressor.nn.fused import ConvAct
from compressor.ops import reference, sparse_conv2d
from tests.conftest import require_kernel

ACTS = {"none": nn.Identity(), "relu": nn.ReLU(), "relu6": nn.ReLU6(), "silu": nn.SiLU()}


def pruned_conv_bn(cin, cout, k, stride, padding, groups=1, sparsity=0.8, seed=0):
    torch.manual_seed(seed)
    conv = nn.Conv2d(cin, cout, k, stride, padding, groups=groups, bias=seed % 2 == 0)
    bn = nn.BatchNorm2d(cout).eval()
    with torch.no_grad():
        conv.weight.mul_(torch.rand_like(conv.weight) >= sparsity)
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_()
        bn.bias.normal_()
    return conv, bn


def noncontiguous(shape):
    """A tensor of `shape` (N, C, H, W) that is a permuted view, not contiguous."""
    n, c, h, w = shape
    return torch.randn(w, h, c, n).permute(3, 2, 1, 0)


# (cin, cout, kernel, stride, padding, groups, hw)
GEOMS = [(5, 7, 3, 1, 1, 1, (9, 11)), (6, 10, 1, 1, 0, 1, (7, 13)), (8, 6, 3, 2, 1, 2, (13, 10)),
         (3, 4, 1, 2, 0, 1, (11, 9)), (70, 24, 3, 1, 1, 1, (5, 17)), (4, 5, 5, 1, 2, 1, (1, 1)),
         (6, 6, 3, 1, 1, 6, (9, 11)), (8, 16, 3, 2, 1, 8, (13, 10))]  # the last two depthwise


@pytest.mark.parametrize("geom", GEOMS)
@pytest.mark.parametrize("activation", list(ACTS))
@pytest.mark.parametrize("batch", [1, 16])
def test_fused_equals_unfused_dense(geom, activation, batch):
    require_kernel("sparse_conv2d", "cpu")
    cin, cout, k, s, p, g, hw = geom
    conv, bn = pruned_conv_bn(cin, cout, k, s, p, g, seed=batch)
    x = noncontiguous((batch, cin, *hw))
    with torch.no_grad():
        y = bn(conv(x))
        residual = noncontiguous(tuple(y.shape))
        fused = SparseConv2d.from_dense(conv, bn, activation, residual=True)
        want = ACTS[activation](y + residual)
        got = fused(x, residual)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        plain = SparseConv2d.from_dense(conv, bn, activation)
        torch.testing.assert_close(plain(x), ACTS[activation](y), atol=1e-4, rtol=1e-4)
        dense = ConvAct.from_dense(conv, bn, activation, residual=True)
        torch.testing.assert_close(dense(x, residual), want, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(fused.to_dense()(x, residual), want, atol=1e-4, rtol=1e-4)
        # the twin (float64 input, no kernel) keeps the same contract
        torch.testing.assert_close(fused(x.double(), residual.double()), want.double(),
                                   atol=1e-4, rtol=1e-4)
    print(geom, activation, batch, f"max err {(got - want).abs().max().item():.2e}")


# Small planes (whole spans of 1-6 AVX-512 vectors, 1-4 AVX2: one tile, and the k x k ones under
# channel_block_count's small-plane budget): a 7x7 plane padded (span 61) and not (49), strided
# (phase planes), 3x3 and 5x5 planes, grouped, and many input channels (several channel blocks,
# partial sums parked between them). Batches from 1 to 25, odd ones among them.
SMALL_PLANES = [(40, 24, 3, 1, 1, 1, (7, 7)), (64, 40, 1, 1, 0, 1, (7, 7)),
                (16, 12, 3, 2, 1, 1, (14, 14)), (12, 8, 3, 1, 1, 1, (3, 3)),
                (10, 6, 1, 1, 0, 1, (4, 4)), (8, 12, 3, 1, 1, 2, (5, 6)),
                (300, 20, 3, 1, 1, 1, (7, 7))]


@pytest.mark.parametrize("geom", SMALL_PLANES)
@pytest.mark.parametrize("batch", [1, 2, 5, 7, 13, 25])
def test_small_planes_at_every_batch(geom, batch):
    require_kernel("sparse_conv2d", "cpu")
    cin, cout, k, s, p, g, hw = geom
    conv, bn = pruned_conv_bn(cin, cout, k, s, p, g, sparsity=0.7, seed=batch)
    x = noncontiguous((batch, cin, *hw))
    with torch.no_grad():
        y = bn(conv(x))
        residual = noncontiguous(tuple(y.shape))
        for activation in ("none", "relu"):
            fused = SparseConv2d.from_dense(conv, bn, activation, residual=True)
            torch.testing.assert_close(fused(x, residual), ACTS[activation](y + residual),
                                       atol=1e-4, rtol=1e-4)


@settings(max_examples=30, deadline=None)
@given(cin=st.integers(1, 9), cout=st.integers(1, 9), k=st.integers(1, 3), s=st.integers(1, 3),
       p=st.integers(0, 2), h=st.integers(1, 10), w=st.integers(1, 10), n=st.integers(1, 3),
       act=st.sampled_from(list(ACTS)), with_res=st.booleans(), sparsity=st.floats(0, 1))
def test_fuzz_fused_op_against_twin(cin, cout, k, s, p, h, w, n, act, with_res, sparsity):
    require_kernel("sparse_conv2d", "cpu")
    if h + 2 * p < k or w + 2 * p < k:
        return
    weight = torch.randn(cout, cin, k, k) * (torch.rand(cout, cin, k, k) >= sparsity)
    values, col, row_ptr = csr_from_dense(weight)
    x, bias = torch.randn(n, cin, h, w), torch.randn(cout)
    shape = (n, cout, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1)
    res = torch.randn(shape) if with_res else None
    got = sparse_conv2d(x, values, col, row_ptr, bias, kernel_size=k, stride=s, padding=p,
                        residual=res, activation=act)
    want = reference.sparse_conv2d(x, values, col, row_ptr, bias, (k, k), (s, s), (p, p),
                                   (1, 1), 1, res, act)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("geom", [(4, 6, 1, 1, 0), (4, 6, 3, 1, 1), (4, 6, 3, 2, 1),
                                  (4, 6, 3, 1, 0), (4, 6, 1, 2, 0), (4, 4, 3, 1, 1, 4),
                                  (4, 8, 3, 2, 1, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nonfinite_input_propagates_like_dense(geom, dtype):
    """Pruned zeros must not hide an inf or NaN: 0 * inf is NaN in the dense conv. (A strided
    1x1 conv never reads the inf at an odd column, so neither output has it.)"""
    cin, cout, k, s, p, *groups = geom  # the last two: depthwise
    conv, _ = pruned_conv_bn(cin, cout, k, s, p, *groups, sparsity=0.9)
    conv = conv.to(dtype)
    x = torch.randn(2, cin, 9, 8, dtype=dtype)
    x[0, 1, 4, 4], x[1, 3, 0, 7], x[1, 0, 8, 0] = float("nan"), float("inf"), float("-inf")
    sc = SparseConv2d.from_dense(conv)
    with torch.no_grad():
        got, want = sc(x), conv(x)
    assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.isinf(), want.isinf())
    finite = want.isfinite()
    torch.testing.assert_close(got[finite], want[finite], atol=1e-4, rtol=1e-4)


def csr_case(kind: str):
    """A valid (values, col_idx, row_ptr) for a (4, 3, 3, 3) weight, corrupted by `kind`."""
    weight = torch.randn(4, 3, 3, 3) * (torch.rand(4, 3, 3, 3) > 0.5)
    weight[:, 0, 0, :2] = 1.0  # every row has at least 2 nonzeros
    values, col, row_ptr = (t.clone() for t in csr_from_dense(weight))
    if kind == "negative":
        col[1] = -1
    elif kind == "too_large":
        col[int(row_ptr[1]) - 1] = 27
    elif kind == "duplicate":
        col[1] = col[0]
    elif kind == "unsorted":
        col[0], col[1] = col[1].clone(), col[0].clone()
    elif kind == "row_ptr_decreasing":
        row_ptr[2] = row_ptr[3] + 1
    elif kind == "row_ptr_start":
        row_ptr[0] = 1
    elif kind == "row_ptr_end":
        row_ptr[-1] -= 1
    return values, col, row_ptr


BAD = ["negative", "too_large", "duplicate", "unsorted", "row_ptr_decreasing", "row_ptr_start",
       "row_ptr_end"]
PATHS = {"kernel_stride1": (torch.float32, 1, 1), "kernel_stride2": (torch.float32, 2, 1),
         "kernel_unpadded": (torch.float32, 1, 0), "twin_float64": (torch.float64, 1, 1),
         "twin_float64_stride2": (torch.float64, 2, 0)}


@pytest.mark.parametrize("kind", BAD)
@pytest.mark.parametrize("path", list(PATHS))
def test_bad_weight_rejected_on_every_path(kind, path):
    dtype, stride, padding = PATHS[path]
    if dtype == torch.float32:
        require_kernel("sparse_conv2d", "cpu")
    values, col, row_ptr = csr_case(kind)
    x = torch.randn(2, 3, 8, 9, dtype=dtype)
    with pytest.raises((RuntimeError, CompressorError), match="sparse_conv2d: (col_idx|row_ptr)"):
        sparse_conv2d(x, values, col, row_ptr, kernel_size=3, stride=stride, padding=padding)


@pytest.mark.parametrize("kind", BAD)
def test_bad_weight_rejected_by_to_dense(kind):
    values, col, row_ptr = csr_case(kind)
    with pytest.raises(CompressorError, match="(col_idx|row_ptr)"):
        dense_from_csr(values, col, row_ptr, (4, 3, 3, 3))
    sc = SparseConv2d(3, 4, (3, 3), values=values, col_idx=col, row_ptr=row_ptr)
    with pytest.raises(CompressorError, match="SparseConv2d.to_dense: "):
        sc.to_dense()


def test_module_errors_and_export_form():
    conv, bn = pruned_conv_bn(4, 6, 3, 1, 1)
    with pytest.raises(CompressorError, match="activation must be one of"):
        SparseConv2d.from_dense(conv, bn, "gelu")
    fused = SparseConv2d.from_dense(conv, bn, "relu", residual=True)
    with pytest.raises(CompressorError, match="fused with a residual"):
        fused(torch.randn(1, 4, 5, 5))
    assert isinstance(fused.to_dense(), ConvAct) and "residual=True" in repr(fused)
    assert isinstance(SparseConv2d.from_dense(conv).to_dense(), nn.Conv2d)
    with pytest.raises(CompressorError, match="does not match"):
        SparseConv2d.from_dense(conv, nn.BatchNorm2d(5).eval())


@pytest.mark.parametrize("activation", list(ACTS))
def test_epilogue_keeps_nonfinite_residual_like_torch(activation):
    """The epilogue's max/min must not turn a NaN into 0 or 6; inf in the residual stays."""
    require_kernel("sparse_conv2d", "cpu")
    conv, _ = pruned_conv_bn(3, 4, 3, 1, 1)
    values, col, row_ptr = csr_from_dense(conv.weight)
    x, residual = torch.randn(1, 3, 5, 6), torch.randn(1, 4, 5, 6)
    residual[0, 0, 0, :3] = torch.tensor([float("nan"), float("inf"), float("-inf")])
    residual[0, 3, 4, 5] = float("nan")
    got = sparse_conv2d(x, values, col, row_ptr, conv.bias, kernel_size=3, padding=1,
                        residual=residual, activation=activation)
    with torch.no_grad():
        want = ACTS[activation](conv(x) + residual)
    assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.isinf(), want.isinf())
    torch.testing.assert_close(got.nan_to_num(), want.nan_to_num(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("args", [(3, 2, 1), (2, 2, 0), (3, 1, 1, 2, False, True),
                                  (3, 2, 1, 1, False, True), ((3, 2), (1, 3), (1, 0))])
def test_fast_max_pool_equals_max_pool(args):
    """Our NCHW kernel (dilation 1, floor mode) and the channels-last path (dilation 2, ceil
    mode) give torch's values exactly."""
    from compressor.nn.fused import FastMaxPool2d

    plain = nn.MaxPool2d(*args)
    fast = FastMaxPool2d.from_pool(plain)
    x = noncontiguous((2, 5, 13, 11))
    out = fast(x)
    assert out.is_contiguous() and torch.equal(out, plain(x))
