import math

import torch

from segbench.engine.schedule import PolyFactor, poly, step


def lrs(scheduler, n):
    values = []
    for _ in range(n):
        values.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return values


def test_poly_lr_at_known_iterations():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    values = lrs(poly(opt, max_iters=100, power=0.9), 100)
    assert values[0] == 0.01
    assert math.isclose(values[50], 0.01 * 0.5**0.9)
    assert math.isclose(values[90], 0.01 * 0.1**0.9)
    assert math.isclose(values[99], 0.01 * 0.01**0.9)


def test_poly_warmup_is_linear_then_poly():
    f = PolyFactor(max_iters=100, power=1.0, warmup_iters=10, warmup_ratio=0.1)
    assert math.isclose(f(0), 0.1)
    assert math.isclose(f(5), (1 - 0.05) * (0.1 + 0.9 * 0.5))
    assert math.isclose(f(10), 0.9)


def test_step_schedule_deeplab_v1():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.001)
    values = lrs(step(opt, max_iters=6000, step_size=2000, gamma=0.1), 4001)
    assert values[1999] == 0.001 and math.isclose(values[2000], 1e-4) and math.isclose(values[4000], 1e-5)
