"""The robustness heatmap (the paper's figure 1) and per-layer compression budgets from it."""

import io
import os

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from compressor.errors import CompressorError  # noqa: E402
from compressor.io import write_bytes_atomic  # noqa: E402
from compressor.robustness.analysis import RobustnessResult  # noqa: E402

KINDS = ("channels", "sparsity", "bits")
DEFAULTS = {"channels": (0.0, 0.7), "sparsity": (0.5, 0.95), "bits": (3, 5)}


def heatmap(result: RobustnessResult, path: str | os.PathLike, title: str = "") -> str:
    """A PNG: one row per layer, one column per re-initialisation checkpoint and one for
    re-randomisation; the colour and the number are the test error."""
    grid = np.column_stack([np.asarray(result.reinit), np.asarray(result.rerandom)])
    columns = [f"t={t}" for t in result.steps] + ["rand"]
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(columns), 0.9 + 0.32 * len(result.layers)))
    image = ax.imshow(grid, cmap="RdYlGn_r", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(columns)), columns)
    ax.set_yticks(range(len(result.layers)), result.layers, fontsize=7)
    for (i, j), value in np.ndenumerate(grid):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6)
    ax.set_title(title or f"test error after resetting one layer (trained: "
                          f"{result.base_error:.3f})", fontsize=8)
    fig.colorbar(image, ax=ax, label="test error")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())
    return str(path)


def robustness_scores(result: RobustnessResult, measure: str = "reinit") -> dict[str, float]:
    """Per layer in [0, 1]: 0 = resetting it changes nothing (robust), 1 = the most critical
    layer. 'reinit' uses the reset to the first checkpoint (theta_0), 'rerandom' the fresh
    draw; the score is the error increase over the trained network, scaled by the largest."""
    if measure not in ("reinit", "rerandom"):
        raise CompressorError(f"robustness_scores: measure must be 'reinit' or 'rerandom', "
                              f"got {measure!r}")
    errors = [row[0] for row in result.reinit] if measure == "reinit" else result.rerandom
    rise = np.maximum(np.asarray(errors) - result.base_error, 0.0)
    top = rise.max() if rise.size else 0.0
    scaled = rise / top if top > 0 else np.zeros_like(rise)
    return dict(zip(result.layers, scaled.tolist(), strict=True))


def budgets(result: RobustnessResult, kind: str = "channels", low=None, high=None,
            measure: str = "reinit") -> dict:
    """Per-layer compression from robustness: robust layers get the most.

    channels -> {layer: fraction of channels removed} for StructuredConfig.ratios;
    sparsity -> {"layer.*": fraction of weights removed} for PruneConfig.rates;
    bits -> {layer: weight bits} (critical layers get `high` bits). low/high bound the range
    (defaults: channels 0..0.7, sparsity 0.5..0.95, bits 3..5)."""
    if kind not in KINDS:
        raise CompressorError(f"budgets: kind must be one of {KINDS}, got {kind!r}")
    lo, hi = DEFAULTS[kind]
    lo, hi = (lo if low is None else low), (hi if high is None else high)
    if lo > hi:
        raise CompressorError(f"budgets: low ({lo}) must not exceed high ({hi})")
    scores = robustness_scores(result, measure)
    if kind == "bits":
        return {layer: int(round(lo + (hi - lo) * s)) for layer, s in scores.items()}
    values = {layer: float(hi - (hi - lo) * s) for layer, s in scores.items()}
    if kind == "sparsity":
        return {f"{layer}.*": v for layer, v in values.items()}
    return values
