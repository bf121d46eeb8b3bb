"""The one training loop of compressor, with callbacks and a loss hook.

Dense training, pruning fine-tuning, gradual pruning, lottery rounds, INQ retraining and the
language-model demo all run `fit`. What differs between them is expressed as callbacks (masks
held, weights frozen, checkpoints written, a rewind point captured) and as the loss function
(`sequence_cross_entropy` by default: cross-entropy over the last dim, so (N, C) classifier
logits and (B, T, V) language-model logits both work).

Batches are reproducible from (seed, step): a resumed run continues with exactly the batches an
uninterrupted run would have seen.
"""

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from compressor.config import Config
from compressor.data import Dataset

OPTIMIZERS = ("adam", "sgd")


def model_logits(output):
    """The logits of a model's output: the first element of a tuple (LMs return state too)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def sequence_cross_entropy(output, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the last dim of (N, C) or (B, T, V) logits against (N,) / (B, T)."""
    logits = model_logits(output)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2048) -> float:
    """Top-1 accuracy in [0, 1] over every target (tokens for an LM); restores train/eval mode."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(x), batch_size):
        logits = model_logits(model(x[start:start + batch_size]))
        correct += (logits.argmax(-1) == y[start:start + batch_size]).sum().item()
    model.train(was_training)
    return correct / max(y.numel(), 1)


@dataclass
class TrainConfig(Config):
    """steps of `optimizer` on minibatches of `batch_size`; test accuracy every `eval_every`
    steps (0: only at the end); `grad_clip`: max gradient norm (None: no clipping)."""

    steps: int = field(default=1000, metadata={"help": "training steps"})
    batch_size: int = field(default=60, metadata={"help": "examples per step"})
    lr: float = field(default=1.2e-3, metadata={"help": "learning rate"})
    optimizer: str = field(default="adam", metadata={"choices": OPTIMIZERS})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum"})
    weight_decay: float = 0.0
    grad_clip: float | None = None
    seed: int = field(default=0, metadata={"help": "random seed"})
    eval_every: int = field(default=100, metadata={"help": "steps between test evaluations"})

    def validate(self) -> None:
        self.require(self.steps >= 0, "steps", "must be >= 0")
        self.require(self.batch_size >= 1, "batch_size", "must be >= 1")
        self.require(self.lr > 0, "lr", "must be > 0")
        self.require(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        self.require(0 <= self.momentum < 1, "momentum", "must be in [0, 1)")
        self.require(self.eval_every >= 0, "eval_every", "must be >= 0")
        self.require(self.grad_clip is None or self.grad_clip > 0, "grad_clip", "must be > 0")


def make_optimizer(params: Iterable[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    # foreach: one fused call per state tensor kind instead of a Python loop over parameters,
    # which dominates the step time of small models on CPU.
    params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay, foreach=True)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)


def batches(data: Dataset, batch_size: int, seed: int, start_step: int = 0):
    """Endless shuffled minibatches (x, y), one shuffle per epoch, reproducible from
    (seed, step)."""
    n = len(data.x_train)
    per_epoch = max(n // batch_size, 1)
    step, order_epoch, order = start_step, None, None
    while True:
        epoch, index = divmod(step, per_epoch)
        if epoch != order_epoch:
            gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            order, order_epoch = torch.randperm(n, generator=gen), epoch
        idx = order[index * batch_size:(index + 1) * batch_size]
        yield data.x_train[idx], data.y_train[idx]
        step += 1


class Callback:
    """Hooks of `fit`; override what you need. `step` counts from 1."""

    def after_backward(self, step: int) -> None:
        """Gradients are computed, the optimizer has not stepped (mask or freeze gradients)."""

    def after_step(self, step: int) -> None:
        """The optimizer has stepped (re-apply masks, restore frozen weights, prune, save)."""

    def on_eval(self, step: int, accuracy: float) -> None:
        """A test accuracy was measured at `step`."""

    def on_step_end(self, step: int) -> None:
        """The step is complete, its evaluation included (write checkpoints here)."""


@dataclass
class FitResult:
    curve: list[dict]  # [{step, test_acc}]
    losses: list[float]  # training loss per step


def fit(model: nn.Module, data: Dataset, cfg: TrainConfig, *,
        optimizer: torch.optim.Optimizer | None = None,
        loss_fn: Callable | None = None, callbacks: Sequence[Callback] = (),
        start_step: int = 0, curve: list | None = None, progress: bool = False,
        desc: str = "train", forward: nn.Module | None = None,
        prepare: Callable | None = None) -> FitResult:
    """Train `model` from `start_step` to `cfg.steps` and return the accuracy curve and losses.

    optimizer: default `make_optimizer(model.parameters(), cfg)`. loss_fn(output, target):
    default `sequence_cross_entropy`. forward: the module called on batches (a DDP wrapper of
    `model`, say). prepare(x, y) -> (x, y): sharding or device moves. curve: appended in place
    (a resumed run passes the curve it had)."""
    opt = optimizer or make_optimizer(model.parameters(), cfg)
    loss_fn = loss_fn or sequence_cross_entropy
    forward = forward or model
    curve = [] if curve is None else curve
    losses = []
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    stream = batches(data, cfg.batch_size, cfg.seed, start_step=start_step)
    model.train()
    steps = range(start_step + 1, cfg.steps + 1)
    for step in tqdm(steps, disable=not progress, desc=desc, leave=False):
        x, y = next(stream)
        if prepare is not None:
            x, y = prepare(x, y)
        x, y = x.to(device), y.to(device)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(forward(x), y)
        loss.backward()
        for cb in callbacks:
            cb.after_backward(step)
        if cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
        for cb in callbacks:
            cb.after_step(step)
        if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
            acc = evaluate(model, data.x_test.to(device), data.y_test.to(device))
            curve.append({"step": step, "test_acc": acc})
            for cb in callbacks:
                cb.on_eval(step, acc)
        for cb in callbacks:
            cb.on_step_end(step)
    return FitResult(curve, losses)
