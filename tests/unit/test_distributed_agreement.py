"""distributed.any_rank: what every rank agrees on before a step (a stop request), on the host.

Two real processes (gloo over a file store) so the collective runs; a CPU tensor means no device
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
        seen = [distributed.any_rank(0, world),  # nobody asked
                distributed.any_rank(15 if rank == 1 else 0, world),  # rank 1 got SIGTERM
                distributed.any_rank(2 if rank == 0 else 10, world)]  # both: the larger number wins
        torch.save(seen, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_any_rank_agrees_on_the_largest_value(tmp_path):
    mp.start_processes(_agree, args=(str(tmp_path / "store"), str(tmp_path / "seen")), nprocs=2,
                       start_method="spawn", join=True)
    for rank in (0, 1):
        assert torch.load(tmp_path / f"seen.{rank}") == [0, 15, 10]


def test_a_single_process_agrees_with_itself_without_a_group():
    assert distributed.any_rank(7, World()) == 7
