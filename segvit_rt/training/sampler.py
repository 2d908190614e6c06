"""A distributed sampler that can start an epoch part-way, so a resumed run sees the same batches.

Each replica takes every ``world_size``-th index of the epoch's shuffled
permutation (``DistributedSampler`` with ``drop_last=True``). With local batch
``B / world_size``, global batch ``k`` is then the same ``B`` images for any
number of replicas: positions ``k*B .. (k+1)*B - 1`` of the permutation.
"""
from __future__ import annotations

from torch.utils.data import Dataset, DistributedSampler


class ResumableSampler(DistributedSampler):
    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
        self.skip = 0

    def set_position(self, epoch: int, skip: int) -> None:
        """Start ``epoch``'s order after its first ``skip`` indices (of this replica)."""
        if not 0 <= skip <= self.num_samples:
            raise ValueError(f"cannot skip {skip} of the {self.num_samples} samples of an epoch")
        self.set_epoch(epoch)
        self.skip = skip

    def __iter__(self):
        return iter(list(super().__iter__())[self.skip:])

    def __len__(self) -> int:
        return self.num_samples - self.skip
