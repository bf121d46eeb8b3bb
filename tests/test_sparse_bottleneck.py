"""The fused sparse bottleneck (compressor::sparse_bottleneck, SparseBottleneck) against the
three convs it replaces: every option, odd and size-1 sizes, both ways of splitting the work
between threads, non-finite values, bad input, opcheck, fuzzing, the module and the converter's
decision."""

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from compressor.errors import CompressorError
from compressor.export.prepare import exported_copy
from compressor.formats.csr import csr_from_dense
from compressor.graph import replace_module
from compressor.models import build_model
from compressor.nn.fused import ResidualBlock
from compressor.nn.sparse import SparseConv2d
from compressor.nn.sparse_block import SparseBottleneck, bottleneck_mismatch
from compressor.ops import reference, sparse_bottleneck
from compressor.sparse import convert, converter
from compressor.sparse.perf_model import PerfModel
from tests.conftest import require_kernel, torch_threads
from tests.test_traced import fake_timing  # (first, second) seconds, whatever is timed

OP = "sparse_bottleneck"


def weights(cout, cin, k, sparsity, bias=True, scale=1.0):
    w = torch.randn(cout, cin, k, k) / (cin * k * k) ** 0.5 * scale
    w = w * (torch.rand_like(w) >= sparsity)
    return (*csr_from_dense(w.flatten(1)), torch.randn(cout) * 0.1 if bias else None), w


def dense_chain(x, dense, biases, k, residual, acts, stride=1):
    """The three convs as F.conv2d: what the op must equal."""
    for i, (w, b, kk) in enumerate(zip(dense, biases, (1, k, 1), strict=True)):
        x = F.conv2d(x, w, b, stride if i == 1 else 1, kk // 2)
        x = reference.activate(x + residual if i == 2 and residual is not None else x, acts[i])
    return x


def case_inputs(cin, cm, cm2, cout, k, hw, n, sparsity, bias=True, with_residual=True,
                stride=1):
    torch.manual_seed(cin * 131 + cm * 17 + hw[0] + n)
    packed, dense = zip(*(weights(o, i, kk, sparsity, bias) for o, i, kk in
                          ((cm, cin, 1), (cm2, cm, k), (cout, cm2, 1))), strict=True)
    x = torch.randn(n, cin, *hw)
    out_hw = [(d - 1) // stride + 1 for d in hw]
    residual = torch.randn(n, cout, *out_hw) if with_residual else None
    return x, packed, dense, residual


# (cin, cm, cm2, cout, k, stride, (h, w), batch)
CASES = [
    (8, 4, 4, 8, 3, 1, (9, 7), 1),
    (5, 3, 6, 7, 1, 1, (1, 1), 1),             # size-1 plane, 1x1 middle conv
    (6, 5, 5, 6, 3, 1, (1, 9), 2),             # one row: every band at both image edges
    (16, 8, 8, 16, 5, 1, (13, 11), 2),         # 5x5 middle conv, halo of 2 rows
    (700, 24, 24, 33, 3, 1, (16, 16), 1),      # three input-channel blocks in conv0
    (6, 5, 5, 6, 3, 1, (40, 3), 1),            # tall: each thread its own slab of rows
    (6, 5, 5, 6, 3, 1, (20, 3), 1),            # short: the threads share each conv
    (8, 4, 4, 8, 3, 1, (6, 6), 16),            # a batch: whole images per thread
    (3, 40, 70, 2, 3, 1, (60, 19), 1),         # more channels inside than out; 2-3 bands
    # A strided middle conv (ResNet's downsampling blocks): the first conv's output goes to
    # the scratch split into stride phases; odd and even sizes, slabs, shared and batches.
    (8, 4, 4, 8, 3, 2, (9, 7), 1),
    (6, 5, 5, 6, 3, 2, (40, 13), 1),
    (6, 5, 5, 6, 3, 2, (12, 12), 1),
    (16, 8, 8, 16, 5, 3, (14, 11), 2),
    (6, 4, 4, 6, 1, 2, (7, 8), 3),             # a strided 1x1 middle conv
    (8, 4, 4, 8, 3, 2, (1, 1), 4),
    # Middle convs on rows a whole number of vectors wide once padded (56 and 14 wide, and 28
    # strided): their nonzeros split by offset alignment.
    (8, 16, 16, 8, 3, 1, (6, 56), 1),
    (8, 16, 16, 8, 3, 1, (14, 14), 2),
    (8, 16, 16, 8, 3, 2, (8, 28), 1),
]
ACTS = [("relu", "relu", "relu"), ("none", "relu6", "silu"), ("silu", "none", "none")]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("sparsity", [0.0, 0.7, 1.0])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_matches_the_three_convs(case, sparsity, threads):
    require_kernel(OP, "cpu")
    *shape, k, stride, hw, n = case
    with torch_threads(threads):
        for acts in ACTS:
            x, packed, dense, residual = case_inputs(*shape, k, hw, n, sparsity, stride=stride)
            got = call(x, packed, k, residual, acts, stride)
            want = dense_chain(x, dense, [p[3] for p in packed], k, residual, acts, stride)
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
            twin = reference.sparse_bottleneck(x, *packed, k, residual, acts, stride)
            torch.testing.assert_close(got, twin, atol=1e-4, rtol=1e-4)


def test_slabs_bounded_by_the_scratch_and_huge_scratch():
    """A plane whose slab scratch would pass its bound is cut into more slabs (here 3 at one
    thread); a scratch past what a thread keeps lives for the call only."""
    require_kernel(OP, "cpu")
    with torch_threads(1):
        for shape, hw, sparsity in (((3, 256, 8, 5), (130, 62), 0.9),
                                    ((1, 2000, 2, 3), (3, 700), 0.5)):
            x, packed, dense, residual = case_inputs(*shape, 3, hw, 1, sparsity)
            got = call(x, packed, 3, residual)
            want = dense_chain(x, dense, [p[3] for p in packed], 3, residual, ("relu",) * 3)
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_empty_batch_and_planes():
    require_kernel(OP, "cpu")
    x, packed, _, _ = case_inputs(6, 4, 5, 6, 3, (7, 6), 1, 0.5)
    assert call(x[:0], packed, stride=2).shape == (0, 6, 4, 3)
    with pytest.raises(RuntimeError, match="input height and width must be >= 1, got 0x6"):
        call(x[:, :, :0].contiguous(), packed)
    empty_in = (*csr_from_dense(torch.zeros(4, 0)), None)  # conv0 reading no channel at all
    got = call(torch.randn(1, 0, 5, 5), (empty_in, packed[1], packed[2]))
    want = reference.sparse_bottleneck(torch.randn(1, 0, 5, 5), empty_in, packed[1], packed[2], 3,
                                       None, ("relu",) * 3)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("with_residual", [True, False])
@pytest.mark.parametrize("stride", [1, 2])
def test_options_and_noncontiguous_input(bias, with_residual, stride):
    require_kernel(OP, "cpu")
    x, packed, dense, residual = case_inputs(6, 4, 5, 7, 3, (11, 10), 2, 0.6, bias,
                                             with_residual, stride)
    wide = torch.randn(2, 12, 11, 10)[:, ::2]  # non-contiguous, through the wrapper
    assert not wide.is_contiguous()
    for inp in (x, wide, x.contiguous(memory_format=torch.channels_last)):
        got = sparse_bottleneck(inp, *packed, 3, residual, ("relu", "relu6", "relu"), stride)
        want = dense_chain(inp, dense, [p[3] for p in packed], 3, residual,
                           ("relu", "relu6", "relu"), stride)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_nonfinite_values_give_the_three_ops_result():
    """An inf or NaN in the input, or made by an overflowing first conv, gives exactly what the
    three sparse_conv2d calls give (they send such inputs to the dense convolution)."""
    require_kernel(OP, "cpu")

    def three_ops(x, packed, residual, acts, stride=1):
        out = x
        for i, (p, kk) in enumerate(zip(packed, (1, 3, 1), strict=True)):
            s = stride if i == 1 else 1
            out = torch.ops.compressor.sparse_conv2d(out, *p, (kk, kk), (s, s), (kk // 2,) * 2,
                                                     (1, 1), 1, residual if i == 2 else None,
                                                     acts[i])
        return out

    acts = ("relu", "none", "relu")
    for poison, stride in ((float("inf"), 1), (float("nan"), 1), (float("nan"), 2)):
        x, packed, _, residual = case_inputs(6, 4, 5, 6, 3, (9, 8), 2, 0.7, stride=stride)
        x[1, 2, 4, 5] = poison
        got = call(x, packed, 3, residual, acts, stride)
        torch.testing.assert_close(got, three_ops(x, packed, residual, acts, stride), atol=0,
                                   rtol=0, equal_nan=True)
        assert got.isnan().any()
    x, packed, _, residual = case_inputs(6, 4, 5, 6, 3, (9, 8), 1, 0.7)
    x = x * 1e4
    huge = (packed[0][0] * 1e38, *packed[0][1:])  # conv0 overflows to +-inf from a finite input
    got = call(x, (huge, packed[1], packed[2]), 3, residual, acts)
    want = three_ops(x, (huge, packed[1], packed[2]), residual, acts)
    torch.testing.assert_close(got, want, atol=0, rtol=0, equal_nan=True)
    assert not got.isfinite().all()
    x, packed, _, residual = case_inputs(6, 4, 5, 6, 3, (9, 8), 1, 0.7)
    huge = (packed[1][0] * 1e38, *packed[1][1:])  # the middle conv overflows
    got = call(x * 1e4, (packed[0], huge, packed[2]), 3, residual, acts)
    want = three_ops(x * 1e4, (packed[0], huge, packed[2]), residual, acts)
    torch.testing.assert_close(got, want, atol=0, rtol=0, equal_nan=True)
    assert not got.isfinite().all()
    # an inf in input rows no output reads (stride 3 over 3 rows with a 1x1 middle conv)
    for k, stride, hw in ((3, 3, (3, 5)), (1, 2, (4, 4))):
        x, packed, _, residual = case_inputs(6, 4, 5, 6, k, hw, 1, 0.7, stride=stride)
        x[0, 1, hw[0] - 1, 2] = float("inf")
        got = call(x, packed, k, residual, acts, stride)
        want = torch.ops.compressor.sparse_conv2d(torch.ops.compressor.sparse_conv2d(
            torch.ops.compressor.sparse_conv2d(x, *packed[0], (1, 1), (1, 1), (0, 0), (1, 1), 1,
                                               None, acts[0]),
            *packed[1], (k, k), (stride,) * 2, (k // 2,) * 2, (1, 1), 1, None, acts[1]),
            *packed[2], (1, 1), (1, 1), (0, 0), (1, 1), 1, residual, acts[2])
        assert torch.equal(got, want)


def test_opcheck():
    require_kernel(OP, "cpu")
    x, packed, _, residual = case_inputs(6, 4, 5, 6, 3, (7, 6), 2, 0.5)
    no_bias = [(*p[:3], None) for p in packed]
    strided = residual[:, :, ::2, ::2].contiguous()
    for ws, res, acts, stride in ((packed, residual, ("relu", "relu", "relu"), 1),
                                  (no_bias, None, ("none", "silu", "relu6"), 1),
                                  (packed, strided, ("relu", "relu", "relu"), 2)):
        torch.library.opcheck(torch.ops.compressor.sparse_bottleneck.default,
                              (x, *ws[0], *ws[1], *ws[2], 3, stride, res, *acts))


def call(x, packed, k=3, residual=None, acts=("relu", "relu", "relu"), stride=1):
    return torch.ops.compressor.sparse_bottleneck(x, *packed[0], *packed[1], *packed[2], k,
                                                  stride, residual, *acts)


def test_kernel_rejects_bad_input():
    require_kernel(OP, "cpu")
    x, packed, _, residual = case_inputs(6, 4, 5, 6, 3, (7, 6), 1, 0.5)
    bad_col = (packed[1][0], packed[1][1] + 1000, *packed[1][2:])
    with pytest.raises(RuntimeError, match=r"sparse_bottleneck conv1: col_idx\[\d+\].*must lie"):
        call(x, (packed[0], bad_col, packed[2]))
    with pytest.raises(RuntimeError, match=r"sparse_bottleneck conv0: col_idx.*in \[0, 3\)"):
        call(x[:, :3].contiguous(), packed)  # fewer input channels than conv0's columns
    with pytest.raises(RuntimeError, match="kernel_size must be odd"):
        call(x, packed, k=2)
    with pytest.raises(RuntimeError, match=r"stride must be in \[1, 2\^20\]"):
        call(x, packed, stride=0)
    with pytest.raises(RuntimeError, match=r"residual must have the output's shape \(1, 6, 4, 3\)"):
        call(x, packed, residual=residual, stride=2)
    with pytest.raises(RuntimeError, match="activation1 must be one of"):
        call(x, packed, acts=("relu", "gelu", "relu"))
    with pytest.raises(RuntimeError, match="residual must have the output's shape"):
        call(x, packed, residual=residual[:, :3].contiguous())
    with pytest.raises(RuntimeError, match="input must be Float"):
        call(x.double(), packed)
    with pytest.raises(RuntimeError, match="sparse_bottleneck conv2: bias must have shape"):
        call(x, (packed[0], packed[1], (*packed[2][:3], packed[2][3][:-1])))
    with pytest.raises(RuntimeError, match="sparse_bottleneck conv0: row_ptr\\[-1\\] must equal"):
        call(x, ((packed[0][0][:-1].contiguous(), packed[0][1][:-1].contiguous(),
                  *packed[0][2:]), packed[1], packed[2]))


def test_wrapper_and_twin_errors():
    x, packed, _, _ = case_inputs(6, 4, 5, 6, 3, (7, 6), 1, 0.5)
    with pytest.raises(ValueError, match="conv1 must be \\(values, col_idx, row_ptr, bias\\)"):
        sparse_bottleneck(x, packed[0], packed[1][:3], packed[2], 3)
    with pytest.raises(ValueError, match="activations must be three of"):
        sparse_bottleneck(x, *packed, 3, None, ("relu", "relu"))
    with pytest.raises(ValueError, match="sparse_bottleneck: residual must have the output's"):
        sparse_bottleneck(x, *packed, 3, x[:, :3])
    for bad_k in (2, 0, 3.0, True):
        with pytest.raises(CompressorError, match="kernel_size must be an odd int"):
            sparse_bottleneck(x, *packed, bad_k)
        with pytest.raises(CompressorError, match="kernel_size must be an odd int"):
            reference.sparse_bottleneck(x, *packed, bad_k)
    with pytest.raises(CompressorError, match=r"stride must be an int in \[1, 2\^20\]"):
        sparse_bottleneck(x, *packed, 3, stride=0)
    with pytest.raises(CompressorError, match="with H, W >= 1"):
        reference.sparse_bottleneck(x[:, :, :0], *packed, 3)
    with pytest.raises(ValueError, match="must be a 4-dim"):
        sparse_bottleneck(x[0], *packed, 3)


@settings(max_examples=30, deadline=None)
@given(cin=st.integers(1, 7), cm=st.integers(1, 7), cm2=st.integers(1, 7),
       cout=st.integers(1, 7), k=st.sampled_from([1, 3, 5]), h=st.integers(1, 13),
       w=st.integers(1, 13), n=st.integers(1, 3), sparsity=st.floats(0, 1),
       threads=st.integers(1, 2), acts=st.sampled_from(ACTS), stride=st.integers(1, 3))
def test_fuzz_against_the_three_convs(cin, cm, cm2, cout, k, h, w, n, sparsity, threads, acts,
                                      stride):
    require_kernel(OP, "cpu")
    x, packed, dense, residual = case_inputs(cin, cm, cm2, cout, k, (h, w), n, sparsity,
                                             stride=stride)
    with torch_threads(threads):
        got = call(x, packed, k, residual, acts, stride)
    want = dense_chain(x, dense, [p[3] for p in packed], k, residual, acts, stride)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


# ---- the module and the converter ----------------------------------------------------------------


def bottleneck_resnet() -> nn.Module:
    """ResNet-50's layout, narrow: every bottleneck can fuse (the first of each stage with its
    1x1 shortcut, layer2-4's with a strided 3x3)."""
    torch.manual_seed(0)
    model = build_model("resnet50", num_classes=10, feature_shape=(3, 32, 32), width=8).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(torch.rand_like(m.weight) >= 0.8)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def converted_resnet(tmp_path_factory):
    require_kernel("sparse_conv2d", "cpu")
    model, x = bottleneck_resnet(), torch.randn(2, 3, 32, 32)
    perf = PerfModel(tmp_path_factory.mktemp("perf") / "perf.json")
    converted, _ = convert(model, (x,), min_speedup=0.0, perf_model=perf)
    return model, converted, x


def unfused_copy(converted: nn.Module) -> nn.Module:
    """A copy with every block the converter fused back as the ResidualBlock it was."""
    work = copy.deepcopy(converted)
    for m in work.modules():
        if type(m) is SparseBottleneck:
            m.__class__ = ResidualBlock
    return work


def plain_blocks(model: nn.Module) -> dict:
    return {n: m for n, m in model.named_modules()
            if type(m) is ResidualBlock and bottleneck_mismatch(m) is None}


def test_module_equals_the_block_and_exports_as_one(converted_resnet):
    require_kernel(OP, "cpu")
    model, converted, x = converted_resnet
    work = unfused_copy(converted)  # whatever the converter chose
    blocks = plain_blocks(work)
    assert len(blocks) == 16
    for path, block in blocks.items():
        fused = SparseBottleneck.from_block(block)
        assert fused.state_dict().keys() == block.state_dict().keys()
        inp = torch.randn(1, block.main[0].in_channels, 5, 3)
        with torch.no_grad():
            torch.testing.assert_close(fused(inp), block(inp), atol=1e-4, rtol=1e-4)
        replace_module(work, path, fused)
    with torch.no_grad():
        torch.testing.assert_close(work(x), model(x), atol=1e-4, rtol=1e-4)
    plain, notes, _ = exported_copy(work)
    assert not any(isinstance(m, SparseBottleneck) for m in plain.modules())
    assert sum("SparseBottleneck -> ResidualBlock" in line for line in notes["converted"]) == 16


class OpsCalled(TorchDispatchMode):
    """The ops a call runs (custom ops reach a dispatch mode too)."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def test_module_runs_one_fused_op(converted_resnet):
    require_kernel(OP, "cpu")
    _, converted, _ = converted_resnet
    block = next(b for b in plain_blocks(unfused_copy(converted)).values() if b.shortcut is None)
    fused = SparseBottleneck.from_block(block)
    inp = torch.randn(1, block.main[0].in_channels, 6, 6)
    with torch.no_grad(), OpsCalled() as seen:
        fused(inp)
    ours = [name for name in seen.names if name.startswith("compressor.")]
    assert ours == ["compressor.sparse_bottleneck"]  # not the three convs
    with torch.no_grad(), OpsCalled() as seen:
        block(inp)
    assert "compressor.sparse_bottleneck" not in seen.names


def test_module_falls_back_where_the_kernel_does_not_apply(converted_resnet):
    _, converted, _ = converted_resnet
    block = next(iter(plain_blocks(unfused_copy(converted)).values()))
    fused = SparseBottleneck.from_block(block)
    inp = torch.randn(1, block.main[0].in_channels, 4, 4)
    with torch.no_grad():
        want = block(inp)
        torch.testing.assert_close(fused(inp.double()).float(), want, atol=1e-4, rtol=1e-4)
        fused.main[1] = block.main[1].to_dense()  # a child swapped for a dense one
        assert "not three SparseConv2d" in bottleneck_mismatch(fused)
        torch.testing.assert_close(fused(inp), want, atol=1e-4, rtol=1e-4)


def test_mismatches_are_named():
    conv = lambda cin, cout, k, s=1, res=False: SparseConv2d.from_dense(  # noqa: E731
        nn.Conv2d(cin, cout, k, s, k // 2), activation="relu", residual=res)
    good = ResidualBlock([conv(4, 2, 1), conv(2, 3, 3), conv(3, 4, 1, res=True)])
    assert bottleneck_mismatch(good) is None
    strided = ResidualBlock([conv(4, 2, 1), conv(2, 3, 3, 2), conv(3, 4, 1, res=True)])
    assert bottleneck_mismatch(strided) is None
    cases = {
        "not a ResidualBlock": nn.Sequential(),
        "not three SparseConv2d": ResidualBlock([conv(4, 2, 1), conv(2, 4, 3, res=True)]),
        "a 1x1 conv is strided": ResidualBlock([conv(4, 2, 1, 2), conv(2, 3, 3),
                                                conv(3, 4, 1, res=True)]),
        "not 1x1": ResidualBlock([conv(4, 2, 3), conv(2, 3, 3), conv(3, 4, 1, res=True)]),
        "not a square odd": ResidualBlock([conv(4, 2, 1), conv(2, 3, 2), conv(3, 4, 1, res=True)]),
        "do not chain": ResidualBlock([conv(4, 2, 1), conv(5, 3, 3), conv(3, 4, 1, res=True)]),
    }
    for why, block in cases.items():
        assert why in bottleneck_mismatch(block)
        with pytest.raises(CompressorError, match="SparseBottleneck.from_block: .*" + why):
            SparseBottleneck.from_block(block)


@pytest.mark.parametrize("fused_faster", [True, False])
def test_converter_keeps_fused_blocks_only_where_faster(monkeypatch, converted_resnet,
                                                        fused_faster):
    """The decision follows the measurement (faked here: speed belongs to benchmarks)."""
    require_kernel(OP, "cpu")
    model, converted, x = converted_resnet
    work = unfused_copy(converted)
    paths = list(plain_blocks(work))
    monkeypatch.setattr(converter, "paired_medians", fake_timing(1.0, 0.5 if fused_faster
                                                                 else 2.0))
    found = converter._fuse_blocks(work, (x,))
    kinds = {type(work.get_submodule(p)) for p in paths}
    with torch.no_grad():
        torch.testing.assert_close(work(x), model(x), atol=1e-4, rtol=1e-4)
    if not fused_faster:
        assert found == {} and kinds == {ResidualBlock}
        return
    assert found["blocks"] == paths and kinds == {SparseBottleneck}
    decisions = converter.Decisions()
    decisions.blocks = found
    assert "one fused sparse op each (compressor.nn.sparse_block): " + ", ".join(paths) in \
        converter.report(decisions)


def test_whole_model_lines_name_the_fused_blocks():
    lines = converter.whole_model_lines({"dense_ms": 2.0, "converted_ms": 1.0,
                                         "blocks": {"blocks": ["layer1.0", "layer1.1"],
                                                    "unfused_ms": 1.0, "fused_ms": 0.9}})
    assert any("fused blocks, batch chunks" in line for line in lines)
    assert not any(line.startswith("No fused blocks") for line in lines)
    assert any("one fused sparse op each (compressor.nn.sparse_block): layer1.0, layer1.1: "
               "1.000 -> 0.900 ms" in line for line in lines)
    none = converter.whole_model_lines({"dense_ms": 2.0, "converted_ms": 1.0, "blocks": {}})
    assert len(none) == 2 and none[1].startswith("No fused blocks, batch chunks or traced graphs")
