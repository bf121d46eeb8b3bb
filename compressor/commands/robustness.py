"""`compressor robustness dense.pt --steps 600 --checkpoints 0,1,10,100 --out-dir DIR`: layer
robustness (Zhang, Bengio, Singer) on the architecture and data of a model file: the network is
trained afresh from its seed with checkpoints, then each layer alone is reset to each checkpoint
(re-initialisation) and drawn afresh (re-randomisation); writes robustness.json (test errors and
per-layer budgets for channel ratios, sparsities and bit widths) and heatmap.png."""

from pathlib import Path

import torch

from compressor.commands.common import (
    add_data_override,
    add_input,
    add_threads,
    read_input,
    reject_momentum,
    set_threads,
)
from compressor.config import add_flags, from_args
from compressor.errors import CompressorError
from compressor.io import check_writable, write_json_atomic
from compressor.pipeline.modelfile import build
from compressor.robustness import (
    RobustnessConfig,
    budgets,
    heatmap,
    layer_robustness,
    train_with_checkpoints,
)
from compressor.train import TrainConfig


def add_arguments(parser):
    add_input(parser, "model file whose architecture and data are used (its weights are not)")
    add_flags(parser, RobustnessConfig)
    add_flags(parser, TrainConfig, group="training")
    parser.add_argument("--out-dir", required=True, help="robustness.json and heatmap.png here")
    add_data_override(parser)
    add_threads(parser)


def run(args) -> int:
    cfg = from_args(RobustnessConfig, args)
    train = from_args(TrainConfig, args)
    reject_momentum(args, train.optimizer)
    if max(cfg.checkpoints) > train.steps:
        raise CompressorError(f"--checkpoints {max(cfg.checkpoints)} is after the last training "
                              f"step ({train.steps})")
    out = check_writable(args.out_dir, "--out-dir", directory=True)
    set_threads(args)
    _, info, data, _ = read_input(args)
    torch.manual_seed(train.seed)
    model = build(info.factory, info.kwargs)
    checkpoints = train_with_checkpoints(model, data, train, cfg.checkpoints)
    def fresh(seed: int):
        torch.manual_seed(seed)  # re-randomisation: a new draw from the init distribution
        return build(info.factory, info.kwargs)

    result = layer_robustness(model, checkpoints, data, cfg, init_fn=fresh)
    out.mkdir(parents=True, exist_ok=True)
    image = heatmap(result, Path(out) / "heatmap.png")
    write_json_atomic(Path(out) / "robustness.json", {
        **result.to_dict(), "budgets": {kind: budgets(result, kind)
                                        for kind in ("channels", "sparsity", "bits")}})
    print(f"trained test error {result.base_error:.4f}; per layer (reset to t={cfg.checkpoints[0]}"
          f" / re-randomised):")
    for k, layer in enumerate(result.layers):
        print(f"  {layer:<28} {result.reinit[k][0]:.4f} / {result.rerandom[k]:.4f}")
    print(f"wrote {Path(out) / 'robustness.json'} and {image}")
    return 0
