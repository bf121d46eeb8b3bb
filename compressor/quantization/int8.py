"""int8 post-training quantization: per-channel symmetric weights, calibrated activation ranges.

`quantize_int8(model, calibration_batches, Int8Config())` folds BatchNorm, runs a few batches to
record the input range of every Conv/Linear, and returns a copy in which each such layer is an
`Int8FakeQuant`: it quantizes its input to uint8 (affine, calibrated scale and zero point) and
uses int8 weights (symmetric, one scale per output channel, codes in [-127, 127]), computing in
fp32 on the dequantized values. That is the arithmetic of the QDQ graph `compressor.export.to_onnx`
writes for it, so the PyTorch model measures the accuracy of the exported one.
Rounding is half-to-even and scales divide, as ONNX QuantizeLinear specifies.
"""

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from compressor.config import Config
from compressor.errors import CompressorError
from compressor.formats.int8_codes import (
    activation_quant_params,
    fake_quant_uint8,
    weight_quant_params,
)
from compressor.pruning.selection import compressible_, is_connection_weight
from compressor.quantization.batchnorm import fold_batchnorm

QUANTIZABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)
OBSERVERS = ("minmax", "percentile")


@dataclass
class Int8Config(Config):
    """calibration_batches: how many batches to observe; observer: 'minmax' (range of everything
    seen) or 'percentile' (mean over batches of the `percentile` / 100 − `percentile` quantiles,
    which ignores rare outliers); fold_bn: fold BatchNorm into the layer before it first;
    reduce_range: weight codes in [-63, 63] instead of [-127, 127]. onnxruntime's x86 int8
    kernels without VNNI (AVX2, plain AVX-512) multiply uint8 by int8 with vpmaddubsw, whose
    int16 pair sums saturate with full-range weights (measured here: 17% output error on
    DigitsCNN against 0.4% with reduced range), so the default keeps the exported model exact
    on every CPU; set False for ARM or VNNI targets. outputs: quantize each layer's output too
    (a calibrated uint8 QuantizeLinear after it), the QDQ form onnxruntime fuses into int8
    kernels (QGemm, QLinearConv, measured 3.6x faster than fp32 on a 768x768 Linear at 128
    tokens here); False keeps outputs float (a little less error, but onnxruntime then runs
    every layer in fp32 on weights it dequantizes at each run: slower than the fp32 file)."""

    calibration_batches: int = field(default=8, metadata={"help": "batches observed"})
    observer: str = field(default="minmax", metadata={"choices": OBSERVERS})
    percentile: float = 99.99
    fold_bn: bool = True
    reduce_range: bool = True
    outputs: bool = True

    def validate(self) -> None:
        self.require(self.calibration_batches >= 1, "calibration_batches", "must be >= 1")
        self.require(50.0 < self.percentile <= 100.0, "percentile", "must be in (50, 100]")


class Int8FakeQuant(nn.Module):
    """A Linear/Conv1d/Conv2d with uint8 input and int8 per-channel weights, simulated in fp32."""

    def __init__(self, layer: nn.Module, act_scale: float, act_zero_point: int,
                 weight_qmax: int = 63, out_scale: float = 0.0, out_zero_point: int = 0):
        super().__init__()
        if not isinstance(layer, QUANTIZABLE):
            raise CompressorError(f"Int8FakeQuant: {type(layer).__name__} is not one of "
                                  f"{[c.__name__ for c in QUANTIZABLE]}")
        codes, scale = weight_quant_params(layer.weight, weight_qmax)
        self.layer = copy.deepcopy(layer)
        self.register_buffer("weight_int8", codes)
        self.register_buffer("weight_scale", scale)
        # buffers, so a state_dict holds everything the quantized layer needs
        self.register_buffer("act_scale", torch.tensor(float(act_scale), dtype=torch.float32))
        self.register_buffer("act_zero_point", torch.tensor(int(act_zero_point),
                                                            dtype=torch.int32))
        # out_scale 0: the output stays float
        self.register_buffer("out_scale", torch.tensor(float(out_scale), dtype=torch.float32))
        self.register_buffer("out_zero_point", torch.tensor(int(out_zero_point),
                                                            dtype=torch.int32))
        with torch.no_grad():
            self.layer.weight.copy_(self.dequantized_weight())

    def dequantized_weight(self) -> torch.Tensor:
        shape = (-1,) + (1,) * (self.weight_int8.dim() - 1)
        return self.weight_int8.float() * self.weight_scale.reshape(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = fake_quant_uint8(x, float(self.act_scale), int(self.act_zero_point))
        layer = self.layer
        y = F.linear(x, layer.weight, layer.bias) if isinstance(layer, nn.Linear) else layer(x)
        if float(self.out_scale) > 0:
            y = fake_quant_uint8(y, float(self.out_scale), int(self.out_zero_point))
        return y

    def export_module(self) -> nn.Module:
        """The export protocol: the float layer holding the dequantized weights (shared, not
        copied); compressor.export adds the QDQ nodes from this module's codes and scales."""
        return self.layer

    def extra_repr(self) -> str:
        return (f"act_scale={float(self.act_scale):.4g}, "
                f"act_zero_point={int(self.act_zero_point)}, out_scale={float(self.out_scale):.4g}")


class _RangeObserver:
    def __init__(self, config: Int8Config):
        self.config, self.lows, self.highs = config, [], []

    def __call__(self, module, args, output=None):
        x = (args[0] if output is None else output).detach().float().flatten()
        if self.config.observer == "minmax":
            self.lows.append(float(x.min()))
            self.highs.append(float(x.max()))
            return
        if x.numel() > 1_000_000:  # torch.quantile's size limit; a strided sample is enough
            x = x[:: x.numel() // 1_000_000 + 1]
        q = torch.tensor([1 - self.config.percentile / 100, self.config.percentile / 100])
        low, high = torch.quantile(x, q).tolist()
        self.lows.append(low)
        self.highs.append(high)

    def range(self) -> tuple[float, float]:
        if self.config.observer == "minmax":
            return min(self.lows), max(self.highs)
        return sum(self.lows) / len(self.lows), sum(self.highs) / len(self.highs)


def _as_args(batch) -> tuple:
    if isinstance(batch, torch.Tensor):
        return (batch,)
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return (batch[0],)  # (x, y) pairs from compressor.train.batches: the input is x
    raise CompressorError("calibration data must yield tensors or (input, target) pairs, got "
                          f"{type(batch).__name__}")


@torch.no_grad()
def calibrate(model: nn.Module, data: Iterable, config: Int8Config) -> dict[str, tuple]:
    """{layer: (input range, output range)} of every quantizable layer over
    `config.calibration_batches` batches."""
    observers, handles = {}, []
    for name, module in model.named_modules():
        if isinstance(module, QUANTIZABLE):
            observers[name] = (_RangeObserver(config), _RangeObserver(config))
            handles.append(module.register_forward_pre_hook(observers[name][0]))
            handles.append(module.register_forward_hook(observers[name][1]))
    seen = 0
    try:
        for batch in data:
            model(*_as_args(batch))
            seen += 1
            if seen >= config.calibration_batches:
                break
    finally:
        for handle in handles:
            handle.remove()
    if seen == 0:
        raise CompressorError("calibration data is empty: give at least one batch")
    return {name: (ins.range(), outs.range()) for name, (ins, outs) in observers.items()
            if ins.lows}


def _kept_float_reason(module: nn.Module) -> str:
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return ("a lookup table, not a matmul: int8 would only shrink the file, which INQ's "
                "power-of-two codes do better")
    if isinstance(module, nn.RNNBase) or type(module).__name__ == "ONLSTM":
        return ("recurrent weights: onnxruntime's QDQ path has no int8 recurrent kernel (the "
                "weights would be dequantized at every run); INQ quantizes them")
    if isinstance(module, QUANTIZABLE):
        return "did not run during calibration"
    return f"{type(module).__name__} has no int8 form"


def int8_report(model: nn.Module) -> dict[str, dict]:
    """{weight: {"action": "int8", ...} or {"action": "kept float", "reason"}} for every
    connection weight of a quantize_int8 result."""
    out = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, Int8FakeQuant):
            qmax = int(module.weight_int8.abs().max()) if module.weight_int8.numel() else 0
            out[prefix + "weight"] = {"action": "int8", "act_scale": float(module.act_scale),
                                      "act_zero_point": int(module.act_zero_point),
                                      "weight_qmax": qmax}
            continue
        if any(isinstance(m, Int8FakeQuant) for m in _ancestors(model, name)):
            continue
        for p_name, param in module.named_parameters(recurse=False):
            if is_connection_weight(module, p_name, param):
                out[prefix + p_name] = {"action": "kept float",
                                        "reason": _kept_float_reason(module)}
    return out


def _ancestors(model: nn.Module, name: str):
    parts = name.split(".") if name else []
    for k in range(1, len(parts)):
        yield model.get_submodule(".".join(parts[:k]))


def quantize_int8(model: nn.Module, data: Iterable, config: Int8Config | None = None,
                  report: dict | None = None) -> nn.Module:
    """A calibrated int8 fake-quant copy of `model` (eval mode); `data` yields input batches.
    torch's attention layers are converted first (on the copy) so their projections are
    quantized like any Linear. `report` gets `int8_report` of the result."""
    config = config or Int8Config()
    model = fold_batchnorm(model) if config.fold_bn else copy.deepcopy(model).eval()
    compressible_(model)
    ranges = calibrate(model, data, config)
    if not ranges:
        raise CompressorError("quantize_int8: the model has no Linear/Conv1d/Conv2d layer that "
                              "ran during calibration")
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            path = _path_of(model, child)
            if isinstance(child, QUANTIZABLE) and path in ranges:
                scale, zero = activation_quant_params(*ranges[path][0])
                out_scale, out_zero = (activation_quant_params(*ranges[path][1])
                                       if config.outputs else (0.0, 0))
                qmax = 63 if config.reduce_range else 127
                setattr(parent, child_name, Int8FakeQuant(child, scale, zero, qmax, out_scale,
                                                          out_zero))
    if report is not None:
        report.update(int8_report(model))
    return model


def _path_of(model: nn.Module, target: nn.Module) -> str | None:
    return next((name for name, m in model.named_modules() if m is target), None)
