"""The one config of a lottery-ticket run; its fields (except `rounds`) name the run directory."""

import hashlib
import json
from dataclasses import asdict, dataclass, field

from compressor.config import Config
from compressor.errors import CompressorError
from compressor.pruning.selection import check_rate

STRATEGIES = ("layerwise", "global")
CONTROLS = ("reinit", "random_mask")
OPTIMIZERS = ("adam", "sgd")


@dataclass
class LotteryConfig(Config):
    """Iterative magnitude pruning: train `steps`, prune `rate` of the surviving weights
    (`output_rate` for the output layer; `strategy` 'layerwise' or 'global'), rewind survivors to
    their value at step `rewind_step` (0 = the original init θ0), retrain; `rounds` times.
    `controls` train, at every round's sparsity, the same mask from a fresh init ('reinit') and
    a random mask with the same per-layer sparsity from the rewound weights ('random_mask')."""

    dataset: str = "mnist1d"
    model: str = "lenet"
    rounds: int = field(default=8, metadata={"help": "pruning rounds"})
    rate: float = field(default=0.2, metadata={"help": "fraction of survivors pruned a round"})
    output_rate: float | None = field(default=0.1, metadata={
        "help": "the output layer's rate ('none': same as --rate)"})
    strategy: str = field(default="layerwise", metadata={"choices": STRATEGIES})
    rewind_step: int = field(default=0, metadata={
        "help": "rewind survivors to their value at this step (0: the init)"})
    steps: int = 2000
    batch_size: int = 60
    optimizer: str = "adam"
    lr: float = 1.2e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0
    eval_every: int = 100
    controls: tuple[str, ...] = field(default=CONTROLS, metadata={"choices": CONTROLS})
    exclude: tuple[str, ...] = ()
    num_samples: int = 10_000
    # {fnmatch pattern on the parameter name: rate per round}, winning over rate/output_rate
    # (layerwise only); rates_for_rounds turns final per-layer sparsities (robustness budgets)
    # into these
    layer_rates: dict[str, float] = field(default_factory=dict, metadata={"flag": False})

    def validate(self) -> None:
        check_rate(self.rate, "rate")
        if self.output_rate is not None:
            check_rate(self.output_rate, "output_rate")
        for pattern, value in self.layer_rates.items():
            check_rate(value, f"layer_rates[{pattern!r}]")
        checks = [
            (self.rounds >= 0, f"rounds must be >= 0, got {self.rounds}"),
            (self.strategy in STRATEGIES, f"strategy must be one of {STRATEGIES}"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}"),
            (self.steps >= 1, f"steps must be >= 1, got {self.steps}"),
            (0 <= self.rewind_step < self.steps,
             f"rewind_step must be in [0, steps={self.steps}), got {self.rewind_step}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.eval_every >= 1, f"eval_every must be >= 1, got {self.eval_every}"),
            (set(self.controls) <= set(CONTROLS),
             f"controls must be among {CONTROLS}, got {list(self.controls)}"),
            (self.strategy == "layerwise" or self.output_rate is None,
             "output_rate needs strategy 'layerwise' (global uses one threshold; "
             "pass output_rate=None)"),
            (self.strategy == "layerwise" or not self.layer_rates,
             "layer_rates needs strategy 'layerwise' (global uses one threshold)"),
        ]
        for ok, message in checks:
            if not ok:
                raise CompressorError(message)

    def identity(self) -> dict:
        """Everything that changes results. `rounds` is left out: a finished run continues when
        rerun with more rounds, and earlier rounds do not depend on how many follow."""
        out = asdict(self)
        out.pop("rounds")
        out["controls"], out["exclude"] = list(self.controls), list(self.exclude)
        if not self.layer_rates:
            out.pop("layer_rates")  # runs from before per-layer rates keep their directory
        return out

    def run_name(self) -> str:
        digest = hashlib.sha1(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()
        return (f"{self.model}-{self.dataset.replace('/', '_')}-{self.strategy}-p{self.rate:g}"
                f"-k{self.rewind_step}-s{self.seed}-{digest[:10]}")


def rates_for_rounds(sparsities: dict[str, float], rounds: int) -> dict[str, float]:
    """Per-round rates that reach each final sparsity after `rounds` rounds of pruning a fraction
    of the survivors: 1 - (1 - s) ** (1 / rounds)."""
    if rounds < 1:
        raise CompressorError(f"rates_for_rounds: rounds must be >= 1, got {rounds}")
    out = {}
    for pattern, final in sparsities.items():
        check_rate(final, f"sparsity for {pattern!r}")
        out[pattern] = 1.0 - (1.0 - final) ** (1.0 / rounds)
    return out


def describe_difference(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} in the run, {new.get(k)!r} now" for k in keys)
