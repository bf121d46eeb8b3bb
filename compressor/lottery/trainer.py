"""One resumable, deterministic training job: the same (weights, optimizer state, step) always
continues with the same batches, so a killed and resumed job ends bit-identical."""

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn
from tqdm.auto import tqdm

from compressor.data import Dataset
from compressor.lottery import distributed as dist
from compressor.lottery.config import LotteryConfig
from compressor.pruning import load_state_dict
from compressor.pruning.masks import HoldMasks
from compressor.train import Callback, TrainConfig, evaluate, fit, make_optimizer


@dataclass
class JobState:
    """What a mid-job checkpoint holds."""

    step: int
    curve: list = field(default_factory=list)
    optimizer: dict | None = None
    extras: dict = field(default_factory=dict)


def train_config(cfg: LotteryConfig) -> TrainConfig:
    return TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
                       optimizer=cfg.optimizer, momentum=cfg.momentum,
                       weight_decay=cfg.weight_decay, seed=cfg.seed, eval_every=cfg.eval_every)


class _JobCallbacks(Callback):
    """A lottery job's extras: the rewind capture, progress and mid-job checkpoints."""

    def __init__(self, model, opt, state: JobState, checkpoint, checkpoint_every: int,
                 total: int, on_step=None, bar=None):
        self.model, self.opt, self.state = model, opt, state
        self.checkpoint, self.every, self.total = checkpoint, checkpoint_every, total
        self.on_step, self.bar = on_step, bar

    def after_step(self, step: int) -> None:
        self.state.step = step
        if self.on_step is not None:
            self.on_step(step, self.model, self.state)
        if self.bar is not None:
            self.bar.update(1)

    def on_step_end(self, step: int) -> None:
        # After the curve has this step's point, so a resumed job has the same curve.
        if step % self.every == 0 and step < self.total:
            self.state.optimizer = self.opt.state_dict()
            self.checkpoint(self.model, self.state)


def run_job(model: nn.Module, data: Dataset, cfg: LotteryConfig, state: JobState,
            checkpoint: Callable[[nn.Module, JobState], None], checkpoint_every: int,
            on_step: Callable[[int, nn.Module, JobState], None] | None = None,
            bar: tqdm | None = None) -> JobState:
    """Train from state.step to cfg.steps; `checkpoint(model, state)` every `checkpoint_every`
    steps; the curve gets the test accuracy at the start and every eval_every steps."""
    device = next(model.parameters()).device
    tc = train_config(cfg)
    opt = make_optimizer(model.parameters(), tc)
    if state.optimizer is not None:
        opt.load_state_dict(state.optimizer)
    if not state.curve:
        state.curve.append({"step": state.step, "test_acc": evaluate(
            model, data.x_test.to(device), data.y_test.to(device))})
    extras = _JobCallbacks(model, opt, state, checkpoint, checkpoint_every, cfg.steps,
                           on_step, bar)
    fit(model, data, tc, optimizer=opt, start_step=state.step, curve=state.curve,
        callbacks=[HoldMasks(model, opt), extras], forward=dist.wrap(model),
        prepare=dist.shard)
    state.optimizer = None
    return state


def load_model_state(model: nn.Module, state_dict: dict) -> None:
    """Load weights and masks (creating the masks a fresh model lacks)."""
    load_state_dict(model, state_dict)
