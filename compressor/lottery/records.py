"""Per-job records: sparsity per layer and total, final/best accuracy, early-stop iteration."""

from torch import nn

from compressor.pruning import get_masks


def layer_sparsity(model: nn.Module, names: list[str]) -> dict[str, float]:
    """Fraction pruned per prunable parameter (unmasked ones count as dense) and 'total'."""
    masks = get_masks(model)
    params = dict(model.named_parameters())
    out, pruned, count = {}, 0, 0
    for name in names:
        mask = masks.get(name)
        numel = params[name].numel()
        zeros = 0 if mask is None else int((mask == 0).sum())
        out[name] = zeros / numel
        pruned, count = pruned + zeros, count + numel
    out["total"] = pruned / count
    return out


def job_record(round_index: int, variant: str, model: nn.Module, curve: list[dict],
               names: list[str]) -> dict:
    """The best accuracy is taken over the evaluations after training started (the first curve
    point is the untrained start); its step is the paper's early-stopping iteration."""
    sparsity = layer_sparsity(model, names)
    trained = curve[1:] or curve
    best = max(trained, key=lambda point: point["test_acc"])  # first of equal maxima
    return {
        "round": round_index,
        "variant": variant,
        "weights_remaining": 1.0 - sparsity["total"],
        "sparsity": sparsity,
        "final_acc": curve[-1]["test_acc"],
        "best_acc": best["test_acc"],
        "best_step": best["step"],
        "curve": [dict(point) for point in curve],
    }

