"""`quantize_(model, config, data, filter_fn)`: INQ power-of-two (packed into Pow2 modules) or
int8 post-training quantization, in place."""

from collections.abc import Callable

from torch import nn

from compressor.data import Dataset
from compressor.errors import CompressorError
from compressor.history import adopt_, record
from compressor.nn import ONLSTM, Pow2GRU, Pow2LSTM, Pow2RNN
from compressor.nn.pow2 import _Pow2Packed
from compressor.quantization.convert import convert_to_pow2
from compressor.quantization.inq import INQ, INQConfig, quantizable_parameters
from compressor.quantization.int8 import Int8Config, Int8FakeQuant, quantize_int8
from compressor.train import batches

FilterFn = Callable[[nn.Module, str], bool]


def _selected_params(model: nn.Module, config: INQConfig, filter_fn: FilterFn | None):
    if filter_fn is None or config.param_names is not None:
        return config
    modules = dict(model.named_modules())
    names = tuple(n for n in quantizable_parameters(model, config)
                  if filter_fn(modules[n.rpartition(".")[0]], n.rpartition(".")[0]))
    if not names:
        raise CompressorError("quantize_: filter_fn rejected every quantizable layer")
    return config.replace(param_names=names)


def _inq_(model, config: INQConfig, data, filter_fn, loss_fn, checkpoint, progress):
    config = _selected_params(model, config, filter_fn)
    run = INQ(model, data, config, checkpoint, progress, loss_fn)
    stages = run.run()
    n1 = dict(run.state.n1)  # what INQ fixed; packing reuses it instead of re-deriving
    packed = {name.rpartition(".")[0] for name in n1}  # the modules owning quantized weights
    # each packed layer runs on the codes or decoded, whichever this machine measured faster on
    # one test example
    was_training = model.training
    model.eval()  # timed as it will run: BatchNorm on running stats, no dropout
    try:
        convert_to_pow2(model, config.bits, n1, example_inputs=(data.x_test[:1],),
                        filter_fn=lambda m, fqn: fqn in packed, layer_bits=run.layer_bits)
    finally:
        model.train(was_training)
    modules = dict(model.named_modules())
    layers = {}
    for name, value in n1.items():
        owner = modules[name.rpartition(".")[0]]
        layers[name] = {"action": f"INQ {run.bits[name]}-bit", "n1": value,
                        "packed": _is_packed(owner)}
        if not layers[name]["packed"]:
            layers[name]["reason"] = (f"no packed {type(owner).__name__} module: the weight holds "
                                      "power-of-two values in float storage")
    record(model, "quantize", config, layers, method="inq", stages=stages)
    return model


def _is_packed(module: nn.Module) -> bool:
    """A Pow2 module, or an ON-LSTM whose weights became Pow2 children."""
    if isinstance(module, ONLSTM):
        return module.packed_bits is not None
    return isinstance(module, (_Pow2Packed, Pow2GRU, Pow2LSTM, Pow2RNN))


def _int8_(model, config: Int8Config, data, filter_fn):
    quantized = quantize_int8(model, batches(data, 256, seed=0), config)
    # quantize_int8 works on a copy (it folds BatchNorm; a root torch layer comes back as its
    # compressor twin): the caller's object becomes it
    adopt_(model, quantized)
    layers = {name: {"action": "int8", "act_scale": float(m.act_scale)}
              for name, m in model.named_modules() if isinstance(m, Int8FakeQuant)}
    record(model, "quantize", config, layers, method="int8")
    return model


def quantize_(model: nn.Module, config: INQConfig | Int8Config, data: Dataset | None = None,
              filter_fn: FilterFn | None = None, loss_fn=None, checkpoint=None,
              progress: bool = False) -> nn.Module:
    """Quantize `model` in place and return it.

    INQConfig: Incremental Network Quantization retrains on `data` (loss `loss_fn`, default
    cross-entropy over the last dim), then each quantized layer becomes a packed Pow2 module
    with the n1 INQ fixed. Int8Config: calibrates activation ranges on `data`'s training set."""
    if data is None:
        raise CompressorError("quantize_ needs data: INQ retrains on it, int8 calibrates on it")
    if isinstance(config, INQConfig):
        return _inq_(model, config, data, filter_fn, loss_fn, checkpoint, progress)
    if isinstance(config, Int8Config):
        if filter_fn is not None:
            raise CompressorError("quantize_: filter_fn is not supported with Int8Config yet")
        return _int8_(model, config, data, filter_fn)
    raise CompressorError(f"quantize_: config must be an INQConfig or Int8Config, got "
                          f"{type(config).__name__}")
