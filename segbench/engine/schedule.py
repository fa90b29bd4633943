"""Learning-rate schedules stated per iteration, as the papers state them.

Both are ``LambdaLR`` factors held by picklable objects, so the scheduler's state dict
(its position) round-trips through a checkpoint and a resumed run continues exactly.
"""
from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class PolyFactor:
    """``(1 - it/max_iters) ** power`` (DeepLab v2 §4.1), after an optional linear warm-up."""

    def __init__(self, max_iters: int, power: float = 0.9, warmup_iters: int = 0, warmup_ratio: float = 0.1):
        self.max_iters, self.power = max_iters, power
        self.warmup_iters, self.warmup_ratio = warmup_iters, warmup_ratio

    def __call__(self, it: int) -> float:
        factor = max(0.0, 1.0 - it / self.max_iters) ** self.power
        if it < self.warmup_iters:
            factor *= self.warmup_ratio + (1.0 - self.warmup_ratio) * it / self.warmup_iters
        return factor


class StepFactor:
    """``gamma ** (it // step_size)``: DeepLab v1 §5 (×0.1 every 2000 iterations)."""

    def __init__(self, max_iters: int, step_size: int = 2000, gamma: float = 0.1):
        self.step_size, self.gamma = step_size, gamma

    def __call__(self, it: int) -> float:
        return self.gamma ** (it // self.step_size)


def poly(optimizer: Optimizer, max_iters: int, power: float = 0.9, warmup_iters: int = 0,
         warmup_ratio: float = 0.1) -> LambdaLR:
    return LambdaLR(optimizer, PolyFactor(max_iters, power, warmup_iters, warmup_ratio))


def step(optimizer: Optimizer, max_iters: int, step_size: int = 2000, gamma: float = 0.1) -> LambdaLR:
    return LambdaLR(optimizer, StepFactor(max_iters, step_size, gamma))
