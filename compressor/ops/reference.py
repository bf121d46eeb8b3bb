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



# ---- power-of-two quantized matmul ---------------------------------------------------------------


def pow2_linear(input: torch.Tensor, codes: torch.Tensor, nonzero: torch.Tensor,
                bias: torch.Tensor | None, in_features: int, bits: int, n1: int) -> torch.Tensor:
    """input (M, K) @ W^T + bias with W (N, K) decoded from the packed pow2 codes.

    codes: uint8 (N, K_pad/2); nonzero: uint8 (N, K_pad/8) for bits=5, empty otherwise;
    bias: (N,) or None; K = in_features. Returns (M, N) in input's dtype.
    Format: compressor/quantization/packing.py.
    """
    from compressor.quantization.packing import unpack_pow2

    weight = unpack_pow2(codes, nonzero, in_features, bits, n1).to(input.dtype)
    return torch.nn.functional.linear(input, weight, None if bias is None else bias.to(input.dtype))



# ---- ON-LSTM fused cell --------------------------------------------------------------------------

