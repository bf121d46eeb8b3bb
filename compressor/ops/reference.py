"""Plain-PyTorch twins of every compiled op: the oracle the kernel tests compare against, and the
fallback when the extension is missing. Each twin states its shapes; keep them obvious, not fast.
"""

import torch

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


def sparse_conv2d(input, values, col_offsets, row_ptr, bias, input_hw, kernel_size, stride,
                  padding, dilation, groups):
    """F.conv2d with a CSR weight whose columns are offsets into the padded input.

    input (N, Cin, H, W) with (H, W) == input_hw; values (nnz,) float; col_offsets (nnz,) int,
    = c_local*Hp*Wp + r*dilation_h*Wp + s*dilation_w with Hp, Wp the padded input size; row_ptr
    (Cout + 1,); bias (Cout,) or None. Returns (N, Cout, Ho, Wo).
    """
    (kh, kw), (dh, dw) = kernel_size, dilation
    hp, wp = input_hw[0] + 2 * padding[0], input_hw[1] + 2 * padding[1]
    cout, cin_g = row_ptr.numel() - 1, input.shape[1] // groups
    offs = col_offsets.long()
    c, r, s = offs // (hp * wp), offs % (hp * wp) // wp // dh, offs % wp // dw
    weight = torch.zeros(cout, cin_g, kh, kw, dtype=values.dtype, device=values.device)
    weight.index_put_((_csr_rows(row_ptr, values.numel()), c, r, s), values, accumulate=True)
    return torch.nn.functional.conv2d(input, weight, bias, tuple(stride), tuple(padding),
                                      tuple(dilation), groups)


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
    # shapes from static sizes only, so a traced scan body captures no symbolic batch size
    c = forget * c_prev.unflatten(-1, (m, chunk_size)) + ingate * torch.tanh(cell)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h.flatten(-2), c.flatten(-2), dist


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
