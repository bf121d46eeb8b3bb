"""Which parameters get pruned, and at what rate: defaults, per-layer rates, exclusions."""

from fnmatch import fnmatchcase

from torch import nn

from compressor.errors import CompressorError

# 1-D "weights" of these are scales, not connections; pruning them is never what is meant.
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def prunable_parameters(model: nn.Module, exclude=()) -> dict[str, tuple[nn.Module, str]]:
    """{qualified name: (module, param name)} for every connection weight, in registration order.

    A connection weight is a parameter whose name starts with 'weight' and that has >= 2 dims:
    Linear/Conv weights, nn.LSTM's and ON-LSTM's weight_ih_l0 / weight_hh_l0, Embedding.
    `exclude` holds fnmatch patterns over qualified names ('classifier.*', '*.weight_hh_l0').
    """
    found = {}
    for mod_name, module in model.named_modules():
        if isinstance(module, _NORM_TYPES):
            continue
        for name, param in module._parameters.items():
            if param is None or not name.startswith("weight") or param.dim() < 2:
                continue
            qual = f"{mod_name}.{name}" if mod_name else name
            if not any(fnmatchcase(qual, pattern) for pattern in exclude):
                found[qual] = (module, name)
    return found


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
