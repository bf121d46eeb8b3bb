"""A plain supervised training loop and accuracy evaluation shared by lottery, INQ and demos."""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from compressor.data import Dataset


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2048) -> float:
    """Top-1 accuracy in [0, 1]; restores the model's train/eval mode."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(x), batch_size):
        logits = model(x[start:start + batch_size])
        correct += (logits.argmax(-1) == y[start:start + batch_size]).sum().item()
    model.train(was_training)
    return correct / max(len(x), 1)


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 60
    lr: float = 1.2e-3
    weight_decay: float = 0.0
    seed: int = 0
    eval_every: int = 100


def batches(data: Dataset, batch_size: int, seed: int, start_step: int = 0):
    """Endless shuffled minibatches, reproducible from (seed, step) so a resumed run continues
    with exactly the batches an uninterrupted run would have seen."""
    n = len(data.x_train)
    per_epoch = max(n // batch_size, 1)
    step, order_epoch, order = start_step, None, None
    while True:
        epoch, index = divmod(step, per_epoch)
        if epoch != order_epoch:  # one shuffle per epoch, not per step
            gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            order, order_epoch = torch.randperm(n, generator=gen), epoch
        idx = order[index * batch_size:(index + 1) * batch_size]
        yield data.x_train[idx], data.y_train[idx]
        step += 1


def train(model: nn.Module, data: Dataset, cfg: TrainConfig,
          after_step: Callable[[int], None] | None = None,
          optimizer: torch.optim.Optimizer | None = None, progress: bool = False) -> list[dict]:
    """Adam on cross-entropy for cfg.steps; returns the curve [{step, test_acc}].

    `after_step(step)` runs after each optimizer step (masks re-apply themselves there).
    """
    opt = optimizer or torch.optim.Adam(model.parameters(), lr=cfg.lr,
                                        weight_decay=cfg.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    curve = []
    model.train()
    stream = batches(data, cfg.batch_size, cfg.seed)
    for step in tqdm(range(1, cfg.steps + 1), disable=not progress, desc="train", leave=False):
        x, y = next(stream)
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
        if after_step is not None:
            after_step(step)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            curve.append({"step": step, "test_acc": evaluate(model, data.x_test, data.y_test)})
    return curve
