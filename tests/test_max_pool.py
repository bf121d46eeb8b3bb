"""compressor.ops.max_pool2d (NCHW CPU kernel) against torch's max_pool2d and its twin: window
shapes and strides of the shipped models and odd ones, size-1 dims, padding, non-contiguous
input, NaN and inf, opcheck, bad input."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from compressor.ops import max_pool2d, reference
from tests.conftest import require_kernel

# (kernel, stride, padding, (N, C, H, W))
CASES = [
    (2, 2, 0, (1, 64, 224, 224)),    # VGG-16's first pool
    (3, 2, 1, (2, 8, 112, 112)),     # ResNet's stem pool
    (3, 2, 1, (1, 3, 7, 8)),         # odd sizes: the last window is partly padding
    ((3, 2), (1, 3), (1, 0), (2, 5, 13, 11)),
    (1, 1, 0, (1, 1, 1, 1)),
    (2, 1, 1, (3, 2, 1, 5)),         # a height-1 input, padded windows only
    (5, 3, 2, (1, 4, 17, 19)),       # a runtime stride
    (4, 4, 0, (1, 2, 9, 9)),
    (3, 2, 1, (2, 3, 1, 1)),         # a 1x1 plane: every window mostly padding
    ((1, 3), (1, 2), (0, 1), (1, 2, 4, 2)),  # a window wider than the row
]


@pytest.mark.parametrize("k, s, p, shape", CASES)
def test_matches_torch(k, s, p, shape):
    require_kernel("max_pool2d", "cpu")
    x = torch.randn(shape)
    want = F.max_pool2d(x, k, s, p)
    got = max_pool2d(x, k, s, p)
    assert got.shape == want.shape and torch.equal(got, want)
    kk, ss, pp = ((v, v) if isinstance(v, int) else v for v in (k, s, p))
    assert torch.equal(reference.max_pool2d(x, kk, ss, pp), want)


@settings(max_examples=60, deadline=None)
@given(kh=st.integers(1, 5), kw=st.integers(1, 5), sh=st.integers(1, 4), sw=st.integers(1, 4),
       data=st.data())
def test_fuzzed_windows_match_torch(kh, kw, sh, sw, data):
    """Any window, stride and allowed padding over small planes (rows shorter than the window
    included): exactly torch's values."""
    require_kernel("max_pool2d", "cpu")
    ph, pw = data.draw(st.integers(0, kh // 2)), data.draw(st.integers(0, kw // 2))
    h = data.draw(st.integers(max(1, kh - 2 * ph), 12))
    w = data.draw(st.integers(max(1, kw - 2 * pw), 40))
    x = torch.randn(data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3)), h, w)
    assert torch.equal(max_pool2d(x, (kh, kw), (sh, sw), (ph, pw)),
                       F.max_pool2d(x, (kh, kw), (sh, sw), (ph, pw)))


def test_noncontiguous_and_nonfinite():
    """A NaN anywhere in a window gives NaN (as torch), inf wins, -inf loses to anything."""
    require_kernel("max_pool2d", "cpu")
    x = torch.randn(9, 6, 2, 11).permute(2, 3, 0, 1)  # (2, 11, 9, 6), not contiguous
    x[0, 0, 0, 0], x[1, 3, 4, 4], x[1, 5, 8, 5] = float("nan"), float("inf"), float("-inf")
    x[0, 7, :3, :3] = float("-inf")
    got, want = max_pool2d(x, 3, 2, 1), F.max_pool2d(x, 3, 2, 1)
    assert torch.equal(got.isnan(), want.isnan()) and got.isnan().any()
    assert torch.equal(got.nan_to_num(), want.nan_to_num())


def test_opcheck():
    require_kernel("max_pool2d", "cpu")
    x = torch.randn(2, 3, 9, 10)
    torch.library.opcheck(torch.ops.compressor.max_pool2d, (x, [3, 3], [2, 2], [1, 1]))


def test_bad_input_names_the_argument():
    require_kernel("max_pool2d", "cpu")
    x = torch.randn(1, 2, 5, 5)
    op = torch.ops.compressor.max_pool2d
    for args, match in [((x[0], [2, 2], [2, 2], [0, 0]), "input"),
                        ((x.double(), [2, 2], [2, 2], [0, 0]), "input"),
                        ((x, [3, 3], [1, 1], [2, 2]), "padding"),
                        ((x, [0, 2], [1, 1], [0, 0]), "kernel_size"),
                        ((x, [2, 2], [0, 1], [0, 0]), "stride"),
                        ((x, [9, 9], [1, 1], [1, 1]), "smaller than kernel_size")]:
        with pytest.raises(RuntimeError, match=match):
            op(*args)
    for args, match in [((x[0], 2), "input"), ((x, 3, 1, 2), "padding"),
                        ((x, 0), "kernel_size")]:
        with pytest.raises(ValueError, match=match):
            max_pool2d(*args)
