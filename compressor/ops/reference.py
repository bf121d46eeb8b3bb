"""Plain-PyTorch twins of every compiled op: the oracle the kernel tests compare against, and the
fallback when the extension is missing. Each twin states its shapes; keep them obvious, not fast.
"""

import torch

from compressor.errors import CompressorError
from compressor.formats.csr import check_csr

# ---- cumax -------------------------------------------------------------------------------------


def cumax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """cumsum(softmax(x)) along `dim`. x: any shape; returns the same shape."""
    return torch.cumsum(torch.softmax(x, dim=dim), dim=dim)


def cumax_backward(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """dL/dx of cumax over the last dim, given dL/dy (both shape (..., L)).

    With s = softmax(x) and r = reverse-cumsum(grad): dL/dx = s * (r - <s, r>).
    """
    s = torch.softmax(x, dim=-1)
    r = torch.flip(torch.cumsum(torch.flip(grad, [-1]), -1), [-1])
    return s * (r - (s * r).sum(-1, keepdim=True))


# ---- sparse conv2d / linear ----------------------------------------------------------------------


def _csr_rows(row_ptr: torch.Tensor, nnz: int) -> torch.Tensor:
    """The row of each stored entry of a CSR matrix (nnz,), from row_ptr (rows + 1,)."""
    counts = (row_ptr[1:] - row_ptr[:-1]).long()
    rows = torch.arange(counts.numel(), device=row_ptr.device)
    return torch.repeat_interleave(rows, counts, output_size=nnz)


ACTIVATIONS = ("none", "relu", "relu6", "silu")


def activate(x: torch.Tensor, activation: str) -> torch.Tensor:
    """The fused epilogue's activation: none, relu, relu6 or silu."""
    fns = {"none": lambda t: t, "relu": torch.relu, "relu6": torch.nn.functional.relu6,
           "silu": torch.nn.functional.silu}
    if activation not in fns:
        raise CompressorError(f"sparse_conv2d: activation must be one of {', '.join(fns)}, "
                              f"got {activation!r}")
    return fns[activation](x)


def sparse_conv2d(input, values, col_idx, row_ptr, bias, kernel_size, stride, padding, dilation,
                  groups, residual=None, activation="none"):
    """act(F.conv2d(input, W, bias, ...) + residual) with W (Cout, Cin/groups, kh, kw) in CSR.

    input (N, Cin, H, W); values (nnz,) float; col_idx (nnz,) int32, the flattened columns
    c*kh*kw + r*kw + s, strictly increasing within a row; row_ptr (Cout + 1,) int32; bias (Cout,)
    or None; residual (N, Cout, Ho, Wo) or None. Returns (N, Cout, Ho, Wo). The weight is checked
    as the kernels check it (compressor.formats.csr.check_csr).
    """
    kh, kw = kernel_size
    cout, cin_g = row_ptr.numel() - 1, input.shape[1] // groups
    if not torch.compiler.is_compiling():
        check_csr("sparse_conv2d", values, col_idx, row_ptr, cin_g * kh * kw)
    weight = torch.zeros(cout, cin_g * kh * kw, dtype=input.dtype, device=values.device)
    weight[_csr_rows(row_ptr, values.numel()), col_idx.long()] = values.to(input.dtype)
    out = torch.nn.functional.conv2d(input, weight.view(cout, cin_g, kh, kw),
                                     None if bias is None else bias.to(input.dtype), tuple(stride),
                                     tuple(padding), tuple(dilation), groups)
    return activate(out if residual is None else out + residual, activation)


def sparse_linear(input, values, col_idx, row_ptr, bias):
    """F.linear with a CSR weight: input (M, K), values/col_idx (nnz,), row_ptr (N_out + 1,),
    bias (N_out,) or None. Returns (M, N_out)."""
    n_out = row_ptr.numel() - 1
    weight = torch.zeros(n_out, input.shape[-1], dtype=values.dtype, device=values.device)
    weight.index_put_((_csr_rows(row_ptr, values.numel()), col_idx.long()), values,
                      accumulate=True)
    return torch.nn.functional.linear(input, weight, bias)



# ---- power-of-two quantized matmul ---------------------------------------------------------------


def pow2_linear(input: torch.Tensor, codes: torch.Tensor, nonzero: torch.Tensor,
                bias: torch.Tensor | None, in_features: int, bits: int, n1: int) -> torch.Tensor:
    """input (M, K) @ W^T + bias with W (N, K) decoded from the packed pow2 codes.

    codes: uint8 (N, K_pad/2); nonzero: uint8 (N, K_pad/8) for bits=5, empty otherwise;
    bias: (N,) or None; K = in_features. Returns (M, N) in input's dtype.
    Format: compressor/formats/pow2_codes.py.
    """
    from compressor.formats.pow2_codes import unpack_pow2

    weight = unpack_pow2(codes, nonzero, in_features, bits, n1).to(input.dtype)
    return torch.nn.functional.linear(input, weight, None if bias is None else bias.to(input.dtype))



# ---- ON-LSTM fused cell --------------------------------------------------------------------------



def _onlstm_split(gates: torch.Tensor, chunk_size: int):
    """Views of gates (B, 4D + 2m): master-in, master-forget logits (B, m); o, c, i, f (B, m, C)."""
    hidden = (gates.shape[-1] * chunk_size) // (4 * chunk_size + 2)
    m = hidden // chunk_size
    master_in, master_forget = gates[:, :m], gates[:, m : 2 * m]
    o, c, i, f = gates[:, 2 * m :].reshape(-1, 4 * m, chunk_size).chunk(4, 1)
    return master_in, master_forget, o, c, i, f


def onlstm_cell(xg: torch.Tensor, hg: torch.Tensor, c_prev: torch.Tensor, chunk_size: int):
    """One ON-LSTM step after the matmuls (Shen et al. 2019, official cell).

    xg, hg: (B, 4D + 2m) input and hidden projections (biases included), m = D / chunk_size,
    columns [master in (m) | master forget (m) | o | c | i | f]; c_prev: (B, D).
    Returns h (B, D), c (B, D), dist (B, 2) = [d_f, d_i] per row.
    """
    gates = xg + hg
    master_in, master_forget, o, cell, i, f = _onlstm_split(gates, chunk_size)
    cin = 1.0 - cumax(master_in)
    cforget = cumax(master_forget)
    m = cin.shape[-1]
    dist = torch.stack([1.0 - cforget.sum(-1) / m, cin.sum(-1) / m], dim=-1)
    cin, cforget = cin[:, :, None], cforget[:, :, None]
    overlap = cforget * cin
    forget = torch.sigmoid(f) * overlap + (cforget - overlap)
    ingate = torch.sigmoid(i) * overlap + (cin - overlap)
    c = forget * c_prev.reshape(forget.shape) + ingate * torch.tanh(cell)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h.reshape(c_prev.shape), c.reshape(c_prev.shape), dist


def onlstm_cell_backward(grad_h, grad_c, grad_dist, gates, c_prev, c, chunk_size: int):
    """Gradients of onlstm_cell w.r.t. the summed gates (B, 4D + 2m) and c_prev (B, D), given
    grad_h, grad_c (B, D) and grad_dist (B, 2). `c` is unused (the kernel's saved output)."""
    del c
    with torch.enable_grad():
        g = gates.detach().requires_grad_()
        cp = c_prev.detach().requires_grad_()
        outs = onlstm_cell(g, torch.zeros_like(g), cp, chunk_size)
        return torch.autograd.grad(outs, (g, cp), (grad_h, grad_c, grad_dist))


def onlstm_sequence(xg, w_hh, b_hh, h0, c0, chunk_size: int):
    """A layer over time. xg (T, B, G) input projection with its bias, w_hh (G, D), b_hh (G,),
    h0, c0 (B, D). Returns out (T, B, D) hidden states, cells (T, B, D), dist (T, B, 2)."""
    h, c, outs, cells, dists = h0, c0, [], [], []
    for t in range(xg.shape[0]):
        h, c, d = onlstm_cell(xg[t], torch.nn.functional.linear(h, w_hh, b_hh), c, chunk_size)
        outs.append(h)
        cells.append(c)
        dists.append(d)
    if not outs:
        empty = xg.new_empty(0, *h0.shape)
        return empty, empty.clone(), xg.new_empty(0, h0.shape[0], 2)
    return torch.stack(outs), torch.stack(cells), torch.stack(dists)
