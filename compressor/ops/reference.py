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



# ---- ON-LSTM fused cell --------------------------------------------------------------------------

