"""int8 codes: per-output-channel symmetric weight codes and uint8 affine activation codes, with
the rounding ONNX QuantizeLinear specifies (half-to-even, scales divide)."""

import torch


def weight_quant_params(weight: torch.Tensor, qmax: int = 127) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 codes, per-output-channel fp32 scales): scale = max|W_c|/qmax, codes in ±qmax."""
    w = weight.detach().float()
    scale = w.abs().reshape(w.shape[0], -1).amax(dim=1) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    shape = (-1,) + (1,) * (w.dim() - 1)
    codes = torch.clamp(torch.round(w / scale.reshape(shape)), -qmax, qmax).to(torch.int8)
    return codes, scale


def activation_quant_params(low: float, high: float) -> tuple[float, int]:
    """uint8 affine (scale, zero point) covering [low, high] and 0 (so zero is exact)."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = (high - low) / 255.0
    if not scale > 0:
        return 1.0, 0
    scale = float(torch.tensor(scale, dtype=torch.float32))
    zero_point = int(min(255, max(0, round(-low / scale))))
    return scale, zero_point


def fake_quant_uint8(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """QuantizeLinear then DequantizeLinear (uint8), in fp32."""
    scale_t = torch.tensor(scale, dtype=torch.float32)
    q = torch.clamp(torch.round(x.float() / scale_t) + zero_point, 0, 255)
    return ((q - zero_point) * scale_t).to(x.dtype)
