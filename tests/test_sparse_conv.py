"""Direct sparse conv2d against F.conv2d: every option, odd sizes, bad input, opcheck, fuzzing."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from compressor.errors import CompressorError
from compressor.formats.csr import csr_from_dense
from compressor.nn import SparseConv2d
from compressor.ops import reference, sparse_conv2d
from tests.conftest import require_kernel, torch_threads

# (cin, cout, kernel, stride, padding, dilation, groups, hw, batch)
CASES = [
    (3, 5, 3, 1, 1, 1, 1, (7, 9), 1),
    (8, 16, 1, 1, 0, 1, 1, (13, 11), 2),
    (6, 9, 5, 1, 2, 1, 3, (10, 12), 3),
    (4, 8, 7, 2, 3, 1, 1, (17, 15), 2),
    (4, 8, 3, 1, 2, 2, 2, (9, 9), 1),
    (5, 7, 3, (2, 3), (1, 0), (2, 1), 1, (20, 19), 2),
    (1, 1, 1, 1, 0, 1, 1, (1, 1), 1),
    (16, 24, 3, 1, 1, 1, 1, (5, 67), 1),
    # Many input channels: several input-channel blocks whose partial sums are parked between
    # blocks, with spans that end mid-vector (AVX2 and AVX-512 tails) and split into >1 tile.
    (160, 40, 3, 1, 1, 1, 1, (14, 14), 1),
    (300, 9, 1, 1, 0, 1, 1, (13, 15), 2),
    (70, 33, 3, 1, 1, 1, 1, (29, 31), 1),
    # Strided 1x1 convs read every sh-th row and sw-th column, picked out as the input is copied.
    (12, 10, 1, 2, 0, 1, 1, (15, 14), 2),
    (6, 4, 1, (3, 2), 0, 1, 2, (10, 9), 3),
    # Rows a whole number of vectors wide, as they come or widened by the padded copy: each
    # row's nonzeros are split by their offsets' alignment (ResNet-50's 3x3s at 56, 28 strided
    # and 14 wide). A 1x1 at 14x14 has residues that qualify but rows too short to split.
    (24, 20, 3, 1, 1, 1, 1, (5, 56), 2),
    (40, 12, 3, 2, 1, 1, 1, (9, 28), 1),
    (16, 8, 3, 1, 1, 1, 1, (14, 14), 3),
    (64, 24, 1, 1, 0, 1, 1, (14, 14), 1),
    # Depthwise (one input channel per group): the direct path reading the input in place. A
    # channel multiplier, dilation, a runtime column step (3), padding past half the kernel (rows
    # that no tap reaches) and a 1x1 plane whose taps fall mostly outside it.
    (8, 8, 3, 1, 1, 1, 8, (13, 11), 2),
    (6, 6, 3, 2, 1, 1, 6, (15, 14), 3),
    (4, 8, 3, 1, 2, 2, 4, (9, 10), 1),
    (5, 10, 5, (2, 3), (2, 1), 1, 5, (11, 16), 2),
    (7, 7, 3, 3, 3, 1, 7, (5, 8), 2),
    (3, 3, 3, 1, 1, 1, 3, (1, 1), 1),
    (6, 12, (3, 5), (1, 2), (1, 2), (2, 1), 6, (11, 13), 2),
]


def pruned_conv(cin, cout, k, s, p, d, g, sparsity, device):
    conv = torch.nn.Conv2d(cin, cout, k, s, p, d, g).to(device)
    with torch.no_grad():
        conv.weight.mul_(torch.rand_like(conv.weight) >= sparsity)
    return conv


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("sparsity", [0.0, 0.7, 1.0])
def test_matches_conv2d(device, case, sparsity):
    require_kernel("sparse_conv2d", device)
    *geom, hw, batch = case
    conv = pruned_conv(*geom, sparsity, device)
    x = torch.randn(batch, geom[0], *hw, device=device)
    with torch.no_grad():
        got, want = SparseConv2d.from_dense(conv).to(device)(x), conv(x)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    print(case, sparsity, f"max err {(got - want).abs().max().item():.2e}")


@pytest.mark.parametrize("stride", [1, 2])
def test_rows_sharing_columns(device, stride):
    """Rows with one common column pattern (an unpruned stem, or a pattern pruned alike in every
    row) run several rows per pass; a count not a multiple of the rows taken together, several
    input-channel blocks, a residual and an activation all go through that path."""
    require_kernel("sparse_conv2d", device)
    conv = pruned_conv(90, 7, 3, stride, 1, 1, 1, 0.0, device)
    with torch.no_grad():
        conv.weight.mul_(torch.rand_like(conv.weight[:1]) >= 0.6)  # same mask in every row
    sc = SparseConv2d.from_dense(conv, activation="relu6", residual=True).to(device)
    x = torch.randn(3, 90, 19, 23, device=device)
    with torch.no_grad():
        out = conv(x)
        res = torch.randn_like(out)
        torch.testing.assert_close(sc(x, res), F.relu6(out + res), atol=1e-4, rtol=1e-4)


def test_zero_output_channels_and_noncontiguous(device):
    require_kernel("sparse_conv2d", device)
    conv = pruned_conv(6, 10, 3, 1, 1, 1, 1, 0.5, device)
    with torch.no_grad():
        conv.weight[[0, 3, 9]] = 0
    x = torch.randn(11, 6, 2, 6, device=device).permute(2, 3, 1, 0)  # (2, 6, 6, 11)
    assert not x.is_contiguous()
    with torch.no_grad():
        torch.testing.assert_close(SparseConv2d.from_dense(conv)(x), conv(x), atol=1e-4,
                                   rtol=1e-4)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("stride", [1, 2])
def test_alignment_classes_with_epilogue(device, threads, stride):
    """Rows split by their offsets' alignment keep every value with its offset: rows of very
    different lengths (empty, one nonzero, dense), a residual, an activation, a batch, a
    non-contiguous input and either thread count give the dense conv's result."""
    require_kernel("sparse_conv2d", device)
    conv = pruned_conv(48, 40, 3, stride, 1, 1, 1, 0.6, device)
    with torch.no_grad():
        conv.weight[0] = 0
        conv.weight[1] = 0
        conv.weight[1, 5, 2, 1] = 1.5
        conv.weight[2] = torch.randn_like(conv.weight[2])
    sc = SparseConv2d.from_dense(conv, activation="silu", residual=True).to(device)
    x = torch.randn(56, 48, 3, 6, device=device).permute(2, 1, 3, 0)  # (3, 48, 6, 56)
    assert not x.is_contiguous()
    with torch_threads(threads), torch.no_grad():
        out = conv(x)
        res = torch.randn_like(out)
        torch.testing.assert_close(sc(x, res), F.silu(out + res), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("stride", [1, 2, (2, 3)])
@pytest.mark.parametrize("hw", [(7, 7), (14, 14), (1, 15), (13, 11)])
def test_one_by_one_on_planes_not_whole_vectors(device, threads, groups, stride, hw):
    """A 1x1 conv whose output plane is not a whole number of vectors, with enough nonzeros per
    input channel (at least 64: here about 224, or 112 with 2 groups), runs as one row per plane
    copied into whole vectors (a strided one's rows and columns picked into it): with a
    residual, an activation, a batch, groups and a non-contiguous input it gives the dense
    conv's result."""
    require_kernel("sparse_conv2d", device)
    conv = pruned_conv(24, 320, 1, stride, 0, 1, groups, 0.3, device)
    assert (conv.weight != 0).sum() >= 64 * 24
    sc = SparseConv2d.from_dense(conv, activation="relu6", residual=True).to(device)
    x = torch.randn(hw[1], 24, hw[0], 5, device=device).permute(3, 1, 2, 0)  # (5, 24, h, w)
    assert not x.is_contiguous()
    with torch_threads(threads), torch.no_grad():
        out = conv(x)
        res = torch.randn_like(out)
        torch.testing.assert_close(sc(x, res), F.relu6(out + res), atol=1e-4, rtol=1e-4)


def test_new_input_size_repacks(device):
    require_kernel("sparse_conv2d", device)
    conv = pruned_conv(4, 6, 3, 1, 1, 1, 1, 0.5, device)
    sc = SparseConv2d.from_dense(conv)
    with torch.no_grad():
        for hw in [(8, 8), (5, 13), (8, 8)]:
            x = torch.randn(1, 4, *hw, device=device)
            torch.testing.assert_close(sc(x), conv(x), atol=1e-4, rtol=1e-4)


def test_twin_and_to_dense_and_state_dict():
    conv = pruned_conv(4, 6, 3, 2, 1, 1, 2, 0.6, "cpu")
    sc = SparseConv2d.from_dense(conv)
    x = torch.randn(2, 4, 9, 9)
    with torch.no_grad():
        want = conv(x)
        torch.testing.assert_close(reference.sparse_conv2d(x, sc.values, sc.col_idx, sc.row_ptr,
                                                           sc.bias, (3, 3), (2, 2), (1, 1),
                                                           (1, 1), 2), want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sc.to_dense()(x), want)
    other = SparseConv2d.from_dense(pruned_conv(4, 6, 3, 2, 1, 1, 2, 0.1, "cpu"))
    other.load_state_dict(sc.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(other(x), want, atol=1e-5, rtol=1e-5)
    dense = sc.to_dense()
    assert (dense.stride, dense.padding, dense.groups) == (sc.stride, sc.padding, sc.groups)


@pytest.mark.parametrize("groups", [1, 3], ids=["groups1", "depthwise"])
def test_in_place_edit_of_col_idx_is_seen(device, groups):
    """What the kernel derives from col_idx is kept per tensor and version (the CPU depthwise
    path keeps nothing): moving a nonzero to another tap in place moves the result at the next
    call."""
    require_kernel("sparse_conv2d", device)
    conv = pruned_conv(3, 4 if groups == 1 else 3, 3, 1, 1, 1, groups, 0.0, device)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 0] = 1.0
    sc = SparseConv2d.from_dense(conv)
    x = torch.randn(1, 3, 6, 6, device=device)
    with torch.no_grad():
        sc(x)
        sc.col_idx[0] = 4  # tap (1, 1) of channel 0: the identity
        conv.weight[0, 0, 0, 0], conv.weight[0, 0, 1, 1] = 0.0, 1.0
        torch.testing.assert_close(sc(x), conv(x))


def test_load_state_dict_after_a_call_is_seen():
    """load_state_dict copies into the packed tensors in place: the offsets kept from the first
    call must not outlive it. Both weights keep 40 nonzeros, at different places, so the packed
    shapes agree."""
    require_kernel("sparse_conv2d", "cpu")
    convs = [pruned_conv(5, 7, 3, 1, 1, 1, 1, 0.0, "cpu") for _ in range(2)]
    with torch.no_grad():
        for seed, conv in enumerate(convs):
            order = torch.Generator().manual_seed(seed)
            keep = torch.randperm(conv.weight.numel(), generator=order)
            conv.weight.view(-1)[keep[40:]] = 0
    sc, other = (SparseConv2d.from_dense(conv) for conv in convs)
    x = torch.randn(2, 5, 8, 9)
    with torch.no_grad():
        torch.testing.assert_close(sc(x), convs[0](x), atol=1e-4, rtol=1e-4)
        sc.load_state_dict(other.state_dict())
        torch.testing.assert_close(sc(x), convs[1](x), atol=1e-4, rtol=1e-4)


def test_edits_behind_the_version_counter_stay_in_bounds():
    """Content written past torch's version counter (.data) is not seen until the tensor is next
    edited by a torch op, and the kernel never reads out of bounds meanwhile; the next tracked
    edit has the columns checked again."""
    require_kernel("sparse_conv2d", "cpu")
    conv = pruned_conv(3, 4, 3, 1, 1, 1, 1, 0.5, "cpu")
    sc = SparseConv2d.from_dense(conv)
    x = torch.randn(1, 3, 6, 6)
    with torch.no_grad():
        before = sc(x)
        sc.col_idx.data.fill_(10**6)  # far outside the 27 columns
        torch.testing.assert_close(sc(x), before)
        sc.col_idx.add_(0)  # a tracked (no-op) edit
        with pytest.raises(RuntimeError, match="col_idx.*must lie in"):
            sc(x)


def test_depthwise_checks_its_columns_every_call():
    """The depthwise path keeps nothing between calls, so even an edit past torch's version
    counter is checked at the next call (the cached path sees it at the next tracked edit)."""
    require_kernel("sparse_conv2d", "cpu")
    sc = SparseConv2d.from_dense(pruned_conv(4, 8, 3, 1, 1, 1, 4, 0.5, "cpu"))
    x = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        sc(x)
        sc.col_idx.data.fill_(9)  # one past the 9 taps of a depthwise row
        with pytest.raises(RuntimeError, match="col_idx.*must lie in"):
            sc(x)


def test_weights_made_in_inference_mode():
    """Inference tensors have no version counter: nothing is kept for them, and each call
    derives the offsets afresh."""
    require_kernel("sparse_conv2d", "cpu")
    conv = pruned_conv(4, 5, 3, 2, 1, 1, 1, 0.6, "cpu")
    with torch.inference_mode():
        sc = SparseConv2d.from_dense(conv)
        x = torch.randn(2, 4, 7, 8)
        assert sc.col_idx.is_inference()
        for _ in range(2):
            torch.testing.assert_close(sc(x), conv(x), atol=1e-4, rtol=1e-4)


def op_args(cin=4, cout=6, hw=(6, 7), device="cpu"):
    conv = pruned_conv(cin, cout, 3, 1, 1, 1, 1, 0.5, device)
    values, col, row_ptr = csr_from_dense(conv.weight)
    x = torch.randn(2, cin, *hw, device=device)
    return x, values, col, row_ptr, conv.bias.detach()


def test_opcheck(device):
    require_kernel("sparse_conv2d", device)
    x, values, col, row_ptr, bias = op_args(device=device)
    residual = torch.randn(2, 6, 6, 7, device=device)
    for b, res, act in ((bias, None, "none"), (None, None, "relu6"), (bias, residual, "relu"),
                        (bias, residual, "silu")):
        torch.library.opcheck(torch.ops.compressor.sparse_conv2d.default,
                              (x, values, col, row_ptr, b, (3, 3), (1, 1), (1, 1), (1, 1), 1,
                               res, act))
    # the depthwise path
    values, col, row_ptr = csr_from_dense(pruned_conv(4, 4, 3, 2, 1, 1, 4, 0.5, device).weight)
    x = torch.randn(2, 4, 9, 8, device=device)
    for res, act in ((None, "relu6"), (torch.randn(2, 4, 5, 4, device=device), "none")):
        torch.library.opcheck(torch.ops.compressor.sparse_conv2d.default,
                              (x, values, col, row_ptr, None, (3, 3), (2, 2), (1, 1), (1, 1), 4,
                               res, act))


def call(x, values, col, row_ptr, bias, **kw):
    args = dict(kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1,
                residual=None, activation="none")
    args.update(kw)
    return torch.ops.compressor.sparse_conv2d(x, values, col, row_ptr, bias, *args.values())


def test_kernel_rejects_bad_input():
    require_kernel("sparse_conv2d", "cpu")
    x, values, col, row_ptr, bias = op_args()
    with pytest.raises(RuntimeError, match=r"sparse_conv2d: col_idx\[\d+\] = \d+ .* must lie"):
        call(x, values, col + 10_000, row_ptr, bias)
    with pytest.raises(RuntimeError, match="must lie in \\[0, 18\\)"):
        call(x[:, :2].contiguous(), values, col, row_ptr, bias)  # fewer input channels
    with pytest.raises(RuntimeError, match="input must be Float"):
        call(x.double(), values, col, row_ptr, bias)
    with pytest.raises(RuntimeError, match="col_idx must be Int"):
        call(x, values, col.long(), row_ptr, bias)
    with pytest.raises(RuntimeError, match="row_ptr\\[-1\\] must equal nnz"):
        call(x, values[:-1].contiguous(), col[:-1].contiguous(), row_ptr, bias)
    with pytest.raises(RuntimeError, match="bias must have shape"):
        call(x, values, col, row_ptr, bias[:-1])
    with pytest.raises(RuntimeError, match="activation must be one of"):
        call(x, values, col, row_ptr, bias, activation="gelu")
    with pytest.raises(RuntimeError, match="residual must have the output's shape"):
        call(x, values, col, row_ptr, bias, residual=torch.randn(2, 6, 6, 6))


def test_no_input_channels_and_absurd_geometry():
    """A conv reading no channel gives its bias (F.conv2d itself returns no channels then, so
    the twin builds it); a geometry past 2^20 is refused, not overflowed."""
    require_kernel("sparse_conv2d", "cpu")
    values, col, row_ptr = csr_from_dense(torch.zeros(3, 0))
    bias = torch.randn(3)
    x = torch.randn(2, 0, 5, 4)
    got = call(x, values, col, row_ptr, bias, kernel_size=(1, 1), padding=(0, 0))
    want = bias.view(1, 3, 1, 1).expand(2, 3, 5, 4)
    torch.testing.assert_close(got, want)
    twin = reference.sparse_conv2d(x, values, col, row_ptr, bias, (1, 1), (1, 1), (0, 0), (1, 1), 1)
    torch.testing.assert_close(twin, want)
    x, values, col, row_ptr, bias = op_args()
    with pytest.raises(RuntimeError, match=r"stride entries must be in \[1, 1048576\]"):
        call(x, values, col, row_ptr, bias, stride=(1 << 32, 1))


def test_wrapper_and_module_errors():
    x, values, col, row_ptr, bias = op_args()
    with pytest.raises(TypeError, match="must be int32"):
        sparse_conv2d(x, values, col.long(), row_ptr, bias, kernel_size=3)
    with pytest.raises(ValueError, match="residual must have the output's shape"):
        sparse_conv2d(x, values, col, row_ptr, bias, kernel_size=3, residual=x)
    sc = SparseConv2d.from_dense(torch.nn.Conv2d(4, 6, 3))
    with pytest.raises(CompressorError, match="expects input \\(N, 4, H, W\\)"):
        sc(torch.randn(1, 3, 8, 8))
    with pytest.raises(CompressorError, match="fused with no residual"):
        sc(torch.randn(1, 4, 8, 8), torch.randn(1, 6, 6, 6))
    with pytest.raises(CompressorError, match="padding_mode"):
        SparseConv2d.from_dense(torch.nn.Conv2d(4, 6, 3, padding_mode="reflect"))


@settings(max_examples=25, deadline=None)
@given(cin=st.integers(1, 6), cout=st.integers(1, 6), k=st.integers(1, 4), s=st.integers(1, 3),
       p=st.integers(0, 2), d=st.integers(1, 2), h=st.integers(1, 12), w=st.integers(1, 12),
       n=st.integers(1, 3), sparsity=st.floats(0, 1))
def test_fuzz_against_conv2d(cin, cout, k, s, p, d, h, w, n, sparsity):
    require_kernel("sparse_conv2d", "cpu")
    if h + 2 * p < d * (k - 1) + 1 or w + 2 * p < d * (k - 1) + 1:
        return
    conv = pruned_conv(cin, cout, k, s, p, d, 1, sparsity, "cpu")
    x = torch.randn(n, cin, h, w)
    with torch.no_grad():
        torch.testing.assert_close(SparseConv2d.from_dense(conv)(x), F.conv2d(
            x, conv.weight, conv.bias, s, p, d), atol=1e-4, rtol=1e-4)


@settings(max_examples=30, deadline=None)
@given(c=st.integers(2, 5), mult=st.integers(1, 3), k=st.integers(1, 4), sh=st.integers(1, 3),
       sw=st.integers(1, 3), p=st.integers(0, 3), d=st.integers(1, 2), h=st.integers(1, 12),
       w=st.integers(1, 12), n=st.integers(1, 3), sparsity=st.floats(0, 1),
       act=st.sampled_from(["none", "relu", "relu6", "silu"]), with_res=st.booleans())
def test_fuzz_depthwise_against_twin(c, mult, k, sh, sw, p, d, h, w, n, sparsity, act, with_res):
    # c >= 2: with one channel groups would be 1, the other path
    require_kernel("sparse_conv2d", "cpu")
    if h + 2 * p < d * (k - 1) + 1 or w + 2 * p < d * (k - 1) + 1:
        return
    conv = pruned_conv(c, c * mult, k, (sh, sw), p, d, c, sparsity, "cpu")
    values, col, row_ptr = csr_from_dense(conv.weight.detach())
    x = torch.randn(n, c, h, w)
    with torch.no_grad():
        dense = F.conv2d(x, conv.weight, conv.bias, (sh, sw), p, d, c)
    res = torch.randn_like(dense) if with_res else None
    args = (x, values, col, row_ptr, conv.bias.detach(), (k, k), (sh, sw), (p, p), (d, d), c,
            res, act)
    got = torch.ops.compressor.sparse_conv2d(*args)
    torch.testing.assert_close(got, reference.sparse_conv2d(*args), atol=1e-4, rtol=1e-4)


def test_depthwise_rejects_bad_columns_and_takes_empty_batches():
    """The depthwise path checks its columns as the other path does, and an empty batch gives an
    empty output."""
    require_kernel("sparse_conv2d", "cpu")
    values, col, row_ptr = csr_from_dense(pruned_conv(4, 4, 3, 1, 1, 1, 4, 0.3, "cpu").weight)
    x = torch.randn(2, 4, 6, 5)
    bad = col.clone()
    bad[-1] = 9
    with pytest.raises(RuntimeError, match=r"col_idx\[\d+\] = 9 .* must lie in \[0, 9\)"):
        call(x, values, bad, row_ptr, None, groups=4)
    assert call(x[:0], values, col, row_ptr, None, groups=4).shape == (0, 4, 6, 5)
