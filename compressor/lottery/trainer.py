"""One resumable, deterministic training job: the same (weights, optimizer state, step) always
continues with the same batches, so a killed and resumed job ends bit-identical."""

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from compressor.data import Dataset
from compressor.lottery import distributed as dist
from compressor.lottery.config import LotteryConfig
from compressor.pruning import load_state_dict
from compressor.pruning.masks import MaskKeeper
from compressor.train import batches, evaluate


@dataclass
class JobState:
    """What a mid-job checkpoint holds."""

    step: int
    curve: list = field(default_factory=list)
    optimizer: dict | None = None
    extras: dict = field(default_factory=dict)


def make_optimizer(model: nn.Module, cfg: LotteryConfig) -> torch.optim.Optimizer:
    # foreach: one fused call per state tensor kind instead of a Python loop over parameters,
    # which dominates the step time of small models on CPU.
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay, foreach=True)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            foreach=True)


def _test_acc(model: nn.Module, data: Dataset, device) -> float:
    return evaluate(model, data.x_test.to(device), data.y_test.to(device))


def run_job(model: nn.Module, data: Dataset, cfg: LotteryConfig, state: JobState,
            checkpoint: Callable[[nn.Module, JobState], None], checkpoint_every: int,
            on_step: Callable[[int, nn.Module, JobState], None] | None = None,
            bar: tqdm | None = None) -> JobState:
    """Train from state.step to cfg.steps; `checkpoint(model, state)` every `checkpoint_every`
    steps; the curve gets the test accuracy at the start and every eval_every steps."""
    device = next(model.parameters()).device
    opt = make_optimizer(model, cfg)
    if state.optimizer is not None:
        opt.load_state_dict(state.optimizer)
    keeper = MaskKeeper(model)  # masks are fixed within a job
    trained = dist.wrap(model)
    loss_fn = nn.CrossEntropyLoss()
    if not state.curve:
        state.curve.append({"step": state.step, "test_acc": _test_acc(model, data, device)})
    stream = batches(data, cfg.batch_size, cfg.seed, start_step=state.step)
    model.train()
    for step in range(state.step + 1, cfg.steps + 1):
        x, y = dist.shard(*next(stream))
        opt.zero_grad(set_to_none=True)
        loss_fn(trained(x.to(device)), y.to(device)).backward()
        keeper.grads()
        opt.step()
        keeper.weights()
        state.step = step
        if on_step is not None:
            on_step(step, model, state)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            state.curve.append({"step": step, "test_acc": _test_acc(model, data, device)})
        if bar is not None:
            bar.update(1)
        if step % checkpoint_every == 0 and step < cfg.steps:
            state.optimizer = opt.state_dict()
            checkpoint(model, state)
    state.optimizer = None
    return state


def load_model_state(model: nn.Module, state_dict: dict) -> None:
    """Load weights and masks (creating the masks a fresh model lacks)."""
    load_state_dict(model, state_dict)
