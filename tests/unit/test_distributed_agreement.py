"""distributed.agree: what every rank acts on before a step (a stop request, a failure), on the host.

Two real processes (gloo over a file store) so the collectives run; a CPU tensor means no device
sync, which is why the trainer can ask every step."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from segbench.engine import distributed
from segbench.engine.distributed import World


def _agree(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        world = World(rank=rank, size=2, control=dist.new_group(backend="gloo"))
        seen = [distributed.agree(0, None, world),  # nobody asked
                distributed.agree(15 if rank == 1 else 0, None, world),  # rank 1 got SIGTERM
                distributed.agree(2 if rank == 0 else 10, None, world),  # both: the larger number wins
                distributed.agree(0, "disk full" if rank == 1 else None, world),  # rank 1 failed
                distributed.agree(0, f"bad image {rank}", world),  # both failed: the lowest rank speaks
                distributed.mean_over_ranks(float(rank + 1), world)]
        torch.save(seen, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_agree_on_the_largest_signal_and_the_first_failure(tmp_path):
    mp.start_processes(_agree, args=(str(tmp_path / "store"), str(tmp_path / "seen")), nprocs=2,
                       start_method="spawn", join=True)
    for rank in (0, 1):
        assert torch.load(tmp_path / f"seen.{rank}") == [
            (0, None), (15, None), (10, None), (0, "rank 1 of 2: disk full"), (0, "rank 0 of 2: bad image 0"), 1.5]


def test_a_single_process_agrees_with_itself_without_a_group():
    assert distributed.agree(7, None, World()) == (7, None)
    assert distributed.agree(0, "disk full", World()) == (0, "disk full")
    assert distributed.mean_over_ranks(2.5, World()) == 2.5
