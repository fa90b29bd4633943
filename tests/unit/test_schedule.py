"""LR schedules: every recipe's lr equals the paper's closed form (written out here, independently
of segbench.engine.schedule) at every iteration where the formula can go wrong and on a dense
sample of the rest, the state round-trips, a longer horizon re-plans."""
import math

import pytest
import torch
from hydra.utils import instantiate

from segbench.app.configs import available
from segbench.engine.schedule import PolyFactor, poly, replan, step
from segbench.errors import SegbenchError
from tests.conftest import compose_train

# the default poly and step configs (conf/schedule/*.yaml at the default horizon) and every recipe
RECIPES = [[], ["schedule=step"], ["schedule=poly", "schedule.warmup_iters=50"]] + [
    [f"experiment={name}"] for name in available("experiment")]


def closed_form(cfg):
    """The papers' formulas as a function of the iteration: DeepLab v2 §4.1 poly (with Goyal et
    al.'s linear warm-up multiplied in), DeepLab v1 §5 step; the factor on each group's initial lr."""
    s, n = {k: v for k, v in cfg.schedule.items()}, int(cfg.trainer.max_iters)
    if s["_target_"].endswith(".poly"):
        power, warmup, ratio = float(s["power"]), int(s["warmup_iters"]), float(s["warmup_ratio"])
        return lambda it: (1 - it / n) ** power * (ratio + (1 - ratio) * it / warmup if it < warmup else 1.0)
    size, gamma = int(s["step_size"]), float(s["gamma"])
    return lambda it: gamma ** math.floor(it / size)


def checked_iterations(cfg, edge: int = 600, spacing: int = 97) -> list[int]:
    """The iterations the closed-form check visits: every one of the first and last ``edge``
    iterations, every one within 3 of a regime change (warm-up end, each step decay), and every
    ``spacing``-th in between (an odd spacing, so the sample does not line up with round step
    sizes). The formulas are smooth between those points: an off-by-one, a wrong power, ratio
    or horizon shows at the edges and at every sampled point. Visiting all of the ~1.5 M
    iterations of every recipe took most of this file's time and proved nothing more."""
    s, n = cfg.schedule, int(cfg.trainer.max_iters)
    changes = [int(s.get("warmup_iters", 0))]
    if "step_size" in s:
        changes += range(0, n + 1, int(s.step_size))
    near = {c + d for c in changes for d in range(-3, 4)}
    points = {*range(edge + 1), *range(n - edge, n + 1), *range(0, n + 1, spacing), *near}
    return sorted(it for it in points if 0 <= it <= n)


def optimizer_like(cfg) -> torch.optim.SGD:
    """One param group per lr multiplier of the recipe's ``optim.param_rules``, as build_optimizer makes."""
    lr = float(cfg.optim.lr)
    mults = [1.0] + [float(rule.get("lr_mult", 1.0)) for rule in cfg.optim.get("param_rules") or []]
    return torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)], "lr": lr * m} for m in mults], lr=lr)


@pytest.mark.parametrize("overrides", RECIPES, ids=lambda o: o[-1] if o else "default")
def test_every_recipe_follows_the_closed_form(overrides):
    cfg = compose_train(overrides)
    n, expected = int(cfg.trainer.max_iters), closed_form(cfg)
    optimizer = optimizer_like(cfg)
    scheduler = instantiate(cfg.schedule, optimizer=optimizer, max_iters=n)  # as the Trainer builds it
    # the factor each update uses, it = 0 .. max_iters (the last one after the last step)
    factor = scheduler.lr_lambdas[0]
    assert all(f is factor for f in scheduler.lr_lambdas)
    wrong = [it for it in checked_iterations(cfg)
             if not math.isclose(factor(it), expected(it), rel_tol=1e-12, abs_tol=0)]
    assert not wrong, f"{len(wrong)} iterations differ, first {wrong[:5]}"
    # ... and stepping the scheduler as the loop does gives every group base * factor (first 600 steps)
    bases = [group["initial_lr"] for group in optimizer.param_groups]
    for it in range(min(n, 600) + 1):
        for base, group in zip(bases, optimizer.param_groups):
            assert math.isclose(group["lr"], base * expected(it), rel_tol=1e-12, abs_tol=0)
        optimizer.step()
        scheduler.step()


def lrs(scheduler, n):
    values = []
    for _ in range(n):
        values.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return values


def sgd(lr=0.01):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_poly_lr_at_known_iterations():
    values = lrs(poly(sgd(), max_iters=100, power=0.9), 100)
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
    values = lrs(step(sgd(0.001), max_iters=6000, step_size=2000, gamma=0.1), 4001)
    assert values[1999] == 0.001 and math.isclose(values[2000], 1e-4) and math.isclose(values[4000], 1e-5)


def test_step_counts_decays_up_to_max_iters_only():
    factor = step(sgd(), max_iters=5000, step_size=2000, gamma=0.1).lr_lambdas[0]
    assert factor(4999) == factor(5000) == factor(9000) == 0.1 ** 2  # held past the horizon


@pytest.mark.parametrize("make", [poly, step])
def test_a_longer_horizon_is_replanned_at_the_same_iteration(make):
    """A resume with a larger trainer.max_iters: the lr at iteration k is the new schedule's."""
    kwargs = {"step_size": 4} if make is step else {}
    old, new = make(sgd(), max_iters=6, **kwargs), make(sgd(), max_iters=12, **kwargs)
    for scheduler in (old, new):
        for _ in range(5):
            scheduler.optimizer.step()
            scheduler.step()
    replan(old, 12)
    assert old.last_epoch == new.last_epoch == 5
    assert old.optimizer.param_groups[0]["lr"] == new.optimizer.param_groups[0]["lr"]
    assert lrs(old, 7) == lrs(new, 7)


def test_bad_schedule_settings_are_one_clear_error():
    with pytest.raises(SegbenchError, match="schedule.step_size must be an integer >= 1"):
        step(sgd(), max_iters=10, step_size=0)
    with pytest.raises(SegbenchError, match="trainer.max_iters"):
        poly(sgd(), max_iters=0)
