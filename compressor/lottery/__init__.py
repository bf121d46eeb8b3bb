"""Lottery tickets (Frankle & Carbin, ICLR 2019): iterative magnitude pruning with rewinding to
θ0 or θk, reinit and random-mask controls, resumable and idempotent runs, DDP, reports."""

from compressor.lottery.config import LotteryConfig, rates_for_rounds
from compressor.lottery.runner import LotteryRun, job_list

__all__ = ["LotteryConfig", "LotteryRun", "job_list", "rates_for_rounds", "run_lottery"]


def run_lottery(cfg: LotteryConfig, **kwargs) -> list[dict]:
    """Run (or resume, or return the finished) lottery experiment of `cfg`; see LotteryRun."""
    return LotteryRun(cfg, **kwargs).run()
