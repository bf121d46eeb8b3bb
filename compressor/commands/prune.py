"""`compressor prune`: train a model on built-in data, prune it (one-shot, gradual AGP or N:M),
fine-tune with the masks held, fold the masks and report accuracy and sparsity per layer."""

from pathlib import Path

import torch

from compressor.data import load_dataset
from compressor.errors import CompressorError
from compressor.models import MODELS, build_model
from compressor.pruning import (
    Gradual,
    GradualPruner,
    PruneConfig,
    fold_masks,
    layer_rates,
    mask_optimizer,
    prune,
    sparsity,
)
from compressor.train import TrainConfig, evaluate, train


def add_arguments(parser):
    parser.add_argument("--dataset", default="mnist1d", help="digits, mnist1d or an .npz path")
    parser.add_argument("--model", default="lenet", choices=sorted(MODELS))
    parser.add_argument("--schedule", default="one-shot", choices=["one-shot", "gradual", "nm"])
    parser.add_argument("--sparsity", type=float, default=0.8, help="fraction of weights pruned")
    parser.add_argument("--output-sparsity", type=float, default=None,
                        help="the output layer's own sparsity (layerwise only)")
    parser.add_argument("--scope", default="layerwise", choices=["layerwise", "global"])
    parser.add_argument("--criterion", default="magnitude", choices=["magnitude", "random"])
    parser.add_argument("--nm", default="2:4", help="N:M pattern for --schedule nm")
    parser.add_argument("--exclude", nargs="*", default=[], help="fnmatch patterns kept dense")
    parser.add_argument("--steps", type=int, default=2000, help="dense training steps")
    parser.add_argument("--finetune-steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=1.2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="save the pruned model's state_dict here")


def _nm(text: str) -> tuple[int, int]:
    try:
        n, m = (int(v) for v in text.split(":"))
    except ValueError:
        raise CompressorError(f"--nm must look like 2:4, got {text!r}") from None
    return n, m


def _finetune(model, data, args, after_step=None) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    mask_optimizer(opt, model)  # masks may change while training (gradual): looked up per step
    train(model, data, TrainConfig(steps=args.finetune_steps, lr=args.lr, seed=args.seed + 1),
          after_step=after_step, optimizer=opt, progress=True)


def _prune_and_finetune(model, data, args) -> None:
    if args.schedule == "gradual":
        if args.scope != "layerwise":
            raise CompressorError("--schedule gradual prunes layerwise; drop --scope global")
        final = layer_rates(model, args.sparsity, args.output_sparsity, exclude=args.exclude)
        end = max(1, int(0.75 * args.finetune_steps))  # leave a quarter to recover
        schedule = Gradual(args.sparsity, 0, end, frequency=max(1, end // 10))
        _finetune(model, data, args, GradualPruner(model, schedule, final, args.criterion))
        return
    cfg = PruneConfig(sparsity=args.sparsity, scope=args.scope, criterion=args.criterion,
                      output_sparsity=args.output_sparsity, exclude=tuple(args.exclude),
                      nm=_nm(args.nm) if args.schedule == "nm" else None, seed=args.seed)
    prune(model, cfg)
    _finetune(model, data, args)


def run(args) -> int:
    torch.manual_seed(args.seed)
    data = load_dataset(args.dataset)
    model = build_model(args.model, feature_shape=data.feature_shape,
                        num_classes=data.num_classes)
    train(model, data, TrainConfig(steps=args.steps, lr=args.lr, seed=args.seed), progress=True)
    dense = evaluate(model, data.x_test, data.y_test)
    _prune_and_finetune(model, data, args)
    per_layer = sparsity(model)
    fold_masks(model)
    pruned = evaluate(model, data.x_test, data.y_test)
    for name, value in per_layer.items():
        print(f"  {name:30s} sparsity {100 * value:6.2f}%")
    print(f"{args.model} on {args.dataset}: dense {100 * dense:.2f}% -> pruned ({args.schedule}) "
          f"{100 * pruned:.2f}% test accuracy")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), args.out)
        print(f"saved {args.out} (plain state_dict, zeros in place)")
    return 0
