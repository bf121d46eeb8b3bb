"""A tiny lottery run in its own process, for the kill/resume and torchrun tests.

python tests/lottery_child.py RUN_DIR [--rounds N] [--steps N] [--checkpoint-every N]
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from compressor.lottery import LotteryConfig, run_lottery  # noqa: E402
from tests.lottery_data import tiny_data, tiny_mlp  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--checkpoint-every", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = LotteryConfig(dataset="tiny", model="mlp", rounds=args.rounds, steps=args.steps,
                        eval_every=20, batch_size=32, seed=3)
    data = tiny_data()
    run_lottery(cfg, run_dir=args.run_dir, data=data, progress=False,
                model_fn=tiny_mlp,
                checkpoint_every=args.checkpoint_every)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
