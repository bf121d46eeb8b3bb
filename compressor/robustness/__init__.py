"""Layer robustness (Zhang, Bengio, Singer): per-layer re-initialisation and re-randomisation
test error, the heatmap, and per-layer budgets (channel ratios, sparsities, bit widths) that
structured pruning (StructuredConfig.ratios), unstructured pruning (PruneConfig.rates) and
quantization take."""

from compressor.robustness.analysis import (
                                            RobustnessConfig,
                                            RobustnessResult,
                                            default_layers,
                                            layer_robustness,
                                            train_with_checkpoints,
)
from compressor.robustness.report import budgets, heatmap, robustness_scores

__all__ = ["RobustnessConfig", "RobustnessResult", "budgets", "default_layers", "heatmap",
           "layer_robustness", "robustness_scores", "train_with_checkpoints"]
