"""cumax(x, dim) = cumsum(softmax(x, dim), dim): the master-gate activation of ON-LSTM.

The compiled op works on the last dim of a contiguous tensor; this wrapper moves `dim` there,
validates arguments, and wires autograd and torch.compile (fake kernel) for it.
"""

import torch

from compressor import _extension
from compressor.ops import reference
from compressor.ops._dispatch import has_kernel

_FLOAT_TYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def cumax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """cumsum(softmax(x, dim), dim), fused forward and backward.

    Accepts any strides (non-contiguous inputs are copied once). Rows holding NaN or +inf give NaN
    rows, exactly as the reference does. Empty tensors return empty tensors.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"cumax: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_TYPES:
        raise TypeError(f"cumax: x must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() == 0:
        raise ValueError("cumax: x must have at least 1 dim, got a 0-dim tensor")
    if not -x.dim() <= dim < x.dim():
        raise IndexError(f"cumax: dim={dim} is out of range for x with {x.dim()} dims")
    if not has_kernel("cumax", x.device) or (
        x.device.type == "cpu" and x.dtype not in (torch.float32, torch.float64)
    ):
        return reference.cumax(x, dim)
    moved = x.movedim(dim, -1).contiguous()
    return torch.ops.compressor.cumax(moved).movedim(-1, dim)


def _setup_context(ctx, inputs, output):
    (x,) = inputs
    ctx.save_for_backward(x)


def _backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return torch.ops.compressor.cumax_backward(grad.contiguous(), x)


if _extension.load():

    @torch.library.register_fake("compressor::cumax")
    def _cumax_fake(x):
        return torch.empty_like(x)

    @torch.library.register_fake("compressor::cumax_backward")
    def _cumax_backward_fake(grad, x):
        return torch.empty_like(x)

    torch.library.register_autograd("compressor::cumax", _backward, setup_context=_setup_context)
