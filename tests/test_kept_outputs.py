"""The CPU kernels' outputs come from kept blocks (compressor.ops.memory): a freed output's memory
is handed to the next output of its size and holds the last one's values until overwritten, so
each kernel must write every element; a live output is never handed out twice; the blocks are
ordinary tensor storage; release_kept_outputs() gives the idle ones back."""

import pickle
import threading

import torch
import torch.nn.functional as F

from compressor.formats.csr import csr_from_dense
from compressor.ops import max_pool2d, release_kept_outputs, sparse_conv2d, sparse_linear
from tests.conftest import require_kernel


def conv_case(cout=32, hw=(23, 29)):
    torch.manual_seed(0)
    weight = torch.randn(cout, 8, 3, 3) * (torch.rand(cout, 8, 3, 3) > 0.6)
    x = torch.randn(2, 8, *hw)
    values, col, row_ptr = csr_from_dense(weight)

    def run(**kw):
        return sparse_conv2d(x, values, col, row_ptr, kernel_size=3, padding=1, **kw)

    return run, F.conv2d(x, weight, padding=1)


def test_a_freed_output_is_reused_and_fully_overwritten():
    """The second output lands in the first one's block, which still held its (different)
    values: every kernel writes all of its output, whatever the block held."""
    require_kernel("sparse_conv2d", "cpu")
    run, want = conv_case()
    first = run(residual=torch.full_like(want, 1e6))  # values far from the next call's
    assert first.numel() * 4 >= 64 << 10
    where = first.data_ptr()
    del first
    again = run()
    assert again.data_ptr() == where
    torch.testing.assert_close(again, want, atol=1e-4, rtol=1e-4)

    x = torch.randn(1, 64, 57, 61)
    pooled = max_pool2d(x, 3, 2, 1)
    where = pooled.data_ptr()
    pooled.fill_(float("nan"))
    del pooled
    again = max_pool2d(x, 3, 2, 1)
    assert again.data_ptr() == where and torch.equal(again, F.max_pool2d(x, 3, 2, 1))

    weight = torch.randn(300, 70) * (torch.rand(300, 70) > 0.8)
    inp = torch.randn(64, 70)
    values, col, row_ptr = csr_from_dense(weight)
    out = sparse_linear(inp, values, col, row_ptr)
    where = out.data_ptr()
    out.fill_(float("inf"))
    del out
    again = sparse_linear(inp, values, col, row_ptr)
    assert again.data_ptr() == where
    torch.testing.assert_close(again, F.linear(inp, weight), atol=1e-4, rtol=1e-4)


def test_live_outputs_never_share_memory():
    require_kernel("sparse_conv2d", "cpu")
    run, want = conv_case()
    outs = [run() for _ in range(4)]
    assert len({o.data_ptr() for o in outs}) == 4
    for out in outs:
        torch.testing.assert_close(out, want, atol=1e-4, rtol=1e-4)
    view = outs[0][:, :3]  # a view keeps the block alive
    kept = view.clone()
    del outs
    others = [run() for _ in range(4)]
    assert all(not (o.data_ptr() <= view.data_ptr() < o.data_ptr() + o.numel() * 4)
               for o in others)
    assert torch.equal(view, kept)


def test_outputs_are_ordinary_tensors():
    """Resized, pickled, shared with numpy, freed from another thread: as any CPU tensor."""
    require_kernel("sparse_conv2d", "cpu")
    run, want = conv_case()
    out = run()
    torch.testing.assert_close(pickle.loads(pickle.dumps(out)), want, atol=1e-4, rtol=1e-4)
    array = out.numpy()
    array[0, 0, 0, 0] = 7.0
    assert out[0, 0, 0, 0].item() == 7.0
    del array
    grown = run()
    grown.resize_(grown.numel() * 2)
    torch.testing.assert_close(grown[:want.numel()].view_as(want), want, atol=1e-4, rtol=1e-4)
    outs = [run() for _ in range(8)]
    freer = threading.Thread(target=outs.clear)
    freer.start()
    freer.join()
    torch.testing.assert_close(run(), want, atol=1e-4, rtol=1e-4)


def test_release_gives_the_idle_blocks_back():
    require_kernel("sparse_conv2d", "cpu")
    run, want = conv_case()
    release_kept_outputs()
    out = run()
    size = out.numel() * 4
    del out
    assert release_kept_outputs() == size
    assert release_kept_outputs() == 0
    small, _ = conv_case(cout=2, hw=(5, 5))  # under 64 KiB: left to malloc, never kept
    del_me = small()
    assert del_me.numel() * 4 < 64 << 10
    del del_me
    assert release_kept_outputs() == 0
    torch.testing.assert_close(run(), want, atol=1e-4, rtol=1e-4)
