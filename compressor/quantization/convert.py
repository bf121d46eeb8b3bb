"""Swap a model's Linear / Conv1d / Conv2d layers for their packed power-of-two twins, and pick
each layer's execution mode (compressor.nn.pow2) by timing it on the model's own inputs."""

import copy

import torch
from torch import nn

from compressor.errors import CompressorError
from compressor.formats.pow2_levels import check_bits
from compressor.nn.onlstm import ONLSTM
from compressor.nn.pow2 import Pow2Conv1d, Pow2Conv2d, Pow2Linear, _Pow2Packed
from compressor.nn.pow2_embedding import Pow2Embedding
from compressor.nn.pow2_recurrent import Pow2GRU, Pow2LSTM, Pow2RNN
from compressor.pruning.selection import compressible_
from compressor.timing import median_seconds, paired_medians

_TWINS = {nn.Linear: Pow2Linear, nn.Conv1d: Pow2Conv1d, nn.Conv2d: Pow2Conv2d,
          nn.Embedding: Pow2Embedding, nn.LSTM: Pow2LSTM, nn.GRU: Pow2GRU, nn.RNN: Pow2RNN}
# "codes" must beat "decoded" by this much to be chosen: decoded is the float model's speed,
# so a near tie goes to it.
_MARGIN = 0.95


def convert_to_pow2(model: nn.Module, bits: int, n1: dict[str, int] | None = None,
                    example_inputs=None, allow_int8_activations: bool = False,
                    filter_fn=None, layer_bits: dict[str, int] | None = None) -> nn.Module:
    """Replace every nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding, nn.LSTM, nn.GRU and nn.RNN
    (in place, returned for chaining) by its packed twin (Pow2Linear, Pow2Conv1d, Pow2Conv2d,
    Pow2Embedding, Pow2LSTM, Pow2GRU, Pow2RNN). All layers are built before any is
    swapped in, so a layer that cannot be packed leaves the model as it was.

    `n1` maps a parameter name ("0.weight") to the exponent INQ fixed for it; without an entry the
    layer's own max picks n1, which is the same for weights INQ already quantized.
    `filter_fn(module, fqn)` chooses the layers (default: all). `layer_bits` maps a layer's
    qualified name to its own width (INQ's per-layer budgets); the others get `bits`.
    Without `example_inputs` every layer runs "decoded" (exactly the float model's speed). With
    them (a tensor or a tuple of forward arguments) each layer is timed in each mode on the input
    it receives and keeps the fastest: "codes" where the kernel on the codes beats the dense
    kernel, and, only with `allow_int8_activations`, "codes_int8" (rounds activations to int8,
    as torch's dynamic int8 Linear does). The choice is `module.mode`; `pow2_modes(model)` lists
    them for a model file and `set_pow2_modes` restores them. An ONLSTM is packed too
    (`ONLSTM.pack_pow2_`: its input and recurrent weights become Pow2Linear children); with
    example inputs its recurrent mode is timed over the whole layer.
    """
    check_bits(bits)
    layer_bits = dict(layer_bits or {})
    for width in layer_bits.values():
        check_bits(width)
    compressible_(model)  # torch's attention layers hide their projections from the swap
    if isinstance(model, ONLSTM) and model.packed_bits is None:  # the root itself
        width = layer_bits.get("", bits)
        copy.deepcopy(model).pack_pow2_(width, n1)  # raises before the model is touched
        model.pack_pow2_(width, n1)
    swaps = _plan(model, bits, n1 or {}, "", filter_fn, layer_bits)
    for parent, name, packed in swaps:
        setattr(parent, name, packed)
    if example_inputs is not None:
        choose_modes(model, example_inputs, allow_int8_activations)
    return model


def _plan(module: nn.Module, bits: int, n1: dict[str, int], prefix: str, filter_fn,
          layer_bits: dict[str, int]) -> list:
    swaps = []
    for name, child in module.named_children():
        fqn = f"{prefix}{name}"
        cls = _TWINS.get(type(child))
        if cls is None and not (isinstance(child, ONLSTM) and child.packed_bits is None):
            swaps += _plan(child, bits, n1, fqn + ".", filter_fn, layer_bits)
            continue
        if filter_fn is not None and not filter_fn(child, fqn):
            continue
        width = layer_bits.get(fqn, bits)
        own = {k[len(fqn) + 1:]: v for k, v in n1.items() if k.startswith(fqn + ".")}
        try:
            if cls is None:  # an ONLSTM: packed on a copy, so a failure changes nothing
                swaps.append((module, name, copy.deepcopy(child).pack_pow2_(width, own)))
            elif cls in (Pow2LSTM, Pow2GRU, Pow2RNN):  # one n1 per weight
                swaps.append((module, name, cls.from_float(child, width, own)))
            else:
                swaps.append((module, name, cls.from_float(child, width, n1.get(f"{fqn}.weight"))))
        except CompressorError as err:
            raise CompressorError(f"convert_to_pow2: layer {fqn!r} cannot be packed ({err}); "
                                  "the model is unchanged") from None
    return swaps


def pow2_layers(model: nn.Module):
    """(name, layer) of every power-of-two layer with an execution mode."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (_Pow2Packed, Pow2LSTM))]


def _set_mode(layer: nn.Module, mode: str) -> None:
    if isinstance(layer, Pow2LSTM):
        layer.pow2_mode = mode  # nn.LSTM's own `mode` is its cell type
    else:
        layer.mode = mode


def _mode_of(layer: nn.Module) -> str:
    return layer.pow2_mode if isinstance(layer, Pow2LSTM) else layer.mode


def pow2_modes(model: nn.Module) -> dict[str, str]:
    """{module name: mode} of every packed power-of-two layer."""
    return {name: _mode_of(m) for name, m in pow2_layers(model)}


def set_pow2_modes(model: nn.Module, modes: dict[str, str]) -> None:
    """Set the modes `pow2_modes` listed (e.g. stored beside a model's state_dict)."""
    layers = dict(pow2_layers(model))
    for name, mode in modes.items():
        layer = layers.get(name)
        if layer is None:
            raise CompressorError(f"set_pow2_modes: {name!r} is not a power-of-two layer of "
                                  "this model")
        _set_mode(layer, mode)


def mode_candidates(layer: nn.Module, allow_int8: bool) -> list[str]:
    if isinstance(layer, Pow2LSTM):
        return layer.candidate_modes(allow_int8)
    if isinstance(layer, Pow2Embedding):
        return ["decoded", "codes"]  # a lookup: no int8 activations
    grouped = getattr(layer, "groups", 1) != 1
    modes = ["decoded"] if grouped else ["decoded", "codes"]
    if allow_int8 and not grouped and layer.bits <= 4:
        modes.append("codes_int8")
    return modes


def _layer_inputs(model: nn.Module, example_inputs) -> dict[nn.Module, torch.Tensor]:
    """The input each power-of-two layer (and packed ONLSTM) sees in one forward pass (the
    first call of each)."""
    seen: dict[nn.Module, torch.Tensor] = {}

    def hook(module, args):
        seen.setdefault(module, args[0].detach())

    layers = [m for _, m in pow2_layers(model)]
    rnns = [m for m in model.modules() if isinstance(m, ONLSTM) and m.packed_bits is not None]
    handles = [m.register_forward_pre_hook(hook) for m in layers + rnns]
    try:
        for m in layers:
            _set_mode(m, "decoded")
        args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
        with torch.no_grad():
            model(*args)
    finally:
        for h in handles:
            h.remove()
    return seen


def choose_modes(model: nn.Module, example_inputs, allow_int8_activations: bool = False,
                 repeat: int = 5) -> dict[str, dict]:
    """Time every power-of-two layer of `model` in each mode on the input it receives from
    `example_inputs`, set the fastest and return {name: {mode: seconds, "mode": chosen}}.
    A layer the example never reaches stays "decoded". Layers of the same signature share one
    measurement."""
    was_training = model.training
    # eval: a training-mode pass would move BatchNorm statistics (and fails at batch 1), and
    # a packed ONLSTM runs in eval only
    model.eval()
    try:
        return _choose_modes(model, example_inputs, allow_int8_activations, repeat)
    finally:
        model.train(was_training)


def _choose_modes(model, example_inputs, allow_int8_activations, repeat) -> dict[str, dict]:
    inputs = _layer_inputs(model, example_inputs)
    cache: dict[tuple, dict] = {}
    report = {}
    for name, layer in pow2_layers(model):
        x = inputs.get(layer)
        if x is None:
            _set_mode(layer, "decoded")
            continue
        key = (repr(layer), tuple(x.shape), x.dtype, x.device, torch.get_num_threads())
        if key not in cache:
            modes = mode_candidates(layer, allow_int8_activations)
            cache[key] = _time_modes(layer, x, modes, repeat)
        _set_mode(layer, cache[key]["mode"])
        report[name] = cache[key]
    for name, rnn in model.named_modules():
        if isinstance(rnn, ONLSTM) and rnn.packed_bits is not None and rnn in inputs:
            key = f"{name}.hh" if name else "hh"
            report[key] = _time_recurrent(rnn, inputs[rnn], allow_int8_activations, repeat)
    return report


def _time_recurrent(rnn: ONLSTM, x: torch.Tensor, allow_int8: bool, repeat: int) -> dict:
    """Times a packed ONLSTM with every recurrent Pow2Linear in each mode (whole layers: the
    fused sequence op against a loop of steps on the codes); sets and returns the fastest."""
    hh = [getattr(rnn, f"hh_l{k}") for k in range(rnn.num_layers)]
    modes = ["decoded", "codes"] + (["codes_int8"] if allow_int8 and rnn.packed_bits <= 4 else [])
    times = {}
    for mode in modes:
        for layer in hh:
            layer.mode = mode
        with torch.no_grad():
            times[mode] = median_seconds(lambda: rnn(x), x.device.type, repeat=repeat)
    best = min(modes[1:], key=times.__getitem__)
    mode = best if times[best] < _MARGIN * times["decoded"] else "decoded"
    for layer in hh:
        layer.mode = mode
    return {**times, "mode": mode}


def _time_modes(layer: nn.Module, x: torch.Tensor, modes: list[str], repeat: int) -> dict:
    _set_mode(layer, "decoded")  # its float buffer serves the "decoded" runs; the others ignore it
    fns = [lambda m=mode: layer.run(x, m) for mode in modes]
    with torch.no_grad():
        paired = paired_medians(fns, x.device.type, warmup=2, repeat=repeat, min_seconds=0.002)
    times = dict(zip(modes, paired.medians, strict=True))
    best = min(modes[1:], key=times.__getitem__, default="decoded")
    mode = best if times.get(best, float("inf")) < _MARGIN * times["decoded"] else "decoded"
    return {**times, "mode": mode}
