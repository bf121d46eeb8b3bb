"""`compressor demo` (what `make demo` runs): `compressor run` with the built-in demo config, a
ResNet-style CNN with 64-256 channels on generated images, so the sparse kernels have layers
big enough to matter. Prints where the report is. Every flag of `run` applies."""

from compressor.commands import run as run_command

DEMO = {
    "name": "demo",
    "data": {"dataset": "shapes"},
    "model": {"model": "resnet_small"},
    "train": {"steps": 300, "batch_size": 64, "lr": 2e-3, "eval_every": 100},
    "finetune": {"steps": 150, "batch_size": 64, "lr": 1e-3, "eval_every": 50},
    "prune_config": {"sparsity": 0.9, "scope": "layerwise", "exclude": ["conv1.weight"]},
    "inq": {"bits": 5, "steps_per_stage": 40, "final_steps": 40, "batch_size": 64},
}


def add_arguments(parser):
    run_command.add_arguments(parser)


def run(args) -> int:
    return run_command.run(args, defaults=DEMO)
