"""A resumable, seeded, DDP-aware training sampler.

Iteration ``i`` of a run always sees the same images with the same augmentation, whether the
run was interrupted or not: each epoch's order is a permutation seeded by ``(seed, epoch)``,
and each sample carries its own augmentation seed. A resumed run starts the stream at the
first sample of iteration ``start_iter`` instead of replaying the data.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Dataset, Sampler


class ResumableSampler(Sampler):
    """Infinite stream of ``(index, aug_seed)`` keys; full batches only (``drop_last``)."""

    def __init__(self, size: int, batch_size: int, seed: int = 0, start_iter: int = 0,
                 rank: int = 0, world_size: int = 1):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.per_rank = size // world_size
        self.batches_per_epoch = self.per_rank // batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(f"dataset of {size} images is smaller than one batch of {batch_size} x {world_size} processes")
        self.start_iter = start_iter

    def epoch_order(self, epoch: int) -> list[int]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(self.size, generator=gen).tolist()
        return order[self.rank : self.per_rank * self.world_size : self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, skip = divmod(self.start_iter, self.batches_per_epoch)
        skip *= self.batch_size
        while True:
            order = self.epoch_order(epoch)[: self.batches_per_epoch * self.batch_size]
            for position in range(skip, len(order)):
                index = order[position]
                yield index, (self.seed * 1_000_003 + epoch * self.size + index) % (2**31)
            skip = 0
            epoch += 1

    def __len__(self) -> int:  # infinite; DataLoader only needs a number
        return 2**62


class SeededView(Dataset):
    """Wraps a dataset so that key ``(index, seed)`` seeds its augmentation before loading;
    ``weight_maps`` (label -> per-pixel loss weights, U-Net's) adds ``"weight"`` to each
    sample, made here in the worker from the augmented label."""

    def __init__(self, dataset, weight_maps=None):
        self.dataset = dataset
        self.weight_maps = weight_maps

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key
        transform = self.dataset.transform
        if transform is not None and hasattr(transform, "set_random_seed"):
            transform.set_random_seed(seed)
        sample = self.dataset[index]
        if self.weight_maps is not None:
            sample["weight"] = self.weight_maps(sample["label"])
        return sample
