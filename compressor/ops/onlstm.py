"""Fused ON-LSTM ops: one cell step, and a whole layer over time (the time loop runs in C++).

Gate layout (D hidden, m = D / chunk_size, G = 4D + 2m): [master in | master forget | o | c | i | f]
as the official ON-LSTM code lays out its Linear layers; shapes and equations in ops/reference.py.
Each wrapper validates its arguments (errors name the argument), makes inputs contiguous, and falls
back to the PyTorch twin where no kernel exists for the device or dtype.
"""

import torch

from compressor import _extension
from compressor.errors import CompressorError
from compressor.ops import reference
from compressor.ops._dispatch import has_kernel

_KERNEL_DTYPES = (torch.float32, torch.float64)


def gate_width(hidden_size: int, chunk_size: int) -> int:
    """Columns of the gate pre-activations: 4 * hidden + 2 * hidden / chunk_size."""
    return 4 * hidden_size + 2 * (hidden_size // chunk_size)


def check_chunk(hidden_size: int, chunk_size: int, op: str) -> None:
    if not isinstance(chunk_size, int) or chunk_size <= 0:
        raise CompressorError(f"{op}: chunk_size must be a positive int, got {chunk_size!r}")
    if hidden_size <= 0 or hidden_size % chunk_size:
        raise CompressorError(
            f"{op}: hidden size {hidden_size} must be a positive multiple of chunk_size "
            f"{chunk_size}")


def _check_tensor(t, name: str, op: str, shape: tuple, dtype=None, device=None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got dtype {t.dtype}")
    if tuple(t.shape) != shape:
        raise CompressorError(f"{op}: {name} must have shape {shape}, got {tuple(t.shape)}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{op}: {name} must have dtype {dtype}, got {t.dtype}")
    if device is not None and t.device != device:
        raise CompressorError(f"{op}: {name} must be on {device}, got {t.device}")


def _use_kernel(op: str, t: torch.Tensor) -> bool:
    return has_kernel(op, t.device) and t.dtype in _KERNEL_DTYPES


def onlstm_cell(xg: torch.Tensor, hg: torch.Tensor, c_prev: torch.Tensor, chunk_size: int):
    """One fused ON-LSTM step: (h, c, dist) from projections xg, hg (B, G) and c_prev (B, D).

    dist (B, 2) holds the parsing distances [d_f, d_i]. Differentiable in xg, hg and c_prev.
    """
    op = "onlstm_cell"
    if not isinstance(c_prev, torch.Tensor) or c_prev.dim() != 2:
        raise CompressorError(f"{op}: c_prev must be a (batch, hidden) tensor, got "
                              f"{getattr(c_prev, 'shape', type(c_prev).__name__)}")
    batch, hidden = c_prev.shape
    check_chunk(hidden, chunk_size, op)
    width = gate_width(hidden, chunk_size)
    _check_tensor(c_prev, "c_prev", op, (batch, hidden))
    for name, t in (("xg", xg), ("hg", hg)):
        _check_tensor(t, name, op, (batch, width), c_prev.dtype, c_prev.device)
    if not _use_kernel(op, c_prev):
        return reference.onlstm_cell(xg, hg, c_prev, chunk_size)
    return torch.ops.compressor.onlstm_cell(xg.contiguous(), hg.contiguous(), c_prev.contiguous(),
                                            chunk_size)


def onlstm_sequence(xg: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor, h0: torch.Tensor,
                    c0: torch.Tensor, chunk_size: int):
    """One ON-LSTM layer over a sequence: xg (T, B, G) is the input projection (bias included),
    w_hh (G, D), b_hh (G,), h0 and c0 (B, D). Returns out (T, B, D) hidden states, cells (T, B, D)
    and dist (T, B, 2). Differentiable in every tensor argument."""
    op = "onlstm_sequence"
    if not isinstance(w_hh, torch.Tensor) or w_hh.dim() != 2:
        raise CompressorError(f"{op}: w_hh must be a (4*hidden + 2*hidden/chunk_size, hidden) "
                              f"tensor, got {getattr(w_hh, 'shape', type(w_hh).__name__)}")
    hidden = w_hh.shape[1]
    check_chunk(hidden, chunk_size, op)
    width = gate_width(hidden, chunk_size)
    _check_tensor(w_hh, "w_hh", op, (width, hidden))
    if not isinstance(xg, torch.Tensor) or xg.dim() != 3:
        raise CompressorError(f"{op}: xg must be a (time, batch, {width}) tensor, got "
                              f"{getattr(xg, 'shape', type(xg).__name__)}")
    steps, batch = xg.shape[:2]
    dt, dev = w_hh.dtype, w_hh.device
    _check_tensor(xg, "xg", op, (steps, batch, width), dt, dev)
    _check_tensor(b_hh, "b_hh", op, (width,), dt, dev)
    _check_tensor(h0, "h0", op, (batch, hidden), dt, dev)
    _check_tensor(c0, "c0", op, (batch, hidden), dt, dev)
    if not _use_kernel(op, w_hh):
        return reference.onlstm_sequence(xg, w_hh, b_hh, h0, c0, chunk_size)
    out, cells, dist, _ = torch.ops.compressor.onlstm_sequence(
        xg.contiguous(), w_hh.contiguous(), b_hh.contiguous(), h0.contiguous(), c0.contiguous(),
        chunk_size)
    return out, cells, dist


def _zeros_if_none(grad, like):
    return torch.zeros_like(like) if grad is None else grad.contiguous()


def _cell_setup(ctx, inputs, output):
    xg, hg, c_prev, chunk = inputs
    ctx.chunk = chunk
    ctx.save_for_backward(xg, hg, c_prev, output[1])


def _cell_backward(ctx, grad_h, grad_c, grad_dist):
    xg, hg, c_prev, c = ctx.saved_tensors
    grad_gates, grad_c_prev = torch.ops.compressor.onlstm_cell_backward(
        _zeros_if_none(grad_h, c), _zeros_if_none(grad_c, c),
        _zeros_if_none(grad_dist, c.new_empty(c.shape[0], 2)), xg + hg, c_prev, c, ctx.chunk)
    return grad_gates, grad_gates, grad_c_prev, None


def _sequence_setup(ctx, inputs, output):
    _, w_hh, _, h0, c0, chunk = inputs
    out, cells, _, gates = output
    ctx.chunk = chunk
    ctx.mark_non_differentiable(gates)
    ctx.save_for_backward(w_hh, h0, c0, out, cells, gates)


def _sequence_backward(ctx, grad_out, grad_cells, grad_dist, _grad_gates):
    w_hh, h0, c0, out, cells, gates = ctx.saved_tensors
    grad_gates, grad_w, grad_h0, grad_c0 = torch.ops.compressor.onlstm_sequence_backward(
        _zeros_if_none(grad_out, out), _zeros_if_none(grad_cells, cells),
        _zeros_if_none(grad_dist, out.new_empty(*out.shape[:2], 2)), w_hh, h0, c0, out, cells,
        gates, ctx.chunk)
    return grad_gates, grad_w, grad_gates.sum((0, 1)), grad_h0, grad_c0, None


if _extension.load():

    @torch.library.register_fake("compressor::onlstm_cell")
    def _cell_fake(xg, hg, c_prev, chunk_size):
        return (torch.empty_like(c_prev), torch.empty_like(c_prev),
                c_prev.new_empty(c_prev.shape[0], 2))

    @torch.library.register_fake("compressor::onlstm_cell_backward")
    def _cell_backward_fake(grad_h, grad_c, grad_dist, gates, c_prev, c, chunk_size):
        return torch.empty_like(gates), torch.empty_like(c_prev)

    @torch.library.register_fake("compressor::onlstm_sequence")
    def _sequence_fake(xg, w_hh, b_hh, h0, c0, chunk_size):
        steps, batch = xg.shape[:2]
        hidden = w_hh.shape[1]
        return (xg.new_empty(steps, batch, hidden), xg.new_empty(steps, batch, hidden),
                xg.new_empty(steps, batch, 2), torch.empty_like(xg))

    @torch.library.register_fake("compressor::onlstm_sequence_backward")
    def _sequence_backward_fake(grad_out, grad_cells, grad_dist, w_hh, h0, c0, out, cells, gates,
                                chunk_size):
        return (torch.empty_like(gates), torch.empty_like(w_hh), torch.empty_like(h0),
                torch.empty_like(c0))

    torch.library.register_autograd("compressor::onlstm_cell", _cell_backward,
                                    setup_context=_cell_setup)
    torch.library.register_autograd("compressor::onlstm_sequence", _sequence_backward,
                                    setup_context=_sequence_setup)
