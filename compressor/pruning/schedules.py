"""Gradual pruning: the cubic automated gradual pruning schedule of Zhu & Gupta (2017). (One-shot
pruning is `prune_`; iterative pruning is the lottery runner's rounds.)"""

from dataclasses import dataclass

from torch import nn

from compressor.errors import CompressorError
from compressor.pruning.criteria import prune_to_sparsity
from compressor.pruning.selection import check_rate
from compressor.train import Callback


@dataclass(frozen=True)
class Gradual:
    """Zhu & Gupta's AGP: s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0))^3 for t0 <= t <= t1,
    pruning every `frequency` steps; s_i before t0 and s_f after t1."""

    final_sparsity: float
    begin_step: int
    end_step: int
    frequency: int = 100
    initial_sparsity: float = 0.0

    def __post_init__(self):
        check_rate(self.final_sparsity, "final sparsity")
        if not 0.0 <= self.initial_sparsity < self.final_sparsity:
            raise CompressorError(f"initial sparsity must be in [0, final sparsity), got "
                                  f"{self.initial_sparsity}")
        if not 0 <= self.begin_step < self.end_step:
            raise CompressorError(f"gradual pruning needs 0 <= begin_step < end_step, got "
                                  f"{self.begin_step}, {self.end_step}")
        if self.frequency < 1:
            raise CompressorError(f"frequency must be >= 1 step, got {self.frequency}")

    def progress(self, step: int) -> float:
        """0 before begin_step, 1 after end_step, the cubic in between."""
        span = self.end_step - self.begin_step
        t = min(max(step - self.begin_step, 0), span) / span
        return 1.0 - (1.0 - t) ** 3

    def sparsity_at(self, step: int) -> float:
        s_i, s_f = self.initial_sparsity, self.final_sparsity
        return s_i + (s_f - s_i) * self.progress(step)

    def is_pruning_step(self, step: int) -> bool:
        return (self.begin_step <= step <= self.end_step
                and ((step - self.begin_step) % self.frequency == 0 or step == self.end_step))


class GradualPruner(Callback):
    """Call after each optimizer step: on pruning steps, bring every layer to its scheduled
    sparsity. Per-layer targets scale the schedule: layer l reaches `final[l]` at end_step."""

    def __init__(self, model: nn.Module, schedule: Gradual, final: dict[str, float],
                 criterion: str = "magnitude"):
        self.model, self.schedule, self.final, self.criterion = model, schedule, final, criterion

    def targets(self, step: int) -> dict[str, float]:
        fraction = self.schedule.progress(step)
        s_i = self.schedule.initial_sparsity
        return {name: min(s_i, f) + (f - min(s_i, f)) * fraction for name, f in self.final.items()}

    def after_step(self, step: int) -> None:
        if self.schedule.is_pruning_step(step):
            prune_to_sparsity(self.model, self.targets(step), self.criterion)
