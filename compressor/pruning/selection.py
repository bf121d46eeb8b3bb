"""Which parameters get pruned, and at what rate: defaults, per-layer rates, exclusions; and
the conversion of torch layers that hide their weights, with their pruning masks carried over."""

from fnmatch import fnmatchcase

from torch import nn

from compressor.errors import CompressorError
from compressor.nn.convert import Swap, convert_torch_layers_
from compressor.pruning.masks import MASK_SUFFIX, get_masks, set_mask

# 1-D "weights" of these are scales, not connections; pruning them is never what is meant.
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def is_connection_weight(module: nn.Module, name: str, param) -> bool:
    """A parameter with >= 2 dims named 'weight*' (Linear, Conv, Embedding, nn.LSTM's and
    ON-LSTM's weight_ih_l0 / weight_hh_l0) or '*_weight' (nn.MultiheadAttention's
    in_proj_weight, q/k/v_proj_weight), outside norm layers."""
    return (param is not None and param.dim() >= 2 and not isinstance(module, _NORM_TYPES)
            and (name.startswith("weight") or name.endswith("_weight")))


def prunable_parameters(model: nn.Module, exclude=()) -> dict[str, tuple[nn.Module, str]]:
    """{qualified name: (module, param name)} for every connection weight (see
    `is_connection_weight`), in registration order. `exclude` holds fnmatch patterns over
    qualified names ('classifier.*', '*.weight_hh_l0')."""
    found = {}
    for mod_name, module in model.named_modules():
        for name, param in module._parameters.items():
            if not is_connection_weight(module, name, param):
                continue
            qual = f"{mod_name}.{name}" if mod_name else name
            if not any(fnmatchcase(qual, pattern) for pattern in exclude):
                found[qual] = (module, name)
    return found


def not_prunable(model: nn.Module) -> dict[str, dict]:
    """{parameter: {"action": "kept dense", "reason"}} for every parameter that is not a
    connection weight, so a report names what pruning leaves alone and why."""
    out = {}
    for mod_name, module in model.named_modules():
        for name, param in module._parameters.items():
            if param is None or is_connection_weight(module, name, param):
                continue
            if isinstance(module, _NORM_TYPES):
                reason = f"scale/shift of {type(module).__name__}, not a connection"
            elif param.dim() < 2:
                reason = "a bias or scale (1-D), not a connection"
            else:
                reason = "not a connection weight (e.g. a position embedding or class token)"
            out[f"{mod_name}.{name}" if mod_name else name] = {"action": "kept dense",
                                                               "reason": reason}
    return out


def _carry_masks(swap: Swap) -> set[str]:
    """Set on swap.new the masks (rows of them, for split tensors) of the swap.old parameters
    its parameters come from; returns the old mask buffers taken over."""
    masks = get_masks(swap.old)
    carried = set()
    for new_name, (old_name, rows) in swap.sources.items():
        mask = masks.get(old_name)
        if mask is None:
            continue
        owner, _, param = new_name.rpartition(".")
        set_mask(swap.new.get_submodule(owner), param, mask if rows is None else mask[rows])
        carried.add(old_name + MASK_SUFFIX)
    return carried


def compressible_(model: nn.Module) -> dict:
    """Convert, in place, every torch layer whose forward reads weights as tensors
    (nn.MultiheadAttention, nn.Transformer{Encoder,Decoder}[Layer]) into compressor's
    equivalent, so module swaps reach all weights; pruning masks move with their weights.
    All or nothing; returns {module path: {"action", ...}}. Idempotent."""
    return convert_torch_layers_(model, carry=_carry_masks)


def check_rate(rate: float, what: str = "rate") -> float:
    if not isinstance(rate, (int, float)) or not 0.0 < float(rate) < 1.0:
        raise CompressorError(f"{what} must be a fraction in (0, 1) (e.g. 0.2 prunes 20%), "
                              f"got {rate!r}")
    return float(rate)


def layer_rates(model: nn.Module, rate: float, output_rate: float | None = None,
                rates: dict[str, float] | None = None, exclude=()) -> dict[str, float]:
    """{qualified param name: rate}. `rate` applies everywhere; `output_rate` to the output layer
    (the last prunable weight in registration order, e.g. LeNet's last Linear); `rates` maps
    fnmatch patterns to rates and wins over both; `exclude` removes parameters entirely."""
    params = prunable_parameters(model, exclude)
    if not params:
        raise CompressorError(
            f"{type(model).__name__} has nothing to prune: no weight with >= 2 dims"
            + (f" is left after exclude={list(exclude)}" if exclude else "")
            + "; prune a model with Linear/Conv/LSTM layers or loosen the exclusions")
    check_rate(rate)
    out = dict.fromkeys(params, rate)
    if output_rate is not None:
        out[list(params)[-1]] = check_rate(output_rate, "output rate")
    for pattern, value in (rates or {}).items():
        matched = [name for name in params if fnmatchcase(name, pattern)]
        if not matched:
            raise CompressorError(f"per-layer rate pattern {pattern!r} matches no prunable "
                                  f"weight; prunable weights are {list(params)}")
        for name in matched:
            out[name] = check_rate(value, f"rate for {name}")
    return out
